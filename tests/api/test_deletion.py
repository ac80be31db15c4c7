"""Deleting Orchard objects never waits for the operator, but for one guard.

With the operator running, a TrainingJob, a ModelVersion and a ModelDeployment that are
all mid-way (a Job made, a verification under way, a rollout waiting for its version)
carry no finalizer; once the operator is stopped they are deleted at once, as is their
namespace. A ModelVersion that a ModelDeployment uses is held (a finalizer, the
DeletionBlocked condition, an InUse event) until the deployment goes, or is being deleted
itself, or someone allows it with the annotation orchard.dev/allow-deletion=true.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import install_crds, kubectl
from test_operator_skeleton import Operator, operator

pytestmark = pytest.mark.api

REPO = Path(__file__).resolve().parents[2]
FINALIZER = "orchard.dev/finalizer"


@pytest.fixture(scope="module")
def kube(kubeconfig_api: Path) -> Path:
    install_crds(kubeconfig_api)
    return kubeconfig_api


@pytest.fixture
def running(kube: Path, api_namespace: str, tmp_path: Path) -> Iterator[Operator]:
    with operator(kube, tmp_path, "--namespace", api_namespace) as op:
        op.wait_alive()
        yield op
    records = [json.loads(line) for line in op.lines() if line.startswith("{")]
    errors = [r for r in records if r.get("severity") == "error"]
    assert not errors, errors  # a version in use is a warning, not an error


def apply(kube: Path, namespace: str, obj: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", kubeconfig=kube, input=json.dumps(obj))


def get(kube: Path, namespace: str, kind: str, name: str) -> dict[str, Any] | None:
    proc = kubectl("get", "-n", namespace, kind, name, "-o", "json", kubeconfig=kube, check=False)
    if proc.returncode != 0:
        assert "NotFound" in proc.stderr, proc.stderr
        return None
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def until(
    what: str, check: Callable[[], Any], timeout: float = 60, op: Operator | None = None
) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    log = "\n".join(op.lines()[-60:]) if op is not None else ""
    raise AssertionError(f"timed out waiting for {what}\n{log}")


def training_job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": {
            "model": "iris",
            "dataset": {"builtin": "iris"},
            "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 10}},
            "artifacts": {"uri": "pvc://orchard-artifacts/models"},
        },
    }


def model_version(name: str) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load((REPO / "manifests/samples/modelversion.yaml").read_text())
    obj["metadata"] = {"name": name}
    return obj


def model_deployment(name: str, version: str) -> dict[str, Any]:
    return {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"modelVersion": version, "replicas": 1},
    }


def finalizers(obj: dict[str, Any] | None) -> list[str]:
    return list(((obj or {}).get("metadata") or {}).get("finalizers") or [])


def use(kube: Path, namespace: str, version: str, *users: str) -> None:
    """status.usedBy as the ModelDeployment controller writes it once a version serves
    (no pod serves at this level)."""
    kubectl(
        "patch", "-n", namespace, "mv", version, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"usedBy": list(users)}}), kubeconfig=kube,
    )  # fmt: skip


def test_objects_mid_way_carry_no_finalizer_and_go_with_the_operator_stopped(
    kube: Path, api_namespace: str, running: Operator
) -> None:
    ns = api_namespace
    apply(kube, ns, training_job("iris-rf"))
    apply(kube, ns, model_version("iris-v1"))
    apply(kube, ns, model_deployment("web", "iris-v9"))  # waits for a version not there
    # The operator has acted on each: a training Job, a verification Job, a status.
    until("the training Job", lambda: get(kube, ns, "job", "iris-rf"), op=running)
    until("the verification Job", lambda: get(kube, ns, "job", "iris-v1-verify"), op=running)
    until(
        "the deployment's status",
        lambda: ((get(kube, ns, "md", "web") or {}).get("status") or {}).get("phase"),
        op=running,
    )
    time.sleep(3)  # time for anything that would add a finalizer to have done so
    for kind, name in (("tj", "iris-rf"), ("mv", "iris-v1"), ("md", "web")):
        obj = get(kube, ns, kind, name)
        assert finalizers(obj) == [], (kind, name, obj)
    # Only a version in use is guarded.
    apply(kube, ns, model_version("iris-v2"))
    use(kube, ns, "iris-v2", "web")
    until("the guard's finalizer", lambda: finalizers(get(kube, ns, "mv", "iris-v2")), op=running)
    # Stopping (an upgrade, an uninstall) lets go of it.
    assert running.stop() == 0
    assert finalizers(get(kube, ns, "mv", "iris-v2")) == []

    # The operator is gone: every object goes at once, and so does the namespace.
    for kind, name in (("tj", "iris-rf"), ("mv", "iris-v1"), ("mv", "iris-v2"), ("md", "web")):
        kubectl("delete", "-n", ns, kind, name, "--timeout=20s", kubeconfig=kube)
        assert get(kube, ns, kind, name) is None


def test_a_version_in_use_is_held_until_its_deployment_goes(
    kube: Path, api_namespace: str, running: Operator
) -> None:
    ns = api_namespace
    apply(kube, ns, model_version("iris-v1"))
    apply(kube, ns, model_deployment("web", "iris-v1"))
    until("the deployment's status", lambda: (get(kube, ns, "md", "web") or {}).get("status"))
    use(kube, ns, "iris-v1", "web")
    until(
        "the guard's finalizer",
        lambda: FINALIZER in finalizers(get(kube, ns, "mv", "iris-v1")),
        op=running,
    )
    kubectl("delete", "-n", ns, "mv", "iris-v1", "--wait=false", kubeconfig=kube)

    def blocked() -> Any:
        status = (get(kube, ns, "mv", "iris-v1") or {}).get("status") or {}
        return next(
            (c for c in status.get("conditions") or [] if c["type"] == "DeletionBlocked"), None
        )

    condition = until("DeletionBlocked", blocked, op=running)
    assert (condition["status"], condition["reason"]) == ("True", "InUse")
    assert "ModelDeployment(s) web" in condition["message"]
    assert "orchard.dev/allow-deletion=true" in condition["message"]
    events = json.loads(kubectl("get", "events", "-n", ns, "-o", "json", kubeconfig=kube).stdout)
    assert any(e["reason"] == "InUse" and e["type"] == "Warning" for e in events["items"])
    time.sleep(2)
    assert get(kube, ns, "mv", "iris-v1") is not None  # held

    # The deployment goes: its DELETED event takes it out of usedBy, the guard lets go.
    kubectl("delete", "-n", ns, "md", "web", "--timeout=20s", kubeconfig=kube)
    until("the version deleted", lambda: get(kube, ns, "mv", "iris-v1") is None, op=running)


def test_a_deployment_being_deleted_no_longer_holds_its_version(
    kube: Path, api_namespace: str, running: Operator
) -> None:
    ns = api_namespace
    apply(kube, ns, model_version("iris-v1"))
    web = model_deployment("web", "iris-v1")
    web["metadata"]["finalizers"] = ["test.orchard.dev/hold"]  # stays Terminating
    apply(kube, ns, web)
    until("the deployment's status", lambda: (get(kube, ns, "md", "web") or {}).get("status"))
    use(kube, ns, "iris-v1", "web")
    until("the guard's finalizer", lambda: finalizers(get(kube, ns, "mv", "iris-v1")), op=running)
    kubectl("delete", "-n", ns, "md", "web", "--wait=false", kubeconfig=kube)
    kubectl("delete", "-n", ns, "mv", "iris-v1", "--wait=false", kubeconfig=kube)
    until("the version deleted", lambda: get(kube, ns, "mv", "iris-v1") is None, op=running)
    assert get(kube, ns, "md", "web") is not None  # still Terminating on its own finalizer
    kubectl(
        "patch", "-n", ns, "md", "web", "--type=merge", "-p", '{"metadata":{"finalizers":null}}',
        kubeconfig=kube,
    )  # fmt: skip


def test_the_annotation_lets_a_version_in_use_go(
    kube: Path, api_namespace: str, running: Operator
) -> None:
    ns = api_namespace
    apply(kube, ns, model_version("iris-v1"))
    apply(kube, ns, model_deployment("web", "iris-v1"))
    until("the deployment's status", lambda: (get(kube, ns, "md", "web") or {}).get("status"))
    use(kube, ns, "iris-v1", "web")
    until("the guard's finalizer", lambda: finalizers(get(kube, ns, "mv", "iris-v1")), op=running)
    kubectl("delete", "-n", ns, "mv", "iris-v1", "--wait=false", kubeconfig=kube)
    time.sleep(2)
    assert get(kube, ns, "mv", "iris-v1") is not None
    kubectl(
        "annotate", "-n", ns, "mv", "iris-v1", "orchard.dev/allow-deletion=true", kubeconfig=kube
    )
    until("the version deleted", lambda: get(kube, ns, "mv", "iris-v1") is None, op=running)
    assert get(kube, ns, "md", "web") is not None  # the deployment is left as it was
