"""The e2e tier's witness that the operator never writes a spec: the API server's audit
log read by `InClusterOperator.spec_writes`, on hand-written audit events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import in_cluster
import pytest
from in_cluster import InClusterOperator

USER = "system:serviceaccount:ns-1:orchard"


def event(verb: str, body: Any, subresource: str | None = None, user: str = USER) -> str:
    ref = {"apiGroup": "orchard.dev", "resource": "modeldeployments", "name": "iris"}
    if subresource:
        ref["subresource"] = subresource
    return json.dumps(
        {
            "verb": verb,
            "user": {"username": user},
            "objectRef": ref,
            "requestURI": "/apis/orchard.dev/v1alpha1/namespaces/ns-1/modeldeployments/iris",
            "requestObject": body,
        }
    )


def writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *lines: str) -> list[str]:
    log = tmp_path / "audit.log"
    log.write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(in_cluster, "LOCAL_AUDIT_LOG", log)
    monkeypatch.setattr(in_cluster, "external_kubeconfig", lambda: None)
    return InClusterOperator(tmp_path, "ns-1", tmp_path).spec_writes()


def test_annotations_finalizers_and_status_are_not_spec_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not writes(
        tmp_path,
        monkeypatch,
        event("patch", {"metadata": {"annotations": {"orchard.dev/x": "y"}}}),
        event("patch", [{"op": "add", "path": "/metadata/finalizers", "value": ["f"]}]),
        event("patch", {"spec": {"replicas": 2}, "status": {}}, subresource="status"),
        event("patch", {"spec": {"modelVersion": "v9"}}, user="orchard-admin"),
    )


def test_a_spec_patch_or_a_whole_update_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = writes(
        tmp_path,
        monkeypatch,
        event("patch", {"spec": {"modelVersion": "v2"}}),
        event("patch", [{"op": "replace", "path": "/spec/track/model", "value": "x"}]),
        event("update", {"metadata": {}, "spec": {}}),
    )
    assert len(found) == 3 and all("modeldeployments/iris" in f for f in found)


def test_no_log_or_no_write_witnessed_is_a_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "nothing was witnessed" in writes(tmp_path, monkeypatch, "")[0]
    monkeypatch.setattr(in_cluster, "LOCAL_AUDIT_LOG", tmp_path / "absent.log")
    assert "no audit log" in InClusterOperator(tmp_path, "ns-1", tmp_path).spec_writes()[0]
