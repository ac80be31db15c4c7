"""Canary rollouts on a real node: real pods serving real models, real HTTP through the
Service IP, the operator scraping the pods' own metrics.

One story, in order, on one ModelDeployment:
  1. v1 serves and answers predictions;
  2. a good v2 walks every step under traffic and is promoted;
  3. a bad v3 (its pipeline takes the square root of its inputs, so it raises on the
     15 % of requests that carry a negative value) is rolled back by itself; v2 keeps
     serving; the reason is in status;
  4. the operator is killed in the middle of a good v4's rollout; a new operator process
     resumes from status and completes it.

The operator runs in the cluster as users install it (tests/in_cluster.py: its image, the
generated role, a restricted namespace); the test kills its pod without a grace period.
Pod IPs on the node's bridge are reachable from the host, where the traffic comes from.
The ModelVersions are made by the test: real scikit-learn pipelines trained here and
written in the artifact format to the PVC's host directory; the ModelVersion
controller verifies them with its Job as usual.

Figures (printed, and written to .cluster/figures/rollout.json): time from a good
version's apply to its promotion, and from a bad version's first answered request to the
last one (all traffic back on stable).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from conftest import build_images, install_crds, kubectl, stand_in_crd
from in_cluster import InClusterOperator
from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import PersistentVolume, PersistentVolumeClaim, Service
from lightkube.types import PatchType

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FIGURES = Path(os.environ.get("ORCHARD_CLUSTER_DIR", REPO / ".cluster")) / "figures"

MD = create_namespaced_resource("orchard.dev", "v1alpha1", "ModelDeployment", "modeldeployments")
MV = create_namespaced_resource("orchard.dev", "v1alpha1", "ModelVersion", "modelversions")

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
CLASSES = ["setosa", "versicolor", "virginica"]
POISON_SHARE = 0.15  # requests with a negative width, which only the sqrt-taking v3 cannot score
STEPS = [{"weight": 25, "pause": "5s"}, {"weight": 50, "pause": "5s"}]


# --- models ---------------------------------------------------------------------------------


def train_artifacts(root: Path) -> dict[str, dict[str, Any]]:
    """Train four real pipelines on iris and write each in the artifact format."""
    from sklearn.datasets import load_iris
    from sklearn.dummy import DummyClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer, StandardScaler

    from orchard.trainer.artifact import (
        feature_stats,
        library_versions,
        sklearn_version,
        write_artifact,
    )
    from orchard.trainer.evaluate import calibration, prediction_stats

    iris = load_iris(as_frame=True)
    x = iris.data.set_axis(FEATURES, axis=1)
    y = iris.target.map(dict(enumerate(CLASSES)))
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=1)

    def lr(c: float) -> Pipeline:
        return Pipeline([("scale", StandardScaler()), ("model", LogisticRegression(C=c))])

    pipelines = {
        "iris-v1": lr(1.0),
        "iris-v2": lr(0.7),
        # the same kind of model behind sqrt(x): NaN on a negative input, and it raises
        "iris-v3": Pipeline([("sqrt", FunctionTransformer(np.sqrt)), ("scale", StandardScaler()),
                             ("model", LogisticRegression(C=1.0))]),
        "iris-v4": lr(1.5),
        # answers one class whatever it is asked: no error, no delay, only its predictions
        # give it away (imported by hand, it registers no metrics to compare)
        "iris-v5": Pipeline([("model", DummyClassifier(strategy="most_frequent"))]),
    }  # fmt: skip
    dataset_digest = "sha256:" + hashlib.sha256(x.to_csv(index=False).encode()).hexdigest()
    inputs = [{"name": f, "type": "number"} for f in FEATURES]
    baseline = feature_stats(x_train, inputs)  # the drift baseline, as the trainer writes it
    out: dict[str, dict[str, Any]] = {}
    for name, pipe in pipelines.items():
        pipe.fit(x_train, y_train)
        accuracy = float(accuracy_score(y_test, pipe.predict(x_test)))
        directory = root / "iris" / name
        fields = {
            "model": "iris",
            "task": "classification",
            "estimator": {"name": "LogisticRegression", "params": {}},
            "metrics": {"accuracy": accuracy},
            "framework": {"name": "scikit-learn", "version": sklearn_version()},
            "libraries": library_versions(),
            "dataset": {
                "uri": "builtin:iris",
                "digest": dataset_digest,
                "rows": len(x),
                "target": "species",
            },
            "inputs": inputs,
            "output": {"name": "species", "type": "string", "classes": CLASSES},
            "featureStats": baseline,
            "predictionStats": prediction_stats(pipe.predict(x_test), "classification"),
            "calibration": calibration(pipe, x_test, y_test),
            "source": {"trainingJob": "e2e-rollout"},
        }
        _, digest = write_artifact(directory, pipe, fields)
        out[name] = {"digest": digest, "accuracy": accuracy, "path": f"iris/{name}/"}
    for path in [root, *root.rglob("*")]:  # the server runs as an unprivileged user
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out


# --- traffic ------------------------------------------------------------------------------


@dataclass
class Traffic:
    """Clients sending V2 inference requests through the Service IP, recording answers."""

    url: str
    rows: list[list[float]]
    threads: int = 3
    pause: float = 0.03
    poison_share: float = POISON_SHARE
    log: list[tuple[float, int, str | None]] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # of every answer with status 200
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)

    def _run(self, seed: int) -> None:
        rnd = random.Random(seed)
        # A new connection per request, like many independent clients: kube-proxy
        # balances connections, so a kept-alive one would stay on the pod it met first.
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=5.0, trust_env=False, limits=limits) as client:
            while not self._stop.is_set():
                row = list(rnd.choice(self.rows))
                if rnd.random() < self.poison_share:
                    row[1] = -1.0  # a negative sepal width
                body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                    "data": row}]}  # fmt: skip
                try:
                    resp = client.post(self.url, json=body)
                    version = resp.json().get("model_version") if resp.status_code == 200 else None
                    if resp.status_code == 200:
                        self.ids.append(resp.json()["id"])
                    self.log.append((time.monotonic(), resp.status_code, version))
                except (httpx.HTTPError, ValueError):
                    self.log.append((time.monotonic(), 0, None))
                time.sleep(self.pause)

    def start(self) -> None:
        for i in range(self.threads):
            worker = threading.Thread(target=self._run, args=(i,), daemon=True)
            worker.start()
            self._workers.append(worker)

    def stop(self) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=10)

    def since(self, t: float) -> list[tuple[float, int, str | None]]:
        return [entry for entry in list(self.log) if entry[0] >= t]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def orchard_images(kubeconfig_node: Path) -> None:
    """The server and trainer images, built from images/ and loaded into the node
    (ORCHARD_E2E_REUSE_IMAGES=1 takes the ones already loaded)."""
    if os.environ.get("ORCHARD_E2E_REUSE_IMAGES") != "1":
        build_images("server", "trainer", "operator")


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


@pytest.fixture
def artifacts(
    kubeconfig_node: Path, node_client: Client, node_namespace: str
) -> dict[str, dict[str, Any]]:
    """A PVC of the default class, holding the trained models; their ModelVersions."""
    ns = node_namespace
    install_crds(kubeconfig_node)  # before the operator's install: the versions come first
    node_client.create(
        PersistentVolumeClaim.from_dict(
            {"metadata": {"name": "orchard-artifacts"},
             "spec": {"accessModes": ["ReadWriteOnce"],
                      "resources": {"requests": {"storage": "64Mi"}}}}
        ),
        namespace=ns,
    )  # fmt: skip

    def bound() -> str | None:
        pvc = node_client.get(PersistentVolumeClaim, "orchard-artifacts", namespace=ns)
        ok = pvc.status is not None and pvc.status.phase == "Bound" and pvc.spec is not None
        return pvc.spec.volumeName if ok and pvc.spec is not None else None

    volume = node_client.get(PersistentVolume, wait_for("the PVC to bind", bound, 60))
    assert volume.spec is not None and volume.spec.hostPath is not None
    models = train_artifacts(Path(volume.spec.hostPath.path))
    for name, info in models.items():
        node_client.create(
            MV.from_dict(
                {
                    "metadata": {"name": name},
                    "spec": {
                        "model": "iris",
                        "version": int(name.rsplit("v", 1)[1]),
                        "task": "classification",
                        "artifact": {"uri": f"pvc://orchard-artifacts/{info['path']}",
                                     "digest": info["digest"]},
                        "framework": {"name": "scikit-learn", "version": "1"},
                        "metrics": {} if name == "iris-v5" else {"accuracy": info["accuracy"]},
                        "inputs": [{"name": f, "type": "number"} for f in FEATURES],
                    },
                }
            ),
            namespace=ns,
        )  # fmt: skip
    return models


@pytest.fixture
def operator(
    kubeconfig_node: Path, node_namespace: str, orchard_images: None
) -> Iterator[InClusterOperator]:
    """The operator as users install it (its image, its generated role), in the test's
    namespace (restricted Pod Security), watching only it."""
    op = InClusterOperator(kubeconfig_node, node_namespace, FIGURES / "logs")
    op.install()
    try:
        yield op
    finally:
        op.uninstall()
    misconduct = op.misconduct()
    assert not misconduct, "refused by its role, or writing a spec:\n" + "\n".join(misconduct)


# --- the story ------------------------------------------------------------------------------


def wait_answering(ip: str) -> None:
    """Until a Service answers: kube-proxy programs a new Service's endpoints a little
    after its pods are ready (before that it refuses connections)."""
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                        "data": [5.1, 3.5, 1.4, 0.2]}]}  # fmt: skip

    def answers() -> bool:
        with contextlib.suppress(httpx.HTTPError):
            url = f"http://{ip}:8080/v2/models/iris/infer"
            return httpx.post(url, json=body, timeout=2.0).status_code == 200
        return False

    wait_for(f"the Service {ip} to answer", answers, 60)


def md_status(client: Client, ns: str) -> dict[str, Any]:
    obj = client.get(MD, "iris", namespace=ns)
    return dict(obj.get("status") or {})


def set_version(client: Client, ns: str, version: str) -> float:
    client.patch(MD, "iris", {"spec": {"modelVersion": version}}, namespace=ns,
                 patch_type=PatchType.MERGE)  # fmt: skip
    return time.monotonic()


@dataclass
class Watcher:
    """Polls the ModelDeployment's status in the background; keeps what it saw."""

    client: Client
    namespace: str
    seen: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # the API server answers again next time
                self.seen.append((time.monotonic(), md_status(self.client, self.namespace)))
            time.sleep(0.5)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def since(self, t: float) -> list[dict[str, Any]]:
        return [s for at, s in list(self.seen) if at >= t]


def test_canary_rollouts(
    node_client: Client,
    node_namespace: str,
    artifacts: dict[str, dict[str, Any]],
    operator: InClusterOperator,
) -> None:
    ns, client = node_namespace, node_client
    figures: dict[str, Any] = {
        "steps": STEPS,
        "analysis": "defaults: interval 5s, minRequests 20, maxErrorRate 0.05, "
        "maxLatencyP95 500ms, maxLatencyRatio 2, maxPredictionShift 0.2",
    }

    # 1. v1 serves and answers predictions
    client.create(
        MD.from_dict({"metadata": {"name": "iris"},
                      "spec": {"modelVersion": "iris-v1", "replicas": 2,
                               "canary": {"steps": STEPS}}}),
        namespace=ns,
    )  # fmt: skip
    wait_for("v1 to be stable",
             lambda: md_status(client, ns).get("phase") == "Stable", 240)  # fmt: skip
    status = md_status(client, ns)
    assert status["stableVersion"] == "iris-v1"
    assert status["url"] == f"http://iris.{ns}.svc:8080"
    ip = client.get(Service, "iris", namespace=ns).spec.clusterIP  # type: ignore[union-attr]
    from sklearn.datasets import load_iris

    rows = [list(map(float, r)) for r in load_iris().data]
    wait_answering(ip)
    grpc_through_the_service(client, ns, ip, rows[:3])
    traffic = Traffic(f"http://{ip}:8080/v2/models/iris/infer", rows)
    traffic.start()
    watcher = Watcher(client, ns)
    watcher.start()
    try:
        time.sleep(3)
        answered = traffic.since(0)
        assert answered and all(v == "iris-v1" for _, code, v in answered if code == 200)
        assert sum(1 for _, code, _ in answered if code == 200) >= 20

        # 2. a good v2 walks every step under traffic and is promoted
        t_apply = set_version(client, ns, "iris-v2")

        def promoted(version: str) -> bool:
            s = md_status(client, ns)
            return s.get("phase") == "Stable" and s.get("stableVersion") == version

        wait_for("v2 to be promoted", lambda: promoted("iris-v2"), 300)
        figures["good_apply_to_promotion_s"] = round(time.monotonic() - t_apply, 1)
        seen = watcher.since(t_apply)
        assert {s.get("currentStep") for s in seen if s.get("canaryVersion") == "iris-v2"} >= {0, 1}
        assert any(s.get("phase") == "Progressing" and (s.get("analysis") or {}).get("verdict")
                   == "Pass" for s in seen)  # fmt: skip
        weights = {(s.get("canaryWeight") or {}).get("desired") for s in seen}
        assert {25, 50} <= weights
        status = md_status(client, ns)
        assert status.get("lastRollback") is None
        assert [h["version"] for h in status["history"]] == ["iris-v1", "iris-v2"]
        used_by = {
            name: client.get(MV, name, namespace=ns).get("status", {}).get("usedBy")
            for name in ("iris-v1", "iris-v2")
        }
        assert used_by == {"iris-v1": [], "iris-v2": ["iris"]}
        v2_answers = [v for t, code, v in traffic.since(t_apply) if code == 200]
        assert "iris-v2" in v2_answers

        # 3. a bad v3 is rolled back by itself; v2 keeps serving
        t_bad = set_version(client, ns, "iris-v3")
        wait_for("v3 to be rolled back",
                 lambda: md_status(client, ns).get("phase") == "RolledBack", 240)  # fmt: skip
        t_rolled_back = time.monotonic()
        status = md_status(client, ns)
        rollback = status["lastRollback"]
        assert rollback["from"] == "iris-v3" and rollback["to"] == "iris-v2"
        assert rollback["reason"] == "ErrorRate", rollback
        assert rollback["metrics"]["canaryErrorRate"] > 0.05
        assert status["stableVersion"] == "iris-v2" and status.get("canaryVersion") is None
        degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
        assert degraded["status"] == "True"
        time.sleep(8)  # endpoints settle; then only v2 answers
        bad = [(t, code, v) for t, code, v in traffic.since(t_bad)]
        v3_times = [t for t, code, v in bad if v == "iris-v3"]
        v3_errors = [t for t, code, v in bad if code >= 500]
        first_v3 = min(v3_times + v3_errors)
        last_v3 = max(v3_times + v3_errors)
        figures["bad_first_traffic_to_rollback_decision_s"] = round(t_rolled_back - first_v3, 1)
        figures["bad_first_traffic_to_all_stable_s"] = round(last_v3 - first_v3, 1)
        figures["bad_requests_failed"] = len(v3_errors)
        after = traffic.since(time.monotonic() - 4)
        assert after and all(code == 200 and v == "iris-v2" for _, code, v in after)

        # 4. the operator dies mid-rollout of v4; a new one resumes and completes it
        t_v4 = set_version(client, ns, "iris-v4")
        wait_for("v4's first step to take effect", lambda: (
            lambda s: s.get("canaryVersion") == "iris-v4" and s.get("currentStep") == 0
            and s.get("reason") == "Analysing")(md_status(client, ns)), 180)  # fmt: skip
        operator.kill()
        t_killed = time.monotonic()
        operator.wait_ready()  # its Deployment makes a new pod, which resumes from status
        wait_for("v4 to be promoted after the restart", lambda: promoted("iris-v4"), 300)
        figures["restart_apply_to_promotion_s"] = round(time.monotonic() - t_v4, 1)
        after_restart = watcher.since(t_killed)
        assert any(s.get("currentStep") == 1 for s in after_restart)
        status = md_status(client, ns)
        assert status["lastRollback"]["from"] == "iris-v3"  # no new rollback
        assert [h["version"] for h in status["history"]] == ["iris-v1", "iris-v2", "iris-v4"]
        time.sleep(6)  # the last v2 pods leave the endpoints (kube-proxy syncs)
        final = traffic.since(time.monotonic() - 3)
        assert final and all(code == 200 and v == "iris-v4" for _, code, v in final), [
            (code, v) for _, code, v in final if (code, v) != (200, "iris-v4")
        ]
        figures["requests_sent"] = len(traffic.log)
        figures["requests_failed_outside_v3"] = sum(
            1 for t, code, _ in traffic.log if code != 200 and not (t_bad <= t <= t_rolled_back + 8)
        )
    finally:
        traffic.stop()
        watcher.stop()
        FIGURES.mkdir(parents=True, exist_ok=True)
        (FIGURES / "rollout.json").write_text(json.dumps(figures, indent=2) + "\n")
        print("\nrollout figures:", json.dumps(figures, indent=2))
    assert figures["bad_first_traffic_to_all_stable_s"] <= 30
    assert figures["requests_failed_outside_v3"] == 0


def grpc_through_the_service(client: Client, ns: str, ip: str, rows: list[list[float]]) -> None:
    """The Service's named port `grpc` (h2c) reaches the pods' GRPCInferenceService: with
    tritonclient's gRPC client, unmodified, the same labels as over HTTP."""
    import tritonclient.grpc as triton

    service = client.get(Service, "iris", namespace=ns)
    assert service.spec is not None and service.spec.ports is not None
    ports = {p.name: (p.port, p.appProtocol) for p in service.spec.ports}
    assert ports["grpc"] == (8081, "kubernetes.io/h2c"), ports
    body = {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64",
                        "data": [x for row in rows for x in row]}]}  # fmt: skip
    over_http = httpx.post(f"http://{ip}:8080/v2/models/iris/infer", json=body, timeout=10,
                           trust_env=False).json()["outputs"][0]["data"]  # fmt: skip
    with triton.InferenceServerClient(f"{ip}:8081") as grpc_client:
        assert grpc_client.is_server_live() and grpc_client.is_model_ready("iris")
        tensor = triton.InferInput("input-0", [len(rows), 4], "FP64")
        tensor.set_data_from_numpy(np.array(rows, dtype=np.float64))
        wanted = [triton.InferRequestedOutput("output-0"),
                  triton.InferRequestedOutput("predict_proba")]  # fmt: skip
        result = grpc_client.infer("iris", [tensor], outputs=wanted)
        assert result.get_response().model_version == "iris-v1"
        labels = [label.decode() for label in result.as_numpy("output-0").tolist()]  # BYTES
        assert labels == over_http
        assert result.as_numpy("predict_proba").shape == (len(rows), 3)


def create_md(client: Client, ns: str, version: str, **spec: Any) -> None:
    client.create(
        MD.from_dict({"metadata": {"name": "iris"},
                      "spec": {"modelVersion": version, "replicas": 1, "canary": {"steps": STEPS},
                               **spec}}),
        namespace=ns,
    )  # fmt: skip


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), {})


def test_quiet_canary_pauses_shifted_predictions_roll_back_a_person_promotes(
    node_client: Client,
    node_namespace: str,
    artifacts: dict[str, dict[str, Any]],
    operator: InClusterOperator,
) -> None:
    """No traffic is no verdict (Paused); a model that answers one class is caught by the
    prediction shift alone; a person promotes a quiet canary by annotation."""
    ns, client = node_namespace, node_client
    create_md(client, ns, "iris-v1")
    wait_for("v1 to be stable", lambda: md_status(client, ns).get("phase") == "Stable", 240)

    # v5, with no traffic at all: paused, not passed
    set_version(client, ns, "iris-v5")
    wait_for("the quiet canary to pause",
             lambda: md_status(client, ns).get("phase") == "Paused", 180)  # fmt: skip
    status = md_status(client, ns)
    assert status["reason"] == "TooFewRequests" and status["canaryVersion"] == "iris-v5"
    assert status["analysis"]["verdict"] == "Inconclusive"

    # traffic arrives: the one-class answers give it away
    ip = client.get(Service, "iris", namespace=ns).spec.clusterIP  # type: ignore[union-attr]
    from sklearn.datasets import load_iris

    rows = [list(map(float, r)) for r in load_iris().data]
    traffic = Traffic(f"http://{ip}:8080/v2/models/iris/infer", rows)
    traffic.start()
    try:
        wait_for("v5 to be rolled back",
                 lambda: md_status(client, ns).get("phase") == "RolledBack", 120)  # fmt: skip
    finally:
        traffic.stop()
    status = md_status(client, ns)
    rollback = status["lastRollback"]
    assert (rollback["from"], rollback["to"], rollback["reason"]) == (
        "iris-v5",
        "iris-v1",
        "PredictionShift",
    )
    assert rollback["metrics"]["predictionShift"] > 0.2
    assert rollback["metrics"]["canaryErrorRate"] == 0
    assert condition(status, "Degraded")["status"] == "True"

    # v2 with no traffic pauses; a person promotes it by annotation
    set_version(client, ns, "iris-v2")
    wait_for("v2 to pause", lambda: (lambda s: s.get("phase") == "Paused"
             and s.get("canaryVersion") == "iris-v2")(md_status(client, ns)), 180)  # fmt: skip
    promote = {"metadata": {"annotations": {"orchard.dev/rollout-action": "promote"}}}
    client.patch(MD, "iris", promote, namespace=ns, patch_type=PatchType.MERGE)
    wait_for("v2 to be promoted by the annotation", lambda: (
        lambda s: s.get("phase") == "Stable" and s.get("stableVersion") == "iris-v2")(
            md_status(client, ns)), 180)  # fmt: skip
    status = md_status(client, ns)
    assert status["lastAction"]["action"] == "promote"
    assert status["lastAction"]["source"] == "annotation"
    assert condition(status, "Degraded")["status"] == "False"
    assert [h["version"] for h in status["history"]] == ["iris-v1", "iris-v2"]
    spec = client.get(MD, "iris", namespace=ns)["spec"]
    assert spec["modelVersion"] == "iris-v2"  # the operator never wrote spec


def test_a_traffic_mode_that_cannot_be_honoured_says_why(
    node_client: Client,
    node_namespace: str,
    artifacts: dict[str, dict[str, Any]],
    operator: InClusterOperator,
) -> None:
    """gatewayAPI where no HTTPRoute can be had: a False TrafficSplit condition with the
    reason, and a rollout that waits instead of sending traffic some other way."""
    ns, client = node_namespace, node_client
    create_md(client, ns, "iris-v1", traffic={"mode": "gatewayAPI", "httpRoute": {"name": "web"}})
    wait_for("v1 to be stable", lambda: md_status(client, ns).get("phase") == "Stable", 240)
    status = md_status(client, ns)
    split = condition(status, "TrafficSplit")
    # GatewayAPIUnavailable here (no Gateway API CRDs); HTTPRouteNotFound where it is installed
    unavailable = ("GatewayAPIUnavailable", "HTTPRouteNotFound")
    assert split["status"] == "False" and split["reason"] in unavailable, split
    services = {s.metadata.name: s for s in client.list(Service, namespace=ns)}  # type: ignore[union-attr]
    assert {"iris", "iris-stable", "iris-canary"} <= set(services)
    assert services["iris"].spec.selector["orchard.dev/track"] == "stable"  # type: ignore[union-attr,index]
    set_version(client, ns, "iris-v2")
    wait_for("the rollout to wait for its traffic split",
             lambda: md_status(client, ns).get("phase") == "Paused", 60)  # fmt: skip
    status = md_status(client, ns)
    assert status["reason"] in unavailable
    assert status.get("currentStep") is None and status["canaryWeight"]["effective"] == 0


# --- gatewayAPI, with the test standing in for the Gateway implementation ---------------------

HTTPROUTE = create_namespaced_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
HTTPROUTE_CRD = stand_in_crd("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")


@pytest.fixture
def httproute_crd(kubeconfig_node: Path) -> Iterator[None]:
    """A stand-in HTTPRoute CRD (schema-less) when the Gateway API is not installed; it is
    removed afterwards. Where the real CRDs are installed they are used as they are."""
    crd = "crd/httproutes.gateway.networking.k8s.io"
    present = kubectl("get", crd, kubeconfig=kubeconfig_node, check=False).returncode == 0
    if not present:
        kubectl("apply", "-f", "-", kubeconfig=kubeconfig_node, input=json.dumps(HTTPROUTE_CRD))
        kubectl("wait", "--for=condition=Established", "--timeout=60s", crd,
                kubeconfig=kubeconfig_node)  # fmt: skip
    try:
        yield
    finally:
        if not present:
            kubectl("delete", crd, "--wait=false", kubeconfig=kubeconfig_node, check=False)


def route_weights(client: Client, ns: str) -> dict[str, int]:
    route = client.get(HTTPROUTE, "web", namespace=ns)
    rules = (route.get("spec") or {}).get("rules") or [{}]
    return {ref["name"]: int(ref.get("weight", 1)) for ref in rules[0].get("backendRefs") or []}


def test_gateway_api_mode_sets_route_weights_step_by_step(
    node_client: Client,
    node_namespace: str,
    artifacts: dict[str, dict[str, Any]],
    httproute_crd: None,
    operator: InClusterOperator,
) -> None:
    """With traffic.mode gatewayAPI the operator sets the HTTPRoute's backend weights at
    each step; here the test plays the Gateway: it accepts the route and sends each request
    to the per-track Service the weights pick."""
    ns, client = node_namespace, node_client
    # The first rule is handed to Orchard by naming the deployment's Service; the second
    # belongs to someone else and must come through the rollout exactly as written.
    theirs = {"matches": [{"path": {"type": "PathPrefix", "value": "/shop"}}],
              "backendRefs": [{"group": "", "kind": "Service", "name": "shop", "port": 80,
                               "weight": 1}]}  # fmt: skip
    client.create(HTTPROUTE.from_dict({
        "metadata": {"name": "web"},
        "spec": {"parentRefs": [{"name": "gw"}],
                 "rules": [{"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
                            "backendRefs": [{"name": "iris", "port": 8080}]},
                           theirs]},
    }), namespace=ns)  # fmt: skip
    accepted = {"status": {"parents": [{
        "parentRef": {"name": "gw"}, "controllerName": "orchard.dev/e2e-gateway",
        "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                        "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}],
    }]}}  # fmt: skip
    client.patch(HTTPROUTE.Status, "web", accepted, namespace=ns, patch_type=PatchType.MERGE)
    create_md(client, ns, "iris-v1", replicas=2,
              traffic={"mode": "gatewayAPI", "httpRoute": {"name": "web"}})  # fmt: skip
    wait_for("v1 to be stable", lambda: md_status(client, ns).get("phase") == "Stable", 240)
    status = md_status(client, ns)
    split = condition(status, "TrafficSplit")
    assert (split["status"], split["reason"]) == ("True", "HTTPRoute"), split
    assert route_weights(client, ns) == {"iris-stable": 100, "iris-canary": 0}

    ips = {t: client.get(Service, f"iris-{t}", namespace=ns).spec.clusterIP  # type: ignore[union-attr]
           for t in ("stable", "canary")}  # fmt: skip
    weights = {"iris-stable": 100, "iris-canary": 0}
    seen_weights: list[tuple[int, int]] = []
    stop = threading.Event()

    def follow_route() -> None:  # the Gateway's view of the route
        while not stop.is_set():
            with contextlib.suppress(Exception):
                s = md_status(client, ns)
                if not phases or phases[-1][1:] != (s.get("phase"), s.get("reason")):
                    phases.append(
                        (round(time.monotonic() - t0, 1), s.get("phase"), s.get("reason"))
                    )
                weights.update(route_weights(client, ns))
                pair = (weights["iris-stable"], weights["iris-canary"])
                if not seen_weights or seen_weights[-1] != pair:
                    seen_weights.append(pair)
            time.sleep(0.3)

    from sklearn.datasets import load_iris

    rows = [list(map(float, r)) for r in load_iris().data]
    answers: list[tuple[str, int, str | None]] = []
    t0 = time.monotonic()
    phases: list[tuple[float, str | None, str | None]] = []

    def gateway() -> None:  # each request to the backend the weights pick
        rnd = random.Random(1)
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=5.0, trust_env=False, limits=limits) as http:
            while not stop.is_set():
                canary = rnd.random() * 100 < weights["iris-canary"]
                track = "canary" if canary else "stable"
                body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                    "data": rnd.choice(rows)}]}  # fmt: skip
                try:
                    resp = http.post(f"http://{ips[track]}:8080/v2/models/iris/infer", json=body)
                    version = resp.json().get("model_version") if resp.status_code == 200 else None
                    answers.append((track, resp.status_code, version))
                except (httpx.HTTPError, ValueError) as exc:
                    answers.append((track, 0, f"{time.monotonic() - t0:.1f}s {exc!r}"[:160]))
                time.sleep(0.02)

    wait_answering(ips["stable"])
    threads = [threading.Thread(target=follow_route, daemon=True)] + [
        threading.Thread(target=gateway, daemon=True) for _ in range(3)
    ]
    for thread in threads:
        thread.start()
    try:
        set_version(client, ns, "iris-v2")
        wait_for("v2 to be promoted", lambda: (
            lambda s: s.get("phase") == "Stable" and s.get("stableVersion") == "iris-v2")(
                md_status(client, ns)), 300)  # fmt: skip
        time.sleep(2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=10)
    assert (75, 25) in seen_weights and (50, 50) in seen_weights, seen_weights
    assert seen_weights[-1] == (100, 0), seen_weights
    assert seen_weights.index((75, 25)) < seen_weights.index((50, 50))
    assert any(t == "canary" and v == "iris-v2" for t, _, v in answers)
    failed = [a for a in answers if a[1] != 200]
    assert not failed, (len(failed), len(answers), failed[:3], failed[-3:], phases)
    status = md_status(client, ns)
    assert status.get("lastRollback") is None
    assert client.get(HTTPROUTE, "web", namespace=ns)["spec"]["rules"][1] == theirs


# --- monitoring: the stable version watched against its training baseline -------------------


def test_monitoring_names_a_shifted_input_across_replicas_and_restarts(
    node_client: Client,
    node_namespace: str,
    artifacts: dict[str, dict[str, Any]],
    operator: InClusterOperator,
) -> None:
    """Two replicas behind the Service: traffic from the data's own distribution is no
    drift, with every pod's rows counted; the same traffic with petal_length moved by 3 cm
    is DriftDetected naming that input; an operator restart and a deleted serving pod
    neither clear the verdict nor lose the window's rows."""
    from lightkube.resources.core_v1 import Event, Pod
    from sklearn.datasets import load_iris

    ns, client = node_namespace, node_client
    monitoring = {"interval": "3s", "window": "10m", "minSamples": 200}
    create_md(client, ns, "iris-v1", replicas=2, monitoring=monitoring)
    wait_for("v1 to be stable with two pods", lambda: (lambda s: s.get("phase") == "Stable"
             and s.get("readyReplicas") == 2)(md_status(client, ns)), 240)  # fmt: skip
    ip = client.get(Service, "iris", namespace=ns).spec.clusterIP  # type: ignore[union-attr]
    wait_answering(ip)
    url = f"http://{ip}:8080/v2/models/iris/infer"
    rows = [list(map(float, r)) for r in load_iris().data]
    figures: dict[str, Any] = {"monitoring": monitoring}

    def drift(status: dict[str, Any]) -> str | None:
        return condition(status, "DriftDetected").get("status")

    traffic = Traffic(url, rows, poison_share=0.0)
    traffic.start()
    try:
        wait_for("in-distribution traffic to be judged", lambda: drift(md_status(client, ns))
                 in ("True", "False"), 120)  # fmt: skip
    finally:
        traffic.stop()
    status = md_status(client, ns)
    assert drift(status) == "False", condition(status, "DriftDetected")
    watched = status["monitoring"]
    assert watched["version"] == "iris-v1" and watched["pods"] == 2
    assert watched["samples"] >= 200 and watched["driftScore"] < 0.2, watched
    assert {i["feature"] for i in watched["inputs"]} <= set(FEATURES)
    estimate = watched["accuracy"]  # before any label: the calibrated confidence only
    assert estimate["metric"] == "accuracy" and estimate["labels"] == 0, estimate
    assert estimate["estimatedFrom"] >= 1 and 0.8 <= estimate["estimated"] <= 1.0, estimate
    assert condition(status, "AccuracyDegraded")["reason"] == "NotEnoughSamples"

    # True labels as feedback, each sent on a new connection: about half reach the pod
    # that did not answer, which asks the other through the headless Service's DNS name.
    iris = load_iris()
    truth = [CLASSES[t] for t in iris.target]

    def labelled(rows_and_labels: list[tuple[list[float], str]]) -> list[int]:
        codes = []
        limits = httpx.Limits(max_keepalive_connections=0)
        with httpx.Client(timeout=5.0, trust_env=False, limits=limits) as http:
            for row, label in rows_and_labels:
                body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                    "data": row}]}  # fmt: skip
                answer = http.post(url, json=body).json()
                sent = http.post(url.replace("/infer", "/feedback"),
                                 json={"id": answer["id"], "labels": [label]})  # fmt: skip
                codes.append(sent.status_code)
        return codes

    assert set(labelled(list(zip(rows, truth, strict=True)))) == {200}

    def accuracy_judged(verdict: str) -> dict[str, Any] | None:
        s = md_status(client, ns)
        return s if condition(s, "AccuracyDegraded").get("status") == verdict else None

    def all_labels_judged() -> dict[str, Any] | None:
        # the verdict comes once minLabels are in; the rest arrive at the next scrapes
        s = accuracy_judged("False")
        return s if s is not None and s["monitoring"]["accuracy"]["labels"] == 150 else None

    status = wait_for("the 150 true labels to be judged", all_labels_judged, 60)
    live = status["monitoring"]["accuracy"]
    offline = artifacts["iris-v1"]["accuracy"]
    figures["live_accuracy"], figures["offline_accuracy"] = live["value"], round(offline, 4)
    assert live["labels"] == 150 and live["unmatched"] == 0, live
    assert abs(live["value"] - offline) <= 0.05, (live, offline)
    wrong = [CLASSES[(t + 1) % 3] for t in iris.target]
    assert set(labelled(list(zip(rows, wrong, strict=True)) * 2)) == {200}

    def degraded_below_half() -> dict[str, Any] | None:  # once most wrong labels are in
        s = accuracy_judged("True")
        return s if s is not None and s["monitoring"]["accuracy"]["value"] < 0.5 else None

    wait_for("the wrong labels to degrade accuracy below 0.5", degraded_below_half, 60)

    shifted = [[a, b, c + 3.0, d] for a, b, c, d in rows]
    traffic = Traffic(url, shifted, poison_share=0.0)
    t_shift = time.monotonic()
    traffic.start()
    try:
        wait_for("the shifted input to be detected",
                 lambda: drift(md_status(client, ns)) == "True", 120)  # fmt: skip
        figures["shift_to_drift_detected_s"] = round(time.monotonic() - t_shift, 1)
        status = md_status(client, ns)
        worst = status["monitoring"]["inputs"][0]
        assert worst["feature"] == "petal_length" and worst["psi"] > 0.2, status["monitoring"]
        assert "petal_length" in condition(status, "DriftDetected")["message"]
        before = status["monitoring"]["samples"]

        operator.kill()  # the window lives on in its ConfigMap
        operator.wait_ready()
        pod = client.list(Pod, namespace=ns, labels={"orchard.dev/track": "stable"})
        client.delete(Pod, next(iter(pod)).metadata.name, namespace=ns)  # type: ignore[union-attr]

        def counted_on() -> dict[str, Any] | None:
            s = md_status(client, ns)
            ok = (
                drift(s) == "True"
                and s["monitoring"]["lastEvaluated"] > status["monitoring"]["lastEvaluated"]
                and s["monitoring"]["samples"] > before
            )
            return s if ok else None  # fmt: skip

        after = wait_for("the restarted operator to count on", counted_on, 120)
        assert after["monitoring"]["samples"] > before
    finally:
        traffic.stop()
        FIGURES.mkdir(parents=True, exist_ok=True)
        (FIGURES / "monitoring.json").write_text(json.dumps(figures, indent=2) + "\n")
        print("\nmonitoring figures:", json.dumps(figures, indent=2))
    events = [e for e in client.list(Event, namespace=ns) if e.reason == "Drifted"]
    assert len(events) == 1 and "petal_length" in (events[0].message or "")
    table = kubectl("get", "md", "iris", "-n", ns, kubeconfig=operator.kubeconfig).stdout
    assert "DRIFT" in table.splitlines()[0]


def test_collection_keeps_every_answer_of_a_pod_deleted_under_traffic(
    node_client: Client,
    node_namespace: str,
    artifacts: dict[str, dict[str, Any]],
    operator: InClusterOperator,
) -> None:
    """At sample rate 1.0 the Parquet segments on the claim hold every request answered,
    those of a pod deleted in the middle of the traffic included (it writes what it
    buffered at SIGTERM, after its last answer), each row as it was sent."""
    import pyarrow.parquet as pq
    from lightkube.resources.core_v1 import Pod
    from sklearn.datasets import load_iris

    ns, client = node_namespace, node_client
    pvc = client.get(PersistentVolumeClaim, "orchard-artifacts", namespace=ns)
    assert pvc.spec is not None and pvc.spec.volumeName
    volume = client.get(PersistentVolume, pvc.spec.volumeName)
    assert volume.spec is not None and volume.spec.hostPath is not None
    root = Path(volume.spec.hostPath.path)
    root.chmod(0o777)  # host-path volumes ignore fsGroup; the pods' uid writes here
    collection = {"sampleRate": 1.0, "flushInterval": "5s",
                  "uri": "pvc://orchard-artifacts/collected/"}  # fmt: skip
    create_md(client, ns, "iris-v1", replicas=2,
              monitoring={"collection": collection, "interval": "3s"})  # fmt: skip
    wait_for("v1 to be stable with two pods", lambda: (lambda s: s.get("phase") == "Stable"
             and s.get("readyReplicas") == 2)(md_status(client, ns)), 240)  # fmt: skip
    ip = client.get(Service, "iris", namespace=ns).spec.clusterIP  # type: ignore[union-attr]
    wait_answering(ip)
    rows = [list(map(float, r)) for r in load_iris().data]
    traffic = Traffic(f"http://{ip}:8080/v2/models/iris/infer", rows, poison_share=0.0)
    traffic.start()
    try:
        time.sleep(4)
        pods = list(client.list(Pod, namespace=ns, labels={"orchard.dev/track": "stable"}))
        deleted = pods[0].metadata.name  # type: ignore[union-attr]
        client.delete(Pod, deleted, namespace=ns)  # graceful, as a rollout or a drain does
        time.sleep(6)
    finally:
        traffic.stop()
    answered = set(traffic.ids)
    directory = root / "collected" / ns / "iris" / "iris-v1" / "requests"

    def collected() -> set[str] | None:
        files = sorted(directory.glob("*.parquet")) if directory.is_dir() else []
        ids = {i for f in files for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()}
        return ids if answered <= ids else None

    wait_for("every answer to be collected", collected, 30)
    segments = sorted(directory.glob("*.parquet"))
    writers = {f.name.rsplit("-", 2)[0] for f in segments}
    assert deleted in writers, (deleted, writers)  # the deleted pod wrote its part
    assert len(answered) >= 100
    figures = {"answered": len(answered), "segments": len(segments), "writers": len(writers)}
    FIGURES.mkdir(parents=True, exist_ok=True)
    (FIGURES / "collection.json").write_text(json.dumps(figures, indent=2) + "\n")
    print("\ncollection figures:", json.dumps(figures))
    table = pq.read_table(segments[0]).to_pandas()
    assert {"id", "row", "time", "model_version", "prediction", *FEATURES} <= set(table.columns)
    assert set(table["model_version"]) == {"iris-v1"}
    assert table[FEATURES].to_numpy().tolist()[0] in rows
    where = wait_for("the place in status", lambda: (md_status(client, ns).get("monitoring")
                     or {}).get("collection"), 30)  # fmt: skip
    assert where == f"pvc://orchard-artifacts/collected/{ns}/iris/"
