"""The kustomize manifests: what `kubectl apply -k manifests/...` would install."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import kubectl

from orchard.api import KINDS
from orchard.api.crdgen import crd

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders kustomize")


def render(overlay: str) -> list[dict[str, Any]]:
    out = kubectl("kustomize", str(MANIFESTS / overlay), timeout=60).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


@pytest.mark.parametrize("overlay", ["default", "overlays/local"])
def test_install_has_everything(overlay: str) -> None:
    objs = by_kind(render(overlay))
    for kind in KINDS:
        assert objs[("CustomResourceDefinition", kind.RESOURCE.crd_name)] == crd(kind)
    assert ("Namespace", "orchard-system") in objs
    sa = objs[("ServiceAccount", "orchard")]
    assert sa["metadata"]["namespace"] == "orchard-system"
    binding = objs[("ClusterRoleBinding", "orchard")]
    assert binding["roleRef"]["name"] == "orchard"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "orchard", "namespace": "orchard-system"}
    ]
    role = objs[("ClusterRole", "orchard")]
    assert role == yaml.safe_load((MANIFESTS / "rbac" / "role.yaml").read_text())
    assert ("Service", "orchard-operator-metrics") in objs


@pytest.mark.parametrize("overlay", ["default", "overlays/local"])
def test_operator_deployment_is_restricted_and_probed(overlay: str) -> None:
    deploy = by_kind(render(overlay))[("Deployment", "orchard-operator")]
    spec = deploy["spec"]
    assert deploy["metadata"]["namespace"] == "orchard-system"
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "orchard"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["image"] == "localhost/orchard/operator:dev"
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 8080, "metrics": 9090}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert "--liveness=http://0.0.0.0:8080/healthz" in container["args"]
    assert "--metrics-port=9090" in container["args"]
    assert "--all-namespaces" in container["args"]
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    # A read-only root needs a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    expected_policy = "Never" if overlay == "overlays/local" else "IfNotPresent"
    assert container["imagePullPolicy"] == expected_policy


def test_samples_kustomization_lists_one_of_each_kind() -> None:
    kinds = sorted(d["kind"] for d in render("samples"))
    assert kinds == ["ModelDeployment", "ModelVersion", "PersistentVolumeClaim", "TrainingJob"]


@pytest.mark.parametrize("overlay", ["default", "overlays/local"])
def test_the_default_artifact_store_is_the_claim_the_samples_make(overlay: str) -> None:
    """The minimal TrainingJob (the sample, no spec.artifacts) writes to the operator's
    default store: the claim manifests/samples makes in the user's namespace."""
    from orchard.builders.common import TrainerSettings, pvc_claim

    deploy = by_kind(render(overlay))[("Deployment", "orchard-operator")]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    store = TrainerSettings.from_env(env).default_artifacts
    assert store is not None
    samples = by_kind(render("samples"))
    claims = [name for kind, name in samples if kind == "PersistentVolumeClaim"]
    assert claims == [pvc_claim(store.uri)]
    assert "artifacts" not in samples[("TrainingJob", "iris")]["spec"]


def test_operator_image_builds_offline_as_non_root() -> None:
    text = (ROOT / "images" / "operator" / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE" in text and "FROM ${BASE_IMAGE}" in text
    assert "COPY wheels /wheels" in text and "--no-index --find-links /wheels" in text
    assert "'orchard[operator]'" in text
    assert "USER 10001" in text
    assert 'ENTRYPOINT ["orchard", "operator"]' in text
