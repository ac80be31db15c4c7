"""The newest bodies the watch brought (`orchard.handlers.watched`)."""

from __future__ import annotations

from typing import Any

from orchard.handlers.watched import MAX_AGE, Latest, job_without_template, without_bookkeeping


def job(resource_version: str, active: int) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "iris-v1-verify",
            "namespace": "ml",
            "uid": "u-1",
            "resourceVersion": resource_version,
            "labels": {"orchard.dev/modelversion": "iris-v1"},
            "ownerReferences": [{"kind": "ModelVersion", "name": "iris-v1", "uid": "mv-1"}],
            "managedFields": [{"manager": "kube-controller-manager"}],
        },
        "spec": {
            "completions": 1,
            "template": {"spec": {"containers": [{"name": "verify", "image": "x"}]}},
        },
        "status": {"active": active},
    }


def test_each_event_replaces_the_body_and_deleted_drops_it() -> None:
    latest = Latest()
    key = ("ml", "iris-v1-verify")
    assert latest.get(key) is None  # nothing seen: the caller reads it live
    latest.see("ADDED", job("1", 0))
    latest.see("MODIFIED", job("2", 1))
    assert latest.get(key) == without_bookkeeping(job("2", 1))
    latest.see("DELETED", job("3", 0))
    assert latest.get(key) is None and len(latest) == 0


def test_a_body_no_event_brought_for_max_age_is_read_live() -> None:
    now = [100.0]
    latest = Latest(clock=lambda: now[0])
    key = ("ml", "iris-v1-verify")
    latest.see("ADDED", job("1", 0))
    now[0] += MAX_AGE
    assert latest.get(key) == without_bookkeeping(job("1", 0))
    now[0] += 1
    assert latest.get(key) is None  # perhaps deleted between two watch streams
    latest.see(None, job("1", 0))  # Kopf's listing when a stream opens again
    assert latest.get(key) == without_bookkeeping(job("1", 0))


def test_bodies_none_can_read_any_more_are_dropped() -> None:
    now = [0.0]
    latest = Latest(clock=lambda: now[0])
    latest.see("ADDED", job("1", 0))
    now[0] += MAX_AGE + 1
    other = job("2", 0)
    other["metadata"]["name"] = "iris-v2-verify"
    latest.see("ADDED", other)
    assert len(latest) == 1 and latest.get(("ml", "iris-v2-verify")) is not None


def test_a_body_no_longer_wanted_is_dropped() -> None:
    latest = Latest()
    latest.see("ADDED", job("1", 0))
    latest.see("MODIFIED", job("2", 0), wanted=False)  # a verdict reached: never read again
    assert latest.get(("ml", "iris-v1-verify")) is None


def test_a_kept_body_is_a_copy() -> None:
    latest = Latest()
    body = job("1", 0)
    latest.see("ADDED", body)
    body["status"]["active"] = 5
    assert latest.get(("ml", "iris-v1-verify")) == without_bookkeeping(job("1", 0))


def test_a_job_is_kept_without_its_pod_template() -> None:
    kept = job_without_template(job("7", 1))
    assert kept == {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "iris-v1-verify",
            "namespace": "ml",
            "uid": "u-1",
            "resourceVersion": "7",
            "labels": {"orchard.dev/modelversion": "iris-v1"},
            "ownerReferences": [{"kind": "ModelVersion", "name": "iris-v1", "uid": "mv-1"}],
        },
        "spec": {"completions": 1},
        "status": {"active": 1},
    }


def test_a_body_is_kept_without_managed_fields_or_kopfs_copy_of_the_spec() -> None:
    body = {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {
            "name": "iris-v1",
            "namespace": "ml",
            "managedFields": [{"manager": "kopf", "fieldsV1": {"f:metadata": {}}}],
            "annotations": {
                "orchard.dev/last-handled-configuration": '{"spec": {"model": "iris"}}',
                "orchard.dev/allow-deletion": "true",
            },
        },
        "spec": {"model": "iris"},
    }
    latest = Latest()
    latest.see("ADDED", body)
    assert latest.get(("ml", "iris-v1")) == {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "ModelVersion",
        "metadata": {
            "name": "iris-v1",
            "namespace": "ml",
            "annotations": {"orchard.dev/allow-deletion": "true"},
        },
        "spec": {"model": "iris"},
    }
