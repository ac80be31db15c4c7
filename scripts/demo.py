"""Orchard's main job, end to end, on the cluster KUBECONFIG names (`make demo` starts
the local one, builds the images and then runs this).

1. install Orchard from its manifests (`kubectl apply -k manifests/overlays/local`);
2. train iris with the sample TrainingJob: a real pod trains, the artifact lands on a
   PVC, and ModelVersion iris-v1 is registered and verified;
3. serve it with the sample ModelDeployment and ask it for predictions over HTTP, and
   for the class probabilities (a requested output);
4. train a second version (iris-v2) and roll it out as a canary under live traffic:
   the operator scores it against iris-v1 on the same rows (an evaluation Job), walks
   the steps, analyses each one and promotes it;
5. watch the promoted version in production: traffic from the data's own distribution
   is no drift (DriftDetected False); the same traffic with petal_length moved by 3 cm is
   DriftDetected True, naming that input; the requests it served are collected as
   Parquet segments on the artifact claim;
6. a second deployment follows model iris instead of naming a version and retrains
   itself: production drifts (petal_length 3 cm longer, with true labels as feedback),
   DriftDetected or AccuracyDegraded starts a TrainingJob on the collected rows, the
   new version is scored against the one serving on the same rows, rolled out (its
   quiet canary steps judged on replayed rows) and promoted, and the spec's generation
   never moves;
7. show that a spec asking for an image the admin's policy does not allow is refused,
   with the rule named, before any pod exists;
8. show `kubectl get orchard`, and the health Argo CD gives each object (its own code,
   the argocd CLI, with manifests/argocd/argocd-cm.yaml).

Every step uses kubectl, as a person would; the script only waits and prints.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "ml"
SAMPLES = REPO / "manifests" / "samples"
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
ROW = dict(zip(FEATURES, (6.1, 2.8, 4.7, 1.2), strict=True))

SECOND_TRAINING = {
    "apiVersion": "orchard.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "iris-gb", "namespace": NAMESPACE},
    "spec": {
        "model": "iris",
        "dataset": {"builtin": "iris", "checks": {"minRows": 100}},
        "estimator": {"name": "GradientBoostingClassifier", "params": {"n_estimators": 50}},
        "evaluation": {"testSize": 0.25, "randomState": 42},
        "gate": {"metric": "accuracy", "min": 0.8},
        "artifacts": {"uri": "pvc://orchard-artifacts/"},
    },
}

started = time.monotonic()


def say(message: str) -> None:
    print(f"[{time.monotonic() - started:6.1f}s] {message}", flush=True)


def kubectl(*args: str, stdin: str | None = None, check: bool = True) -> str:
    result = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed:\n{result.stderr.strip()}")
    return result.stdout


def get(kind: str, name: str) -> dict[str, Any]:
    out = kubectl("get", kind, name, "-n", NAMESPACE, "-o", "json", check=False)
    return json.loads(out) if out else {}


def wait_for(what: str, check: Any, timeout: float = 300.0, every: float = 2.0) -> Any:
    """Poll `check()` until it returns something truthy; fail with what was awaited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(every)
    kubectl_get = kubectl("get", "orchard,pods", "-n", NAMESPACE, check=False)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}\n{kubectl_get}")


def phase(kind: str, name: str) -> str:
    return str(get(kind, name).get("status", {}).get("phase", ""))


def install() -> None:
    say("installing Orchard: kubectl apply -k manifests/overlays/local")
    kubectl("apply", "--server-side", "-k", str(REPO / "manifests" / "overlays" / "local"))
    kubectl(
        "rollout", "status", "-n", "orchard-system", "deployment/orchard-operator", "--timeout=180s"
    )
    say(f"starting from an empty namespace {NAMESPACE}")
    kubectl("delete", "namespace", NAMESPACE, "--ignore-not-found", "--timeout=180s")
    kubectl("create", "namespace", NAMESPACE)


def prepare_artifact_volume() -> None:
    """The sample PVC; on the local cluster's host-path volumes, open it to the pods' uid."""
    kubectl("apply", "-n", NAMESPACE, "-f", str(SAMPLES / "artifacts-pvc.yaml"))
    volume = wait_for(
        "the artifact PVC to bind",
        lambda: get("pvc", "orchard-artifacts").get("spec", {}).get("volumeName"),
    )
    host_path = json.loads(kubectl("get", "pv", volume, "-o", "json"))["spec"].get("hostPath")
    if host_path and Path(host_path["path"]).is_dir():
        Path(host_path["path"]).chmod(0o777)  # host-path volumes ignore fsGroup


def train(manifest: Path | None, obj: dict[str, Any] | None, name: str) -> str:
    if manifest is not None:
        kubectl("apply", "-n", NAMESPACE, "-f", str(manifest))
    else:
        kubectl("apply", "-f", "-", stdin=json.dumps(obj))
    say(f"TrainingJob {name}: a pod trains the model")
    done = wait_for(
        f"TrainingJob {name} to finish", lambda: phase("tj", name) in ("Succeeded", "Failed")
    )
    status = get("tj", name)["status"]
    if not done or status.get("phase") != "Succeeded":
        raise SystemExit(
            f"TrainingJob {name} failed: {status.get('reason')}: {status.get('message')}"
        )
    version = str(status["modelVersion"])
    say(f"TrainingJob {name} succeeded: metrics {status.get('metrics')}; registered {version}")
    wait_for(f"ModelVersion {version} to be verified", lambda: phase("mv", version) == "Ready")
    runtime = get("mv", version).get("status", {}).get("runtime") or {}
    say(f"ModelVersion {version} is Ready (artifact digest verified); servers will answer "
        f"through {runtime.get('name', '?')}: {runtime.get('reason', '')}")  # fmt: skip
    return version


def answer(
    url: str, row: dict[str, float], model: str = "iris", outputs: tuple[str, ...] = ()
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {"name": n, "shape": [1], "datatype": "FP64", "data": [v]} for n, v in row.items()
        ]
    }
    if outputs:
        body["outputs"] = [{"name": name} for name in outputs]
    response = httpx.post(f"{url}/v2/models/{model}/infer", json=body, timeout=5)
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def predict(url: str, row: dict[str, float] = ROW, model: str = "iris") -> str:
    return str(answer(url, row, model)["outputs"][0]["data"][0])


def iris_rows(petal_shift: float = 0.0) -> list[dict[str, float]]:
    """The iris rows, as production would send them (petal_length moved, if asked)."""
    from sklearn.datasets import load_iris

    rows = [dict(zip(FEATURES, map(float, r), strict=True)) for r in load_iris().data]
    return [r | {"petal_length": r["petal_length"] + petal_shift} for r in rows]


class Traffic(threading.Thread):
    """Steady prediction traffic of iris rows, so the canary analysis has requests to
    judge and monitoring has rows to count."""

    def __init__(self, url: str, rows: list[dict[str, float]], model: str = "iris") -> None:
        super().__init__(daemon=True)
        self.url, self.rows, self.model = url, rows, model
        self.stop, self.answers = threading.Event(), Counter[str]()

    def run(self) -> None:
        turn = 0
        while not self.stop.is_set():
            turn += 1
            try:
                row = self.rows[turn * 7 % len(self.rows)]
                self.answers[predict(self.url, row, self.model)] += 1
            except httpx.HTTPError as error:
                self.answers[f"error: {type(error).__name__}"] += 1
            time.sleep(0.05)


def refused_by_policy() -> None:
    """A namespace user's TrainingJob names an image of its own: the policy refuses it."""
    foreign = json.loads(json.dumps(SECOND_TRAINING))
    foreign["metadata"]["name"] = "iris-own-image"
    foreign["spec"]["image"] = "example.invalid/someone/trainer:latest"
    kubectl("apply", "-f", "-", stdin=json.dumps(foreign))
    wait_for("the policy's verdict", lambda: phase("tj", "iris-own-image") == "Failed", 60, 1)
    status = get("tj", "iris-own-image")["status"]
    pods = kubectl("get", "pods", "-n", NAMESPACE, "-l", "orchard.dev/trainingjob=iris-own-image",
                   "-o", "name")  # fmt: skip
    say(f"TrainingJob with its own image: {status['reason']}: {status['message']}")
    say(f"pods made for it: {len(pods.split())}")


def drift_condition() -> dict[str, Any]:
    status = get("md", "iris").get("status", {})
    return next((c for c in status.get("conditions", []) if c["type"] == "DriftDetected"), {})


def watch_drift(url: str, version: str, traffic: Traffic) -> None:
    """The promoted version is watched against its training baseline (spec.monitoring)."""

    def judged(verdict: str) -> bool:
        cond = drift_condition()
        return cond.get("status") == verdict and version in str(
            get("md", "iris").get("status", {}).get("monitoring", {}).get("version")
        )

    wait_for("in-distribution traffic to be judged", lambda: judged("False"), 180, 2)
    say(f"monitoring {version}, iris rows: DriftDetected False: {drift_condition()['message']}")
    traffic.stop.set()
    traffic.join()
    shifted = Traffic(url, iris_rows(petal_shift=3.0))
    shifted.start()
    say("the same traffic with petal_length 3 cm longer")
    wait_for("the shifted input to be detected", lambda: judged("True"), 180, 2)
    shifted.stop.set()
    shifted.join()
    say(f"DriftDetected True: {drift_condition()['message']}")
    show_collected(version)


COUNT_COLLECTED = """
import glob, sys
import pyarrow.parquet as pq
files = glob.glob(sys.argv[1] + "/requests/*.parquet")
print(len(files), sum(pq.read_metadata(f).num_rows for f in files))
"""


def show_collected(version: str) -> None:
    """What a serving pod wrote for retraining (read inside the pod: any cluster)."""
    where = get("md", "iris").get("status", {}).get("monitoring", {}).get("collection")

    def counted() -> tuple[int, int] | None:
        out = kubectl("exec", "-n", NAMESPACE, "deploy/iris-stable", "--", "python", "-c",
                      COUNT_COLLECTED, f"/var/run/orchard/collected/{version}")  # fmt: skip
        segments, rows = (int(x) for x in out.split())
        return (segments, rows) if rows else None

    segments, rows = wait_for("the first collected segments", counted, 60, 3)
    say(f"collected for retraining under {where}{version}/: {rows} rows in {segments} segments")


def improve_by_itself() -> None:
    """A deployment that follows the model and retrains itself (docs/improvement.md):
    production drifts, its labelled rows train a new version, which is judged against the
    one serving on the same rows and rolled out, with no one editing the spec."""
    from sklearn.datasets import load_iris

    name = "iris-tracked"
    kubectl("apply", "-n", NAMESPACE, "-f", str(SAMPLES / "modeldeployment-tracking.yaml"))
    say(f"ModelDeployment {name}: follows model iris (spec.track), retrains itself")

    def status() -> dict[str, Any]:
        return dict(get("md", name).get("status", {}))

    wait_for(f"{name} to serve", lambda: status().get("phase") == "Stable", 300)
    first = status()["stableVersion"]
    generation = get("md", name)["metadata"]["generation"]
    say(f"{name} selected and serves {first}; metadata.generation {generation}")
    url = f"http://{get('svc', name)['spec']['clusterIP']}:8080"
    shifted = iris_rows(petal_shift=3.0)
    truth = [str(load_iris().target_names[t]) for t in load_iris().target]
    for row, label in zip(shifted, truth, strict=True):  # production drifts; labels follow
        given = answer(url, row, name)
        httpx.post(f"{url}/v2/models/{name}/feedback", json={"id": given["id"],
                   "labels": [label]}, timeout=5).raise_for_status()  # fmt: skip
    say(f"sent {len(shifted)} rows with petal_length 3 cm longer, and their true labels")
    traffic = Traffic(url, shifted, name)
    traffic.start()
    started = wait_for("a retraining to start", lambda: (status().get("retraining") or {})
                       .get("trainingJob"), 300)  # fmt: skip
    traffic.stop.set()
    traffic.join()
    retraining = status()["retraining"]
    say(f"{retraining['lastTrigger']['type']} → TrainingJob {started}: {retraining['message']}")
    new = wait_for("the retraining to register a version", lambda: (status().get("retraining")
                   or {}).get("modelVersion"), 420)  # fmt: skip
    source = get("mv", new)["spec"]["source"]
    say(f"registered {new}: trigger {source.get('trigger')}, parent {source.get('parent')}, "
        f"{source['dataset'].get('collected', {}).get('rows')} collected rows added")  # fmt: skip
    wait_for(f"{new} to be promoted", lambda: status().get("stableVersion") == new
             and status().get("phase") == "Stable", 600)  # fmt: skip
    done = status()
    evaluation, replay = done.get("evaluation") or {}, done.get("replay") or {}
    say(f"{new} promoted: {evaluation.get('message')}; quiet canary steps judged on "
        f"{replay.get('rows')} replayed rows")  # fmt: skip
    say(
        f"metadata.generation still {get('md', name)['metadata']['generation']}: no one "
        "edited the spec"
    )


def argocd_view() -> None:
    """What Argo CD shows of each Orchard object: its own health check code (the argocd
    CLI built by `make argocd`) run on the live objects with manifests/argocd/argocd-cm.yaml."""
    sys.path.insert(0, str(REPO))
    from tests.cluster.harness.common import build_dir

    cli = build_dir("argocd") / "argocd"
    say("what Argo CD shows of them (argocd admin settings resource-overrides health):")
    listed = json.loads(kubectl("get", "orchard", "-n", NAMESPACE, "-o", "json"))["items"]
    with tempfile.TemporaryDirectory() as tmp:
        for obj in listed:
            path = Path(tmp) / "object.json"
            path.write_text(json.dumps(obj))
            out = subprocess.run(
                [str(cli), "admin", "settings", "resource-overrides", "health", str(path),
                 "--argocd-cm-path", str(REPO / "manifests" / "argocd" / "argocd-cm.yaml")],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
            name = f"{obj['kind']}/{obj['metadata']['name']}"
            say(f"  {name:32s} {fields.get('STATUS', '?'):12s} {fields.get('MESSAGE', '')}")


def main() -> int:
    install()
    prepare_artifact_volume()
    v1 = train(SAMPLES / "trainingjob.yaml", None, "iris")

    say("ModelDeployment iris: serving " + v1)
    kubectl("apply", "-n", NAMESPACE, "-f", str(SAMPLES / "modeldeployment.yaml"))
    wait_for("ModelDeployment iris to be Stable", lambda: phase("md", "iris") == "Stable")
    service_ip = get("svc", "iris")["spec"]["clusterIP"]
    url = f"http://{service_ip}:8080"
    say(f"predict through the Service {url}: {ROW} -> {predict(url)}")
    probabilities = answer(url, ROW, outputs=("predict_proba",))["outputs"][0]
    chances = dict(zip(probabilities["parameters"]["classes"], probabilities["data"], strict=True))
    say("asked for predict_proba (Open Inference Protocol requested outputs): "
        + ", ".join(f"{label} {p:.3f}" for label, p in chances.items()))  # fmt: skip

    v2 = train(None, SECOND_TRAINING, "iris-gb")
    traffic = Traffic(url, iris_rows())
    traffic.start()
    say(f"rolling out {v2} as a canary under live traffic")
    patch = json.dumps({"spec": {"modelVersion": v2}})
    kubectl("patch", "md", "iris", "-n", NAMESPACE, "--type=merge", "-p", patch)
    seen = ""

    def promoted() -> bool:
        nonlocal seen
        status = get("md", "iris").get("status", {})
        weight = status.get("canaryWeight") or {}
        line = (
            f"phase {status.get('phase')}, stable {status.get('stableVersion')}, "
            f"canary {status.get('canaryVersion')}, weight desired {weight.get('desired')} "
            f"effective {weight.get('effective')}"
        )
        if line != seen:
            say(line)
            seen = line
        if status.get("phase") in ("RolledBack", "Degraded"):
            raise SystemExit(f"the rollout was aborted: {status.get('lastRollback')}")
        return bool(status.get("phase") == "Stable" and status.get("stableVersion") == v2)

    wait_for(f"{v2} to be promoted", promoted, timeout=420, every=1)
    say(f"{v2} promoted; answers during the rollout: {dict(traffic.answers)}")
    evaluation = get("md", "iris").get("status", {}).get("evaluation") or {}
    say(f"before any traffic moved, {evaluation.get('candidate')} was scored against "
        f"{evaluation.get('baseline')} on the same {evaluation.get('rows')} rows: "
        f"{evaluation.get('verdict')}, {evaluation.get('message')}")  # fmt: skip
    watch_drift(url, v2, traffic)
    improve_by_itself()
    refused_by_policy()
    print(kubectl("get", "orchard", "-n", NAMESPACE))
    argocd_view()
    return 0


if __name__ == "__main__":
    sys.exit(main())
