"""Training on a real node: real trainer pods, a real PVC, real ModelVersions.

  1. a TrainingJob on a CSV with categorical columns and missing values trains in a pod,
     the artifact lands on the PVC, and its ModelVersion becomes Ready with metrics
     (the verification Job re-checked every digest);
  2. a TrainingJob naming a target column the data lacks ends Failed, and
     `kubectl get tj` shows why;
  3. a search of 4 trials, 2 at a time, registers the best trial.

The operator runs in the cluster as users install it (tests/in_cluster.py: its image,
the generated role, a restricted namespace), watching this module's namespace. The PVC
is the cluster's default class (host-path): the test opens its host directory to the
trainer's uid, as a storage class that honours fsGroup would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import build_images, kubectl
from in_cluster import InClusterOperator
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, PersistentVolume, PersistentVolumeClaim

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FIGURES = Path(os.environ.get("ORCHARD_CLUSTER_DIR", REPO / ".cluster")) / "figures"
PENGUINS = REPO / "tests" / "data" / "penguins.csv"
CLAIM = "orchard-artifacts"
TRAIN_TIMEOUT = 300


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


class Cluster:
    """The namespace under test, seen through kubectl."""

    def __init__(self, kubeconfig: Path, namespace: str, storage: Path) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.storage = storage  # the PVC's directory on the host

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return kubectl("-n", self.namespace, *args, kubeconfig=self.kubeconfig, input=input).stdout

    def apply(self, obj: dict[str, Any]) -> float:
        """Apply an object; the monotonic time just before."""
        start = time.monotonic()
        self.kubectl("apply", "-f", "-", input=yaml.safe_dump(obj))
        return start

    def get(self, kind: str, name: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", kind, name, "-o", "json"))
        return out

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return dict(self.get(kind, name).get("status") or {})

    def wait_phase(self, kind: str, name: str, phases: set[str], timeout: float) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(kind, name)
            return status if status.get("phase") in phases else None

        try:
            result: dict[str, Any] = wait_for(f"{kind}/{name} to reach {phases}", reached, timeout)
        except AssertionError:
            print(self.kubectl("get", "tj,mv,jobs,pods", "-o", "wide"))
            print(self.kubectl("describe", kind, name))
            raise
        return result


def namespace_with_claim(client: Client, prefix: str) -> tuple[str, Path]:
    """A fresh test namespace with the artifact claim CLAIM bound; the namespace and the
    claim's host path on the node."""
    ns = f"{prefix}-{uuid.uuid4().hex[:6]}"
    client.create(Namespace(metadata=ObjectMeta(name=ns, labels={"orchard.dev/test": "true"})))
    client.create(
        PersistentVolumeClaim.from_dict(
            {"metadata": {"name": CLAIM},
             "spec": {"accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "256Mi"}}}}
        ),
        namespace=ns,
    )  # fmt: skip

    def bound() -> str | None:
        pvc = client.get(PersistentVolumeClaim, CLAIM, namespace=ns)
        if pvc.status is None or pvc.status.phase != "Bound" or pvc.spec is None:
            return None
        return pvc.spec.volumeName

    volume = client.get(PersistentVolume, wait_for("the PVC to bind", bound, 60))
    assert volume.spec is not None and volume.spec.hostPath is not None
    return ns, Path(volume.spec.hostPath.path)


@pytest.fixture(scope="module")
def trainer_image(kubeconfig_node: Path) -> None:
    """The trainer (training and verification Jobs) and operator images, built from
    images/ and loaded into the node."""
    build_images("trainer", "operator")


@pytest.fixture(scope="module")
def cluster(kubeconfig_node: Path, node_client: Client, trainer_image: None) -> Iterator[Cluster]:
    """A namespace with the CRDs, an artifact PVC (with the penguins CSV on it) and the
    operator watching it."""
    ns, storage = namespace_with_claim(node_client, "orchard-train")
    storage.mkdir(parents=True, exist_ok=True)
    (storage / "data").mkdir(exist_ok=True)
    shutil.copy(PENGUINS, storage / "data" / "penguins.csv")
    for path in [storage, *storage.rglob("*")]:
        path.chmod(0o777 if path.is_dir() else 0o644)

    operator = InClusterOperator(kubeconfig_node, ns, FIGURES / "logs")
    try:
        operator.install()
        yield Cluster(kubeconfig_node, ns, storage)
    finally:
        operator.uninstall()
        node_client.delete(Namespace, ns)
    misconduct = operator.misconduct()
    assert not misconduct, "refused by its role, or writing a spec:\n" + "\n".join(misconduct)


def trainingjob(name: str, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "penguins",
        "dataset": {
            "uri": f"pvc://{CLAIM}/data/penguins.csv",
            "target": "species",
            "checks": {"minRows": 100, "maxMissingFraction": 0.2},
        },
        "estimator": {"name": "RandomForestClassifier",
                      "params": {"n_estimators": 30, "random_state": 0}},
        "evaluation": {"testSize": 0.25},
        "gate": {"metric": "accuracy", "min": 0.8},
        "artifacts": {"uri": f"pvc://{CLAIM}/models"},
        "activeDeadlineSeconds": 600,
    }  # fmt: skip
    base.update(spec)
    return {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": base,
    }


def on_host(cluster: Cluster, uri: str) -> Path:
    prefix = f"pvc://{CLAIM}/"
    assert uri.startswith(prefix), uri
    return cluster.storage / uri.removeprefix(prefix)


def test_trains_registers_and_verifies(cluster: Cluster) -> None:
    start = cluster.apply(trainingjob("penguins-rf"))
    status = cluster.wait_phase("tj", "penguins-rf", {"Succeeded", "Failed"}, TRAIN_TIMEOUT)
    assert status["phase"] == "Succeeded", status
    trained = time.monotonic()
    name = wait_for(
        "the ModelVersion to be registered",
        lambda: cluster.status("tj", "penguins-rf").get("modelVersion"),
        30,
    )
    assert name == "penguins-v1"
    mv_status = cluster.wait_phase("mv", name, {"Ready", "Failed"}, 120)
    ready = time.monotonic()
    assert mv_status["phase"] == "Ready", mv_status
    conditions = {c["type"]: c["status"] for c in mv_status["conditions"]}
    assert conditions == {"ArtifactVerified": "True", "Ready": "True"}

    mv = cluster.get("mv", name)
    spec = mv["spec"]
    assert spec["version"] == 1 and spec["task"] == "classification"
    assert spec["metrics"]["accuracy"] >= 0.8
    assert {i["name"] for i in spec["inputs"]} >= {"island", "sex", "bill_length_mm"}
    assert spec["source"]["trainingJob"] == "penguins-rf"
    assert spec["source"]["dataset"]["digest"].startswith("sha256:")
    # The artifact is on the PVC, and its digest is what the ModelVersion pins.
    directory = on_host(cluster, spec["artifact"]["uri"])
    metadata = (directory / "metadata.json").read_bytes()
    assert "sha256:" + hashlib.sha256(metadata).hexdigest() == spec["artifact"]["digest"]
    assert (directory / "model.joblib").stat().st_size > 0
    # The verification Job (server image) found the runtime a server would use: the one
    # this checkout's check finds on the same bytes.
    from orchard.serving.verify import runtime_report

    found = runtime_report(directory, spec["artifact"]["digest"])["runtime"]
    assert mv_status["runtime"] == {
        "name": found["name"], "reason": found["reason"], "checkedRows": found["rows"],
    }, mv_status  # fmt: skip
    assert "RUNTIME" in cluster.kubectl("get", "mv", name).splitlines()[0]

    tj = cluster.status("tj", "penguins-rf")
    assert tj["metrics"]["accuracy"] == spec["metrics"]["accuracy"]
    table = cluster.kubectl("get", "tj", "penguins-rf")
    assert "Succeeded" in table and "penguins-v1" in table and "accuracy" in table
    events = cluster.kubectl("get", "events", "--field-selector",
                             "involvedObject.name=penguins-rf")  # fmt: skip
    assert "Registered" in events

    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "training.json").write_text(json.dumps(
        {"apply_to_succeeded_s": round(trained - start, 2),
         "apply_to_modelversion_ready_s": round(ready - start, 2)}, indent=2) + "\n")  # fmt: skip
    print(f"apply -> TrainingJob Succeeded {trained - start:.1f}s, "
          f"-> ModelVersion Ready {ready - start:.1f}s")  # fmt: skip


def test_missing_target_column_fails_with_the_reason(cluster: Cluster) -> None:
    body = trainingjob("penguins-typo")
    body["spec"]["dataset"]["target"] = "specie"
    cluster.apply(body)
    status = cluster.wait_phase("tj", "penguins-typo", {"Succeeded", "Failed"}, TRAIN_TIMEOUT)
    assert status["phase"] == "Failed"
    assert status["reason"] == "DataCheckFailed"
    assert "specie" in status["message"]
    assert "modelVersion" not in status
    table = cluster.kubectl("get", "tj", "penguins-typo")
    assert "Failed" in table and "DataCheckFailed" in table
    print(table)


def test_search_registers_the_best_trial(cluster: Cluster) -> None:
    body = trainingjob(
        "penguins-search",
        estimator={"name": "DecisionTreeClassifier", "params": {"random_state": 0}},
        search={
            "parameters": {"max_depth": [1, 2, 4, 8]},
            "strategy": "grid",
            "maxTrials": 4,
            "parallelism": 2,
            "objective": {"metric": "accuracy", "direction": "maximize"},
        },
        gate={"metric": "accuracy", "min": 0.5},
    )
    cluster.apply(body)
    status = cluster.wait_phase("tj", "penguins-search", {"Succeeded", "Failed"},
                                TRAIN_TIMEOUT * 2)  # fmt: skip
    assert status["phase"] == "Succeeded", status
    trials = status["trials"]
    assert [t["index"] for t in trials] == [0, 1, 2, 3]
    assert all(t["phase"] == "Succeeded" for t in trials)
    assert sorted(t["params"]["max_depth"] for t in trials) == [1, 2, 4, 8]
    scores = {t["index"]: t["metrics"]["accuracy"] for t in trials}
    best = max(scores, key=lambda i: (scores[i], -i))
    assert status["bestTrial"] == best
    assert status["metrics"]["accuracy"] == scores[best]
    # One Indexed Job ran them, at most two at a time.
    job = cluster.get("job", "penguins-search")
    assert job["spec"]["completionMode"] == "Indexed"
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (4, 2)
    pods = json.loads(
        cluster.kubectl(
            "get", "pods", "-l", "batch.kubernetes.io/job-name=penguins-search", "-o", "json"
        )
    )["items"]
    spans = []
    for pod in pods:
        state = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        spans.append((state["startedAt"], state["finishedAt"]))  # RFC 3339: sortable as text
    assert len(spans) == 4
    overlap = max(sum(1 for s, f in spans if s <= start < f) for start, _ in spans)
    assert 1 <= overlap <= 2

    name = wait_for(
        "the ModelVersion",
        lambda: cluster.status("tj", "penguins-search").get("modelVersion"),
        30,
    )
    mv_status = cluster.wait_phase("mv", name, {"Ready", "Failed"}, 120)
    assert mv_status["phase"] == "Ready", mv_status
    spec = cluster.get("mv", name)["spec"]
    assert spec["source"]["trial"] == best
    assert spec["artifact"]["uri"].rstrip("/").endswith(f"trial-{best}")
    assert spec["params"]["max_depth"] == trials[best]["params"]["max_depth"]


def test_a_model_version_in_use_is_kept_until_released(cluster: Cluster) -> None:
    """The finalizer holds deletion while a ModelDeployment serves the version (its
    status.usedBy), says why, and lets go as soon as nothing does; an unused version goes
    at once."""
    name = cluster.status("tj", "penguins-rf").get("modelVersion")
    if not name:
        pytest.skip("needs the ModelVersion of test_trains_registers_and_verifies")
    cluster.apply(
        {
            "apiVersion": "orchard.dev/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "penguins"},
            "spec": {"modelVersion": name, "replicas": 0},
        }
    )
    wait_for(
        "the deployment in usedBy and the guard's finalizer",
        lambda: (
            "penguins" in (cluster.status("mv", name).get("usedBy") or [])
            and "orchard.dev/finalizer"
            in (cluster.get("mv", name)["metadata"].get("finalizers") or [])
        ),
        60,
    )
    cluster.kubectl("delete", "mv", name, "--wait=false")
    time.sleep(5)
    held = cluster.get("mv", name)
    assert held["metadata"].get("deletionTimestamp"), "deletion was not requested"
    events = wait_for(
        "the InUse event",
        lambda: (out := cluster.kubectl("get", "events", "--field-selector",
                                        f"involvedObject.name={name},reason=InUse"))
        and "ModelDeployment(s) penguins" in out and out,
        30,
    )  # fmt: skip
    assert "InUse" in events
    blocked = {c["type"]: c for c in cluster.status("mv", name).get("conditions") or []}
    assert blocked["DeletionBlocked"]["reason"] == "InUse"

    cluster.kubectl("delete", "md", "penguins", "--wait=true", "--timeout=60s")
    start = time.monotonic()
    cluster.kubectl("wait", "--for=delete", f"mv/{name}", "--timeout=60s")
    print(f"released ModelVersion deleted {time.monotonic() - start:.1f}s after its user went")

    unused = cluster.status("tj", "penguins-search").get("modelVersion")
    if unused:
        start = time.monotonic()
        cluster.kubectl("delete", "mv", unused, "--timeout=30s")
        assert time.monotonic() - start < 30
