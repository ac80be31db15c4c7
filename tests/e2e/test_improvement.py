"""The improvement loop on a real node, with no person acting and `spec` never written.

One story on one ModelDeployment that tracks the model `iris` (spec.track) and retrains
itself (spec.retrain):
  1. a TrainingJob trains v1 on a narrow slice of iris (sepal length under 5.8 cm: 73
     rows, few of the large virginica flowers); the deployment selects and serves it;
  2. traffic from the whole distribution, with true labels sent as feedback, is
     collected to the claim → DriftDetected → a retraining TrainingJob owned by the
     deployment, on the template's rows plus the collected labelled rows; the traffic
     stops → v2 registered → scored against v1 on the same rows (better) → canary,
     whose quiet step is judged on v2's evaluation rows replayed to both tracks (left
     out of monitoring and collection) → promoted;
  3. the retrain schedule fires (a minute fixed when the deployment was created): the
     same rows train a v3 no better than v2, which is registered and refused with the
     reason in status, v2 serving on.
At the end the ModelDeployment's metadata.generation is what it was at the start.

Figures (printed, and written to .cluster/figures/improvement.json): from the start of
the shifted traffic to DriftDetected, to the TrainingJob, to v2 promoted.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import build_images, install_crds, kubectl
from in_cluster import InClusterOperator
from lightkube import ApiError, Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Event, PersistentVolume, PersistentVolumeClaim, Service
from test_rollout import Traffic, condition, wait_answering, wait_for

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FIGURES = Path(os.environ.get("ORCHARD_CLUSTER_DIR", REPO / ".cluster")) / "figures"
MD = create_namespaced_resource("orchard.dev", "v1alpha1", "ModelDeployment", "modeldeployments")
MV = create_namespaced_resource("orchard.dev", "v1alpha1", "ModelVersion", "modelversions")
TJ = create_namespaced_resource("orchard.dev", "v1alpha1", "TrainingJob", "trainingjobs")

CLAIM = "orchard-artifacts"
FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
# From the first minute of the schedule to... it must come after v2's promotion (a
# scheduled time that comes during a rollout waits for its end anyway).
SCHEDULE_AFTER = dt.timedelta(minutes=4)

TEMPLATE: dict[str, Any] = {
    "model": "iris",
    "dataset": {"uri": f"pvc://{CLAIM}/data/iris-narrow.csv", "target": "species"},
    "estimator": {"name": "LogisticRegression", "params": {"max_iter": 500}},
    "evaluation": {"testSize": 0.25, "randomState": 7},
    "artifacts": {"uri": f"pvc://{CLAIM}/models"},
    "activeDeadlineSeconds": 600,
}


@pytest.fixture
def place(kubeconfig_node: Path, node_client: Client, node_namespace: str) -> Path:
    """The artifact claim, holding the narrow slice of iris as a CSV; its host directory."""
    from sklearn.datasets import load_iris

    install_crds(kubeconfig_node)
    node_client.create(
        PersistentVolumeClaim.from_dict(
            {"metadata": {"name": CLAIM},
             "spec": {"accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "256Mi"}}}}
        ),
        namespace=node_namespace,
    )  # fmt: skip

    def bound() -> str | None:
        pvc = node_client.get(PersistentVolumeClaim, CLAIM, namespace=node_namespace)
        ok = pvc.status is not None and pvc.status.phase == "Bound" and pvc.spec is not None
        return pvc.spec.volumeName if ok and pvc.spec is not None else None

    volume = node_client.get(PersistentVolume, wait_for("the PVC to bind", bound, 60))
    assert volume.spec is not None and volume.spec.hostPath is not None
    root = Path(volume.spec.hostPath.path)
    iris = load_iris(as_frame=True)
    frame = iris.data.set_axis(FEATURES, axis=1)
    frame["species"] = [iris.target_names[t] for t in iris.target]
    (root / "data").mkdir(parents=True, exist_ok=True)
    frame[frame.sepal_length < 5.8].to_csv(root / "data" / "iris-narrow.csv", index=False)
    for path in [root, *root.rglob("*")]:  # pods run as uid 10001; host paths ignore fsGroup
        path.chmod(0o777 if path.is_dir() else 0o644)
    return root


@pytest.fixture
def operator(kubeconfig_node: Path, node_namespace: str) -> Iterator[InClusterOperator]:
    if os.environ.get("ORCHARD_E2E_REUSE_IMAGES") != "1":
        build_images("server", "trainer", "operator")
    op = InClusterOperator(kubeconfig_node, node_namespace, FIGURES / "logs")
    op.install()
    try:
        yield op
    finally:
        op.uninstall()
    misconduct = op.misconduct()
    assert not misconduct, "refused by its role, or writing a spec:\n" + "\n".join(misconduct)


def status_of(client: Client, kind: Any, name: str, ns: str) -> dict[str, Any]:
    return dict(client.get(kind, name, namespace=ns).get("status") or {})


def test_drift_retrains_judges_and_rolls_out_with_no_person_acting(
    node_client: Client, node_namespace: str, place: Path, operator: InClusterOperator
) -> None:
    from sklearn.datasets import load_iris

    ns, client = node_namespace, node_client
    client.create(TJ.from_dict({"metadata": {"name": "iris-narrow"}, "spec": TEMPLATE}),
                  namespace=ns)  # fmt: skip
    wait_for("v1 to be registered and verified", lambda: version_phase(client, "iris-v1", ns)
             == "Ready", 300)  # fmt: skip

    fires = (dt.datetime.now(dt.UTC) + SCHEDULE_AFTER).replace(second=0, microsecond=0)
    schedule = f"{fires.minute} {fires.hour} * * *"
    monitoring = {
        "interval": "3s", "window": "30m", "minSamples": 600,
        "collection": {"sampleRate": 1.0, "uri": f"pvc://{CLAIM}/collected/",
                       "flushInterval": "2s"},
    }  # fmt: skip
    spec = {
        "track": {"model": "iris", "select": "best", "minImprovement": 0.01},
        "replicas": 1,
        "canary": {"steps": [{"weight": 50, "pause": "5s"}],
                   "analysis": {"interval": "2s", "minRequests": 10}},
        "monitoring": monitoring,
        "retrain": {"template": {"spec": TEMPLATE},
                    "triggers": {"drift": True, "accuracy": False, "schedule": schedule},
                    "cooldown": "180s", "window": "1h"},
    }  # fmt: skip
    client.create(MD.from_dict({"metadata": {"name": "iris"}, "spec": spec}), namespace=ns)
    generation = client.get(MD, "iris", namespace=ns).metadata.generation  # type: ignore[union-attr]

    def md() -> dict[str, Any]:
        return status_of(client, MD, "iris", ns)

    def stable(version: str) -> dict[str, Any] | None:
        s = md()
        return s if s.get("phase") == "Stable" and s.get("stableVersion") == version else None

    status = wait_for("v1 to be selected and serve", lambda: stable("iris-v1"), 240)
    assert status["targetVersion"] == "iris-v1"
    # selected first (an event says so), then kept: nothing newer is Ready
    assert status["tracking"]["reason"] == "Serving", status["tracking"]
    ip = client.get(Service, "iris", namespace=ns).spec.clusterIP  # type: ignore[union-attr]
    wait_answering(ip)
    url = f"http://{ip}:8080/v2/models/iris/infer"

    iris = load_iris()
    rows = [list(map(float, r)) for r in iris.data]
    truth = [str(iris.target_names[t]) for t in iris.target]
    figures: dict[str, Any] = {"monitoring": monitoring, "retrain_cooldown": "180s"}
    t_shift = time.monotonic()
    limits = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(timeout=5.0, trust_env=False, limits=limits) as http:
        for row, label in zip(rows, truth, strict=True):
            body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                "data": row}]}  # fmt: skip
            answer = http.post(url, json=body).json()
            sent = http.post(url.replace("/infer", "/feedback"),
                             json={"id": answer["id"], "labels": [label]})  # fmt: skip
            assert sent.status_code == 200, sent.text
    traffic = Traffic(url, rows, poison_share=0.0)  # no more labels: a retrain sees these
    traffic.start()
    try:
        wait_for("drift to be detected", lambda: condition(md(), "DriftDetected")
                 .get("status") == "True", 180)  # fmt: skip
        figures["shift_to_drift_detected_s"] = round(time.monotonic() - t_shift, 1)
        retraining = wait_for("a retraining to start", lambda: (md().get("retraining") or {})
                              .get("trainingJob") and md()["retraining"], 60)  # fmt: skip
        figures["shift_to_trainingjob_s"] = round(time.monotonic() - t_shift, 1)
        assert retraining["lastTrigger"]["type"] == "drift", retraining
        assert retraining["trainingJob"] == "iris-retrain-1"
        owner = client.get(TJ, "iris-retrain-1", namespace=ns).metadata.ownerReferences[0]  # type: ignore[index,union-attr]
        assert (owner.kind, owner.name) == ("ModelDeployment", "iris")
    finally:
        traffic.stop()  # from here on no client sends anything: the canary will be quiet
    time.sleep(5)  # two flush intervals: every answered request is on the claim
    v1_rows = collected_rows(place, ns, "iris-v1")

    promoted = wait_for("v2 to be promoted", lambda: stable("iris-v2"), 420)
    figures["shift_to_v2_promoted_s"] = round(time.monotonic() - t_shift, 1)
    replay = promoted["replay"]  # the quiet step was judged on the replayed evaluation rows
    assert (replay["version"], replay["phase"]) == ("iris-v2", "Succeeded"), replay
    assert replay["rows"] >= 40, replay
    figures["replayed_rows_per_pod"] = replay["rows"]
    time.sleep(5)
    # replayed requests are never collected (nor counted by monitoring)
    assert collected_rows(place, ns, "iris-v1") == v1_rows
    assert collected_rows(place, ns, "iris-v2") == 0
    evaluation = promoted["evaluation"]
    assert (evaluation["candidate"], evaluation["baseline"], evaluation["verdict"]) == (
        "iris-v2", "iris-v1", "Pass"), evaluation  # fmt: skip
    assert evaluation["rows"] >= 40 and evaluation["improvement"] >= 0.01, evaluation
    figures["evaluation"] = {k: evaluation.get(k) for k in
                             ("metric", "candidateValue", "baselineValue", "rows",
                              "heldoutRows", "productionRows", "datasetDigest")}  # fmt: skip
    v2 = client.get(MV, "iris-v2", namespace=ns)
    source = v2["spec"]["source"]
    assert (source["trigger"], source["parent"], source["deployment"]) == ("drift", "iris-v1",
                                                                           "iris")  # fmt: skip
    assert source["dataset"]["collected"]["rows"] >= 150, source
    figures["v2_collected_rows"] = source["dataset"]["collected"]["rows"]
    assert [e["verdict"] for e in v2["status"]["evaluations"]] == ["Pass"]

    # 3. The schedule: a retraining on the same rows, no better than what serves.
    refused = wait_for(
        "the scheduled retrain's version to be judged and refused",
        lambda: next((r for r in (md().get("tracking") or {}).get("refused") or []
                      if r["version"] == "iris-v3"), None),
        SCHEDULE_AFTER.total_seconds() + 300, every=2.0,
    )  # fmt: skip
    status = md()
    assert status["retraining"]["lastTrigger"]["type"] == "schedule", status["retraining"]
    assert status["retraining"]["count"] == 2
    assert (refused["against"], refused["reason"]) == ("iris-v2", "NotBetter"), refused
    assert status["stableVersion"] == "iris-v2" and status.get("canaryVersion") is None
    assert status_of(client, MV, "iris-v3", ns)["phase"] == "Ready"  # registered all the same
    assert client.get(MD, "iris", namespace=ns).metadata.generation == generation  # type: ignore[union-attr]

    # the status patch lands before the decision's events are posted: wait for the last one
    expected = {"Drifted", "RetrainStarted", "RetrainSucceeded", "TargetSelected",
                "Evaluating", "EvaluationPassed", "Promoted", "ChallengerRefused"}  # fmt: skip
    posted: set[str] = set()

    def every_reason_posted() -> bool:
        posted.update(e.reason for e in client.list(Event, namespace=ns) if e.reason)
        return expected <= posted

    try:
        wait_for("the story's events", every_reason_posted, 30, every=1.0)
    except AssertionError as timeout:
        raise AssertionError(f"{timeout}: missing {sorted(expected - posted)}") from None
    table = kubectl("get", "md", "iris", "-n", ns, kubeconfig=operator.kubeconfig).stdout
    header, line = table.splitlines()[:2]
    assert "TRACKS" in header and "TARGET" in header and "iris-v2" in line, table
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "improvement.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\nimprovement figures:", json.dumps(figures, indent=2))


def collected_rows(root: Path, ns: str, version: str) -> int:
    """Request rows one version's pods wrote to the claim (docs/collection.md)."""
    import pyarrow.parquet as pq

    directory = root / "collected" / ns / "iris" / version / "requests"
    files = sorted(directory.glob("[!.]*.parquet")) if directory.is_dir() else []
    return sum(pq.read_metadata(f).num_rows for f in files)


def version_phase(client: Client, name: str, ns: str) -> str | None:
    """A ModelVersion's phase; None until it is registered."""
    try:
        return status_of(client, MV, name, ns).get("phase")
    except ApiError:
        return None
