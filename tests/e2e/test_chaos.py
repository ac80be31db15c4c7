"""Chaos on a real node: each fault ends in the right final state, with nothing lost.

One namespace and one operator (in the cluster, under its generated role) for the whole
module; four iris versions trained by TrainingJobs at its start serve every scenario:
  1. children deleted by hand: a training Job under way fails its TrainingJob at once
     (JobDeleted); a serving Deployment and a Service are made again and serve again;
  2. the operator killed: its pod deleted without grace in the middle of a training (one
     version registered, no second Job), its container SIGKILLed in the middle of a canary
     (the rollout is promoted when it is back, no child made twice);
  3. a trainer over its memory limit ends Failed with reason OutOfMemory;
  4. an artifact changed on the claim after registration: a new serving pod refuses it
     and the ModelDeployment's Ready condition says why;
  5. etcd and kube-apiserver restarted while two TrainingJobs train: both succeed, one
     version each; the kubelet restarted under a canary: the rollout is promoted;
  6. the operator uninstalled with every kind present: a version in use is let go with
     the annotation the README gives, the operator's clean stop releases the others, and
     every Orchard object and the namespace are deleted.
The restarts of 5 go through `python -m tests.cluster.harness restart`, so they run on the
local cluster only (elsewhere they are skipped). Figures are printed and written to
.cluster/figures/chaos.json.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import build_images, external_kubeconfig, install_crds, kubectl
from in_cluster import InClusterOperator
from lightkube import Client
from lightkube.resources.core_v1 import Namespace
from test_rollout import Traffic, condition, wait_for
from test_training import Cluster, namespace_with_claim

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
FIGURES = Path(os.environ.get("ORCHARD_CLUSTER_DIR", REPO / ".cluster")) / "figures"
CLAIM = "orchard-artifacts"
MD_LABEL = "orchard.dev/modeldeployment"
ROW = [5.1, 3.5, 1.4, 0.2]
STEPS = [{"weight": 50, "pause": "8s"}]
ANALYSIS = {"interval": "2s", "minRequests": 10}
SERVED = ("iris-a", "iris-b", "iris-c", "iris-d")  # TrainingJobs whose versions serve
figures: dict[str, Any] = {}


def iris_job(name: str, model: str = "iris", **spec: Any) -> dict[str, Any]:
    """A small, fast TrainingJob; the same rows and seed always give the same model, so
    each version passes the evaluation against another."""
    body: dict[str, Any] = {
        "model": model,
        "dataset": {"builtin": "iris"},
        "estimator": {"name": "LogisticRegression", "params": {"max_iter": 500}},
        "evaluation": {"testSize": 0.25, "randomState": 7},
        "artifacts": {"uri": f"pvc://{CLAIM}/models"},
        "activeDeadlineSeconds": 300,
    }
    body.update(spec)
    return {"apiVersion": "orchard.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": name}, "spec": body}  # fmt: skip


def model_deployment(name: str, version: str, replicas: int = 1) -> dict[str, Any]:
    return {"apiVersion": "orchard.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name},
            "spec": {"modelVersion": version, "replicas": replicas,
                     "canary": {"steps": STEPS, "analysis": ANALYSIS},
                     "monitoring": {"enabled": False}}}  # fmt: skip


@pytest.fixture(scope="module")
def setting(
    kubeconfig_node: Path, node_client: Client
) -> Iterator[tuple[Cluster, InClusterOperator]]:
    """A namespace with an artifact claim and the operator watching it; the TrainingJobs
    of the served versions are applied at once, to train while the first tests run."""
    if os.environ.get("ORCHARD_E2E_REUSE_IMAGES") != "1":
        build_images("server", "trainer", "operator")
    install_crds(kubeconfig_node)
    ns, storage = namespace_with_claim(node_client, "orchard-chaos")
    storage.chmod(0o777)  # pods run as uid 10001; host paths ignore fsGroup
    op = InClusterOperator(kubeconfig_node, ns, FIGURES / "logs")
    cluster = Cluster(kubeconfig_node, ns, storage)
    try:
        op.install()
        for name in SERVED:
            cluster.apply(iris_job(name))
        yield cluster, op
    finally:
        op.uninstall()
        with contextlib.suppress(Exception):  # the last test deletes it itself
            node_client.delete(Namespace, ns)
        FIGURES.mkdir(parents=True, exist_ok=True)
        (FIGURES / "chaos.json").write_text(json.dumps(figures, indent=2) + "\n")
        print("\nchaos figures:", json.dumps(figures, indent=2))
    misconduct = op.misconduct()
    assert not misconduct, "refused by its role, or writing a spec:\n" + "\n".join(misconduct)


@pytest.fixture(scope="module")
def cluster(setting: tuple[Cluster, InClusterOperator]) -> Cluster:
    return setting[0]


@pytest.fixture(scope="module")
def operator(setting: tuple[Cluster, InClusterOperator]) -> InClusterOperator:
    return setting[1]


@pytest.fixture(scope="module")
def versions(cluster: Cluster) -> dict[str, str]:
    """The Ready ModelVersion each of SERVED registered, by TrainingJob."""
    out = {}
    for name in SERVED:
        status = cluster.wait_phase("tj", name, {"Succeeded", "Failed"}, 240)
        assert status["phase"] == "Succeeded", status
        out[name] = status["modelVersion"]
    for version in out.values():
        assert cluster.wait_phase("mv", version, {"Ready", "Failed"}, 120)["phase"] == "Ready"
    return out


# --- helpers ------------------------------------------------------------------------------


def items(cluster: Cluster, kind: str, *args: str) -> list[dict[str, Any]]:
    return list(json.loads(cluster.kubectl("get", kind, *args, "-o", "json"))["items"])


def registered(cluster: Cluster, trainingjob: str) -> list[str]:
    """The ModelVersions a TrainingJob registered."""
    return sorted(
        mv["metadata"]["name"]
        for mv in items(cluster, "mv")
        if (mv["spec"].get("source") or {}).get("trainingJob") == trainingjob
    )


def trainer_running(cluster: Cluster, job: str) -> dict[str, Any] | None:
    """The trainer pod of a TrainingJob's Job once its container runs."""
    for pod in items(cluster, "pods", "-l", f"batch.kubernetes.io/job-name={job}"):
        for status in pod["status"].get("containerStatuses") or []:
            if "running" in (status.get("state") or {}):
                return pod
    return None


def ask(ip: str, model: str) -> str | None:
    """One V2 inference request through a Service (the model is served under its
    ModelDeployment's name); the version that answered."""
    body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
    with contextlib.suppress(httpx.HTTPError, ValueError):
        resp = httpx.post(f"http://{ip}:8080/v2/models/{model}/infer", json=body, timeout=2.0,
                          trust_env=False)  # fmt: skip
        if resp.status_code == 200:
            return str(resp.json()["model_version"])
    return None


def service_ip(cluster: Cluster, name: str) -> str:
    return str(cluster.get("svc", name)["spec"]["clusterIP"])


def serving(cluster: Cluster, md: str, version: str, timeout: float = 180) -> str:
    """Until the ModelDeployment is Stable on `version` with a ready pod and its Service
    answers a prediction from it; the Service's IP."""

    def answered() -> str | None:
        status = cluster.status("md", md)
        if status.get("phase") != "Stable" or status.get("stableVersion") != version:
            return None
        if condition(status, "Ready").get("status") != "True":
            return None
        with contextlib.suppress(AssertionError):
            ip = service_ip(cluster, md)
            return ip if ask(ip, md) == version else None
        return None

    return str(wait_for(f"{md} to serve {version}", answered, timeout))


def children(cluster: Cluster, md: str) -> dict[str, list[str]]:
    """The names of a ModelDeployment's Deployments and Services."""
    return {
        kind: sorted(o["metadata"]["name"] for o in items(cluster, kind, "-l", f"{MD_LABEL}={md}"))
        for kind in ("deployments", "services")
    }


def uid_of(cluster: Cluster, kind: str, name: str) -> str | None:
    """The uid of an object, None while there is none."""
    found = items(cluster, kind, f"--field-selector=metadata.name={name}")
    return str(found[0]["metadata"]["uid"]) if found else None


def restart(*components: str) -> float:
    """Restart cluster components with the harness; the seconds it took."""
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tests.cluster.harness", "restart", *components],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, f"restart {components} failed:\n{proc.stdout}{proc.stderr}"
    return round(time.monotonic() - start, 1)


local_only = pytest.mark.skipif(
    external_kubeconfig() is not None, reason="restarts the local cluster's own processes"
)


def roll_out(cluster: Cluster, md: str, version: str) -> None:
    cluster.kubectl("patch", "md", md, "--type=merge", "-p",
                    json.dumps({"spec": {"modelVersion": version}}))  # fmt: skip
    wait_for(f"{version}'s canary step to be analysed", lambda: (
        lambda s: s.get("canaryVersion") == version and s.get("currentStep") == 0
        and s.get("reason") == "Analysing")(cluster.status("md", md)), 180, every=0.3)  # fmt: skip


def promoted(cluster: Cluster, md: str, history: list[str], traffic: Traffic) -> float:
    """The rollout ended promoted, with no rollback, each child once, and only the new
    version answering; when the promotion was seen (monotonic)."""

    def concluded() -> dict[str, Any] | None:
        s = cluster.status("md", md)
        done = s.get("phase") == "Stable" and s.get("stableVersion") == history[-1]
        return s if done or s.get("phase") == "RolledBack" else None

    status = wait_for(f"the rollout of {history[-1]} to conclude", concluded, 180)
    seen = time.monotonic()
    assert (status["phase"], status["stableVersion"]) == ("Stable", history[-1]), status
    assert status.get("canaryVersion") is None and status.get("lastRollback") is None, status
    assert [h["version"] for h in status["history"]] == history, status["history"]
    assert children(cluster, md) == {  # each once: the weighted mode has no track Services
        "deployments": [f"{md}-canary", f"{md}-stable"],
        "services": [md, f"{md}-pods"],
    }
    assert cluster.get("deploy", f"{md}-canary")["spec"]["replicas"] == 0
    evaluations = [j["metadata"]["name"] for j in items(cluster, "jobs")
                   if j["metadata"]["name"].startswith(f"{md}-eval-")]  # fmt: skip
    assert len(evaluations) == len(history) - 1, evaluations  # one per candidate, never two
    time.sleep(6)  # the old pods leave the endpoints (kube-proxy syncs)
    last = traffic.since(time.monotonic() - 3)
    assert last and all(code == 200 and v == history[-1] for _, code, v in last), last[-5:]
    return seen


# --- 1. children deleted by hand -----------------------------------------------------------


def test_a_training_job_deleted_under_way_fails_its_trainingjob_at_once(cluster: Cluster) -> None:
    cluster.apply(iris_job("deleted", model="deleted"))
    wait_for("the trainer to run", lambda: trainer_running(cluster, "deleted"), 180, every=0.3)
    start = time.monotonic()
    cluster.kubectl("delete", "job", "deleted", "--wait=false")
    status = cluster.wait_phase("tj", "deleted", {"Succeeded", "Failed"}, 60)
    figures["job_deleted_to_failed_s"] = round(time.monotonic() - start, 1)
    assert (status["phase"], status["reason"]) == ("Failed", "JobDeleted"), status
    assert "the training Job deleted was deleted" in status["message"], status
    assert "modelVersion" not in status
    assert figures["job_deleted_to_failed_s"] < 20
    time.sleep(3)
    assert registered(cluster, "deleted") == []
    assert "Failed" in cluster.kubectl("get", "tj", "deleted")


def test_a_serving_deployment_and_service_deleted_by_hand_are_made_again(
    cluster: Cluster, versions: dict[str, str]
) -> None:
    version = versions["iris-a"]
    cluster.apply(model_deployment("by-hand", version))
    serving(cluster, "by-hand", version)
    before = children(cluster, "by-hand")
    assert before["deployments"] == ["by-hand-stable"], before

    uid = uid_of(cluster, "deploy", "by-hand-stable")
    start = time.monotonic()
    cluster.kubectl("delete", "deploy", "by-hand-stable", "--wait=true")
    made = lambda: uid_of(cluster, "deploy", "by-hand-stable") not in (None, uid)  # noqa: E731
    wait_for("the Deployment to be made again", made, 30)
    figures["deployment_deleted_to_made_again_s"] = round(time.monotonic() - start, 1)
    serving(cluster, "by-hand", version, timeout=120)
    figures["deployment_deleted_to_serving_s"] = round(time.monotonic() - start, 1)

    uid = uid_of(cluster, "svc", "by-hand")
    start = time.monotonic()
    cluster.kubectl("delete", "svc", "by-hand", "--wait=true")
    wait_for("the Service to be made again",
             lambda: uid_of(cluster, "svc", "by-hand") not in (None, uid), 30)  # fmt: skip
    figures["service_deleted_to_made_again_s"] = round(time.monotonic() - start, 1)
    serving(cluster, "by-hand", version, timeout=60)
    figures["service_deleted_to_serving_s"] = round(time.monotonic() - start, 1)
    assert children(cluster, "by-hand") == before


# --- 2. the operator killed ----------------------------------------------------------------


def test_the_operator_killed_mid_training_registers_one_version(
    cluster: Cluster, operator: InClusterOperator
) -> None:
    cluster.apply(iris_job("killed", model="killed"))
    wait_for("the trainer to run", lambda: trainer_running(cluster, "killed"), 180, every=0.3)
    assert cluster.status("tj", "killed").get("phase") in ("Pending", "Running")
    operator.kill()  # its pod, without grace, as a lost node would
    start = time.monotonic()
    operator.wait_ready()
    figures["operator_killed_to_ready_s"] = round(time.monotonic() - start, 1)
    status = cluster.wait_phase("tj", "killed", {"Succeeded", "Failed"}, 180)
    figures["operator_killed_to_training_succeeded_s"] = round(time.monotonic() - start, 1)
    assert status["phase"] == "Succeeded", status
    assert status["modelVersion"] == "killed-v1"
    assert cluster.wait_phase("mv", "killed-v1", {"Ready", "Failed"}, 120)["phase"] == "Ready"
    time.sleep(3)
    assert registered(cluster, "killed") == ["killed-v1"]
    pods = items(cluster, "pods", "-l", "batch.kubernetes.io/job-name=killed")
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]  # trained once


def test_the_operator_killed_mid_rollout_promotes_it_when_back(
    cluster: Cluster, operator: InClusterOperator, versions: dict[str, str]
) -> None:
    first, second = versions["iris-a"], versions["iris-b"]
    cluster.apply(model_deployment("iris", first, replicas=2))
    ip = serving(cluster, "iris", first)
    traffic = Traffic(f"http://{ip}:8080/v2/models/iris/infer", [ROW], poison_share=0.0)
    traffic.start()
    try:
        roll_out(cluster, "iris", second)
        start = time.monotonic()
        operator.kill_container()
        figures["operator_sigkilled_to_ready_s"] = round(time.monotonic() - start, 1)
        seen = promoted(cluster, "iris", [first, second], traffic)
        figures["operator_sigkilled_to_promoted_s"] = round(seen - start, 1)
    finally:
        traffic.stop()


# --- 3. a trainer over its memory limit ------------------------------------------------------


def test_a_trainer_over_its_memory_limit_fails_with_out_of_memory(cluster: Cluster) -> None:
    # Importing pandas and scikit-learn alone takes more than 100 MiB: the kernel kills the
    # trainer in its first seconds, every time.
    resources = {"requests": {"cpu": "100m", "memory": "64Mi"},
                 "limits": {"cpu": "1", "memory": "100Mi"}}  # fmt: skip
    cluster.apply(iris_job("oom", model="oom", dataset={"builtin": "digits"},
                           estimator={"name": "RandomForestClassifier",
                                      "params": {"n_estimators": 500}},
                           resources=resources))  # fmt: skip
    start = time.monotonic()
    status = cluster.wait_phase("tj", "oom", {"Succeeded", "Failed"}, 180)
    figures["oom_apply_to_failed_s"] = round(time.monotonic() - start, 1)
    assert (status["phase"], status["reason"]) == ("Failed", "OutOfMemory"), status
    assert "spec.resources.limits.memory" in status["message"]
    assert "modelVersion" not in status and registered(cluster, "oom") == []
    pod = items(cluster, "pods", "-l", "batch.kubernetes.io/job-name=oom")[0]
    container = pod["spec"]["containers"][0]
    assert container["resources"]["limits"]["memory"] == "100Mi"
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled", terminated
    assert "OutOfMemory" in cluster.kubectl("get", "tj", "oom")


# --- 4. an artifact changed after registration -----------------------------------------------


def test_a_tampered_artifact_is_refused_and_the_deployment_says_why(
    cluster: Cluster, versions: dict[str, str]
) -> None:
    version = versions["iris-d"]
    cluster.apply(model_deployment("tamper", version))
    serving(cluster, "tamper", version)
    uri = cluster.get("mv", version)["spec"]["artifact"]["uri"]
    model = cluster.storage / uri.removeprefix(f"pvc://{CLAIM}/") / "model.joblib"
    with model.open("ab") as out:  # one byte more, on the claim itself
        out.write(b"\0")
    old = [p["metadata"]["name"] for p in items(cluster, "pods", "-l", f"{MD_LABEL}=tamper")]
    cluster.kubectl("delete", "pod", *old, "--wait=false")
    start = time.monotonic()

    def refused() -> dict[str, Any] | None:
        ready = condition(cluster.status("md", "tamper"), "Ready")
        return ready if ready.get("reason") == "ArtifactRefused" else None

    ready = wait_for("the refusal to reach status", refused, 120)
    figures["tampered_pod_deleted_to_condition_s"] = round(time.monotonic() - start, 1)
    assert ready["status"] == "False", ready
    assert "model.joblib has digest" in ready["message"], ready
    assert "refusing the artifact" in ready["message"], ready
    pods = [p for p in items(cluster, "pods", "-l", f"{MD_LABEL}=tamper")
            if p["metadata"]["name"] not in old]  # fmt: skip
    assert pods, "no new serving pod"
    statuses = pods[0]["status"]["containerStatuses"][0]
    ended = statuses.get("lastState", {}).get("terminated") or statuses["state"].get("terminated")
    assert ended is not None and ended["exitCode"] == 2, statuses
    assert not statuses.get("ready")
    ip = service_ip(cluster, "tamper")  # nothing serves the changed model
    wait_for("the Service to answer no more", lambda: ask(ip, "tamper") is None, 30)


# --- 5. the cluster's own components restarted ----------------------------------------------


@local_only
def test_etcd_and_the_api_server_restarted_while_trainings_run(cluster: Cluster) -> None:
    # An iris fit is over in about two seconds, before a restart could land in it; 400
    # boosting rounds on digits keep each trainer busy for tens of seconds.
    names = ("restart-a", "restart-b")
    slow = {"dataset": {"builtin": "digits"},
            "estimator": {"name": "GradientBoostingClassifier",
                          "params": {"n_estimators": 400}}}  # fmt: skip
    for name in names:
        cluster.apply(iris_job(name, model="restart", **slow))
    wait_for("both trainers to run at once",
             lambda: all(trainer_running(cluster, n) for n in names), 180, every=0.3)  # fmt: skip
    figures["etcd_and_apiserver_restart_s"] = restart("etcd", "kube-apiserver")
    start = time.monotonic()
    for name in names:
        status = cluster.wait_phase("tj", name, {"Succeeded", "Failed"}, 180)
        assert status["phase"] == "Succeeded", status
    figures["apiserver_back_to_trainings_succeeded_s"] = round(time.monotonic() - start, 1)
    time.sleep(3)
    got = [registered(cluster, name) for name in names]
    assert sorted(v for vs in got for v in vs) == ["restart-v1", "restart-v2"], got
    assert all(len(vs) == 1 for vs in got), got
    for version in ("restart-v1", "restart-v2"):
        assert cluster.wait_phase("mv", version, {"Ready", "Failed"}, 120)["phase"] == "Ready"


@local_only
def test_the_kubelet_restarted_under_a_canary_is_promoted(
    cluster: Cluster, versions: dict[str, str]
) -> None:
    history = [versions["iris-a"], versions["iris-b"], versions["iris-c"]]
    status = cluster.status("md", "iris")
    if status.get("stableVersion") != history[1]:
        pytest.skip("needs the promotion of test_the_operator_killed_mid_rollout...")
    ip = serving(cluster, "iris", history[1])
    traffic = Traffic(f"http://{ip}:8080/v2/models/iris/infer", [ROW], poison_share=0.0)
    traffic.start()
    try:
        roll_out(cluster, "iris", history[2])
        start = time.monotonic()
        figures["kubelet_restart_s"] = restart("kubelet")
        seen = promoted(cluster, "iris", history, traffic)
        figures["kubelet_restarted_to_promoted_s"] = round(seen - start, 1)
    finally:
        traffic.stop()


# --- 6. the operator uninstalled ---------------------------------------------------------------


def test_with_the_operator_uninstalled_every_orchard_object_is_deletable(
    cluster: Cluster, operator: InClusterOperator, node_client: Client
) -> None:
    mvs = {mv["metadata"]["name"]: mv for mv in items(cluster, "mv")}
    held = sorted(n for n, mv in mvs.items() if "orchard.dev/finalizer"
                  in (mv["metadata"].get("finalizers") or []))  # fmt: skip
    used = {n: mv["status"].get("usedBy") for n, mv in mvs.items() if n in held}
    assert len(held) >= 2 and all(used.values()), used
    assert items(cluster, "tj") and items(cluster, "md")

    # A version in use, deleted while the operator runs, waits; the annotation lets it go.
    version = held[0]
    cluster.kubectl("delete", "mv", version, "--wait=false")
    time.sleep(3)
    blocked = cluster.get("mv", version)
    assert blocked["metadata"].get("deletionTimestamp"), blocked["metadata"]
    assert condition(blocked["status"], "DeletionBlocked").get("reason") == "InUse"
    start = time.monotonic()
    cluster.kubectl("annotate", "mv", version, "orchard.dev/allow-deletion=true")
    cluster.kubectl("wait", "--for=delete", f"mv/{version}", "--timeout=60s")
    figures["annotated_in_use_version_deleted_s"] = round(time.monotonic() - start, 1)

    # The operator uninstalled: its clean stop takes the guard off the versions in use.
    start = time.monotonic()
    operator.stop()
    figures["operator_stopped_s"] = round(time.monotonic() - start, 1)
    left = [n for n in held[1:] if "orchard.dev/finalizer"
            in (cluster.get("mv", n)["metadata"].get("finalizers") or [])]  # fmt: skip
    assert not left, f"still guarded with the operator gone: {left}"
    kubectl("delete", "--ignore-not-found", f"clusterrolebinding/orchard-{cluster.namespace}",
            f"clusterrole/orchard-{cluster.namespace}", kubeconfig=cluster.kubeconfig)  # fmt: skip

    start = time.monotonic()
    cluster.kubectl("delete", "md,mv,tj", "--all", "--timeout=60s")
    assert cluster.kubectl("get", "md,mv,tj", "-o", "name").strip() == ""
    figures["orchard_objects_deleted_s"] = round(time.monotonic() - start, 1)
    start = time.monotonic()
    node_client.delete(Namespace, cluster.namespace)
    kubectl("wait", "--for=delete", f"namespace/{cluster.namespace}", "--timeout=120s",
            kubeconfig=cluster.kubeconfig, timeout=150)  # fmt: skip
    figures["namespace_deleted_s"] = round(time.monotonic() - start, 1)
