"""The ModelDeployment controller's I/O layer (read → decide → ensure → write status)
against an in-memory `orchard.kube` (tests/unit/fake_kube.py).

What is real: the handler code, the pure decisions and builders, and, for the canary's
window, HTTP to a loopback server that answers /metrics with the model server's own
exposition. What is not: the API server (the api and e2e tiers run the same code
against a real one).
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from pathlib import Path
from typing import Any

import kopf
import pytest
from fake_kube import VERBS, FakeKube
from fake_pods import MetricsPods, serving_pods_fixture  # noqa: F401 (a fixture)

from orchard import kube
from orchard.handlers import modeldeployment as h
from orchard.handlers import usage
from orchard.handlers.watched import Latest

NS = "ml"
log = logging.getLogger("test")


def version(name: str, number: int, accuracy: float = 0.95, uri: str = "") -> dict[str, Any]:
    return {
        "apiVersion": kube.API_VERSION,
        "kind": "ModelVersion",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "model": "iris",
            "version": number,
            "task": "classification",
            "artifact": {
                "uri": uri or f"pvc://orchard-models/iris/{number}",
                "digest": "sha256:" + "0" * 64,
            },
            "framework": {"name": "scikit-learn", "version": "1.9.1"},
            "metrics": {"accuracy": accuracy},
        },
        "status": {"phase": "Ready"},
    }


def deployment(model_version: str = "iris-v1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": kube.API_VERSION,
        "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": NS},
        "spec": {"modelVersion": model_version, "replicas": 2, **spec},
    }


def pod(name: str, track: str, version: str, ip: str = "10.0.0.1") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "orchard.dev/modeldeployment": "iris",
                "orchard.dev/track": track,
                "orchard.dev/model-version": version,
            },
        },
        "status": {
            "podIP": ip,
            "conditions": [
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:00Z"}
            ],
        },
    }


@pytest.fixture
def cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeKube:
    monkeypatch.setenv("ORCHARD_POLICY_FILE", str(tmp_path / "no-policy.yaml"))  # defaults
    fresh = usage.Usage()  # the index of who uses which version, empty for each test
    monkeypatch.setattr(usage, "usage", fresh)
    monkeypatch.setattr(h, "usage", fresh)
    monkeypatch.setattr(h, "_replica_counts", {})  # no serving Deployment seen yet
    monkeypatch.setattr(usage, "versions_seen", Latest())  # nor any ModelVersion
    fake = FakeKube().install(monkeypatch)
    fake.add(version("iris-v1", 1))
    return fake


def evaluation_pod(
    job: dict[str, Any], report: dict[str, Any], exit_code: int = 0
) -> dict[str, Any]:
    """The evaluation Job's pod, ended with `orchard evaluate`'s report."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": job["metadata"]["name"] + "-x",
            "namespace": NS,
            "labels": {"batch.kubernetes.io/controller-uid": job["metadata"]["uid"]},
        },
        "status": {
            "phase": "Succeeded" if exit_code == 0 else "Failed",
            "containerStatuses": [
                {
                    "name": "evaluate",
                    "state": {"terminated": {"exitCode": exit_code, "message": json.dumps(report)}},
                }
            ],
        },
    }


def scored(candidate: float, baseline: float, rows: int = 180) -> dict[str, Any]:
    return {
        "rows": rows,
        "heldoutRows": 30,
        "productionRows": rows - 30,
        "datasetDigest": "sha256:" + "1" * 64,
        "metric": "accuracy",
        "candidate": {"accuracy": candidate},
        "baseline": {"accuracy": baseline},
    }


async def evaluate(cluster: FakeKube, report: dict[str, Any], exit_code: int = 0) -> dict[str, Any]:
    """Let the evaluation Job the last tick asked for end with `report`; one more tick."""
    jobs = [o for (_, kind, _, _), o in cluster.objects.items() if kind == "Job"]
    assert len(jobs) == 1, jobs
    job = jobs[0]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == ["orchard", "evaluate"]
    job["status"] = {"startTime": "2026-12-01T12:00:00Z"}  # as the Job controller writes
    cluster.add(evaluation_pod(job, report, exit_code))
    return await reconcile()


async def reconcile() -> dict[str, Any]:
    """One step, and the watch event of the status it wrote (for usedBy)."""
    await h.reconcile(NS, "iris", log)  # type: ignore[arg-type]
    body = await kube.get(kube.API_VERSION, "ModelDeployment", "iris", NS) or {}
    await h.note_usage(NS, "iris", body, log)  # type: ignore[arg-type]
    return dict(body["status"])


def test_the_fake_has_the_real_verbs() -> None:
    for verb in (*VERBS, "post_event"):
        real, fake = (
            inspect.signature(getattr(kube, verb)),
            inspect.signature(getattr(FakeKube, verb)),
        )
        assert list(fake.parameters)[1:] == list(real.parameters), verb


async def test_a_first_version_gets_its_deployment_services_and_users(cluster: FakeKube) -> None:
    cluster.add(deployment())
    status = await reconcile()
    assert (status["phase"], status["reason"], status["stableVersion"]) == (
        "Pending",
        "Deploying",
        "iris-v1",
    )
    stable = cluster.find("Deployment", "iris-stable")
    assert stable is not None and stable["spec"]["replicas"] == 2
    owner = stable["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ModelDeployment", "iris")
    assert cluster.find("Service", "iris") is not None
    assert cluster.find("Deployment", "iris-canary") is None
    assert cluster.reasons() == ["Deploying"]
    assert cluster.find("ModelVersion", "iris-v1")["status"]["usedBy"] == ["iris"]  # type: ignore[index]

    cluster.add(pod("iris-stable-a", "stable", "iris-v1"))
    status = await reconcile()
    assert (status["phase"], status["readyReplicas"]) == ("Stable", 1)
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "Serving")
    assert status["observedGeneration"] == 1

    writes = len(cluster.writes)
    await reconcile()  # nothing changed: children re-applied, no status patch, no event
    assert ("patch_status", "ModelDeployment", "iris") not in cluster.writes[writes:]
    assert cluster.reasons() == ["Deploying"]


async def test_a_new_version_starts_a_canary_beside_the_stable(cluster: FakeKube) -> None:
    cluster.add(deployment())
    cluster.add(pod("iris-stable-a", "stable", "iris-v1"))
    await reconcile()
    await reconcile()
    cluster.add(version("iris-v2", 2, accuracy=0.96))
    body = cluster.find("ModelDeployment", "iris")
    assert body is not None
    await kube.merge_patch(
        kube.API_VERSION, "ModelDeployment", "iris", NS, {"spec": {"modelVersion": "iris-v2"}}
    )
    status = await reconcile()
    assert (status["phase"], status["reason"], status["canaryVersion"]) == (
        "Progressing",
        "Evaluating",
        "iris-v2",
    )
    canary = cluster.find("Deployment", "iris-canary")
    assert canary is None or canary["spec"]["replicas"] == 0  # no pod before the verdict
    status = await evaluate(cluster, scored(0.96, 0.95))
    assert (status["phase"], status["canaryVersion"], status["currentStep"]) == (
        "Progressing",
        "iris-v2",
        0,
    )
    assert status["evaluation"]["verdict"] == "Pass" and status["evaluation"]["rows"] == 180
    assert cluster.reasons()[-4:] == [
        "RolloutStarted", "Evaluating", "EvaluationPassed", "StepStarted"
    ]  # fmt: skip
    record = cluster.find("ModelVersion", "iris-v2")["status"]["evaluations"]  # type: ignore[index]
    assert [(r["against"], r["verdict"], r["value"]) for r in record] == [("iris-v1", "Pass", 0.96)]
    canary = cluster.find("Deployment", "iris-canary")
    assert canary is not None and canary["spec"]["replicas"] >= 1
    users = cluster.find("ModelVersion", "iris-v2")["status"]["usedBy"]  # type: ignore[index]
    assert users == ["iris"]


async def test_worse_on_the_same_rows_is_rolled_back_before_any_traffic(
    cluster: FakeKube,
) -> None:
    cluster.add(deployment())
    cluster.add(pod("iris-stable-a", "stable", "iris-v1"))
    await reconcile()
    cluster.add(version("iris-v2", 2, accuracy=0.99))  # registered on another test set
    await kube.merge_patch(
        kube.API_VERSION, "ModelDeployment", "iris", NS, {"spec": {"modelVersion": "iris-v2"}}
    )
    await reconcile()
    status = await evaluate(cluster, scored(0.50, 0.95))
    assert (status["phase"], status["reason"]) == ("RolledBack", "MetricDrop")
    assert status["lastRollback"]["metrics"]["candidate"] == 0.5
    assert "on the same 180 rows" in status["message"], status["message"]
    canary = cluster.find("Deployment", "iris-canary")
    assert canary is None or canary["spec"]["replicas"] == 0  # no pod was ever asked for


async def test_a_failed_evaluation_falls_back_to_the_registered_metrics(
    cluster: FakeKube,
) -> None:
    cluster.add(deployment())
    cluster.add(pod("iris-stable-a", "stable", "iris-v1"))
    await reconcile()
    cluster.add(version("iris-v2", 2, accuracy=0.50))
    await kube.merge_patch(
        kube.API_VERSION, "ModelDeployment", "iris", NS, {"spec": {"modelVersion": "iris-v2"}}
    )
    await reconcile()
    failure = {"error": {"reason": "NoEvaluationRows", "message": "no held-out rows"}}
    status = await evaluate(cluster, failure, exit_code=1)
    assert status["evaluation"]["phase"] == "Failed"
    assert status["evaluation"]["reason"] == "NoEvaluationRows"
    assert (status["phase"], status["reason"]) == ("RolledBack", "MetricDrop")
    assert "EvaluationFailed" in cluster.reasons()


async def test_turning_autoscaling_off_removes_only_its_own_autoscaler(
    cluster: FakeKube,
) -> None:
    auto = deployment(autoscaling={"minReplicas": 1, "maxReplicas": 3})
    cluster.add(auto)
    await reconcile()
    hpa = cluster.find("HorizontalPodAutoscaler", "iris")
    assert hpa is not None and hpa["spec"]["maxReplicas"] == 3
    await kube.merge_patch(
        kube.API_VERSION, "ModelDeployment", "iris", NS, {"spec": {"autoscaling": None}}
    )
    await reconcile()
    assert cluster.find("HorizontalPodAutoscaler", "iris") is None

    someone_elses = copy.deepcopy(hpa)
    someone_elses["metadata"]["ownerReferences"] = [{"uid": "another-owner"}]
    cluster.add(someone_elses)
    await reconcile()
    assert cluster.find("HorizontalPodAutoscaler", "iris") is not None


async def test_a_spec_never_changed_is_not_asked_about_an_autoscaler(cluster: FakeKube) -> None:
    """At generation 1 autoscaling was never on: no GET of an autoscaler to remove (at
    5,000 deployments, one 404 each); once the spec changed, its first step asks."""
    cluster.add(deployment())
    await reconcile()
    assert [r for r in cluster.reads if r[0] == "HorizontalPodAutoscaler"] == []
    await kube.merge_patch(
        kube.API_VERSION, "ModelDeployment", "iris", NS, {"spec": {"replicas": 3}}
    )
    await reconcile()
    assert [r for r in cluster.reads if r[0] == "HorizontalPodAutoscaler"] == [
        ("HorizontalPodAutoscaler", "iris")
    ]


async def test_a_deployment_never_reconciled_reads_no_serving_deployment(
    cluster: FakeKube,
) -> None:
    """Before its first status (no observedGeneration) a deployment has no Deployments to
    read (at 5,000 new ones, two 404s each), unless the watch brought one: made by a step
    whose status write did not land. Once its status is written, every step reads them."""
    served = [("Deployment", "iris-stable"), ("Deployment", "iris-canary")]
    cluster.add(deployment())
    await h.reconcile(NS, "iris", log)  # type: ignore[arg-type]
    assert [r for r in cluster.reads if r[0] == "Deployment"] == []
    stable = cluster.find("Deployment", "iris-stable")
    assert stable is not None
    await reconcile()
    assert [r for r in cluster.reads if r[0] == "Deployment"] == served

    cluster.reads.clear()
    lost = cluster.find("ModelDeployment", "iris")
    assert lost is not None
    lost["status"] = {}  # as if the first status write had not landed
    stable["status"] = {"readyReplicas": 1}
    await h.deployment_changed(
        event={"type": "ADDED", "object": stable}, body=stable, namespace=NS, logger=log
    )
    assert ("Deployment", "iris-stable") in cluster.reads


async def test_a_step_reads_the_version_its_watch_brought(cluster: FakeKube) -> None:
    """The version a deployment serves is read as its last event showed it, and the
    usedBy update keeps what its write answered: neither sends a GET of it."""
    served = cluster.find("ModelVersion", "iris-v1")
    assert served is not None
    await h.model_version_changed(
        event={"type": "ADDED", "object": served}, body=served, namespace=NS, name="iris-v1",
        spec=served["spec"], status=served["status"], logger=log,
    )  # fmt: skip
    cluster.add(deployment())
    cluster.add(pod("iris-stable-a", "stable", "iris-v1"))
    await reconcile()
    status = await reconcile()
    assert (status["phase"], status["stableVersion"]) == ("Stable", "iris-v1")
    assert cluster.find("ModelVersion", "iris-v1")["status"]["usedBy"] == ["iris"]  # type: ignore[index]
    assert usage.versions_seen.get((NS, "iris-v1"))["status"]["usedBy"] == ["iris"]  # type: ignore[index]
    assert [r for r in cluster.reads if r[0] == "ModelVersion"] == []


async def test_a_version_no_serving_pod_can_read_is_degraded_once(cluster: FakeKube) -> None:
    cluster.add(version("iris-gs", 3, uri="https://models.example/iris/3"))
    cluster.add(deployment("iris-gs"))
    status = await reconcile()
    assert (status["phase"], status["reason"]) == ("Degraded", "UnsupportedArtifact")
    assert "https://models.example/iris/3" in status["message"]
    await reconcile()
    assert cluster.reasons() == ["UnsupportedArtifact"]  # said once, not every tick


async def test_a_spec_the_operator_cannot_read_ends_in_a_condition_and_one_event(
    cluster: FakeKube,
) -> None:
    cluster.add(deployment(replicas="many"))  # the API server would refuse it: CRD skew
    status = await reconcile()
    assert (status["phase"], status["reason"]) == ("Degraded", "SchemaMismatch")
    await reconcile()
    assert cluster.reasons() == ["SchemaMismatch"]
    assert cluster.find("Deployment", "iris-stable") is None


async def test_the_admins_policy_refuses_a_server_image_of_its_own(cluster: FakeKube) -> None:
    cluster.add(deployment(server={"image": "elsewhere/server:1"}))
    status = await reconcile()
    assert (status["phase"], status["reason"]) == ("Degraded", "PolicyViolation")
    assert "spec.server.image" in status["message"]
    assert cluster.find("Deployment", "iris-stable") is None
    assert cluster.reasons() == ["PolicyViolation"]


async def test_gateway_mode_without_the_gateway_api_says_so(cluster: FakeKube) -> None:
    cluster.not_served.add("HTTPRoute")
    cluster.add(deployment(traffic={"mode": "gatewayAPI", "httpRoute": {"name": "iris"}}))
    status = await reconcile()
    split = next(c for c in status["conditions"] if c["type"] == "TrafficSplit")
    assert (split["status"], split["reason"]) == ("False", "GatewayAPIUnavailable")


async def test_deleting_a_deployment_takes_it_out_of_used_by(cluster: FakeKube) -> None:
    cluster.add(deployment())
    await reconcile()
    status = {"stableVersion": "iris-v1"}
    body = cluster.find("ModelDeployment", "iris")
    assert body is not None
    await h.follow_rollout(
        event={"type": "DELETED", "object": body}, body=body, namespace=NS, name="iris",
        spec=body["spec"], status=status, logger=log,
    )  # fmt: skip
    assert cluster.find("ModelVersion", "iris-v1")["status"]["usedBy"] == []  # type: ignore[index]


async def test_a_serving_child_deleted_by_hand_is_made_again(cluster: FakeKube) -> None:
    """The watch events of a Deployment or Service gone by hand reconcile the owner, which
    makes it again; a Service's other events do nothing."""
    cluster.add(deployment())
    cluster.add(pod("iris-stable-a", "stable", "iris-v1"))
    await reconcile()
    await reconcile()
    service = cluster.find("Service", "iris")
    stable = cluster.find("Deployment", "iris-stable")
    assert service is not None and stable is not None
    writes = len(cluster.writes)
    await h.service_deleted(
        event={"type": "MODIFIED", "object": service}, body=service, namespace=NS, logger=log
    )
    assert cluster.writes[writes:] == []
    for kind, body in (("Service", service), ("Deployment", stable)):
        await kube.delete(body["apiVersion"], kind, body["metadata"]["name"], NS)
        assert cluster.find(kind, body["metadata"]["name"]) is None
    await h.service_deleted(
        event={"type": "DELETED", "object": service}, body=service, namespace=NS, logger=log
    )
    assert cluster.find("Service", "iris") is not None
    await kube.delete("apps/v1", "Deployment", "iris-stable", NS)
    await h.deployment_changed(
        event={"type": "DELETED", "object": stable}, body=stable, namespace=NS, logger=log
    )
    again = cluster.find("Deployment", "iris-stable")
    assert again is not None and again["spec"]["replicas"] == 2
    assert cluster.find("Service", "iris") is not None
    # Its events reconcile the owner only when its pods' counts change; the first one,
    # of the Deployment just made again, counts no pod: nothing the owner does not know.
    for counts, reconciled in (({}, False), ({"observedGeneration": 3}, False),
                               ({"readyReplicas": 1}, True),
                               ({"readyReplicas": 0}, True)):  # fmt: skip
        again["status"] = counts
        writes = len(cluster.writes)
        await h.deployment_changed(
            event={"type": "MODIFIED", "object": again}, body=again, namespace=NS, logger=log
        )
        assert (cluster.writes[writes:] != []) == reconciled, counts


async def test_a_deployment_being_deleted_uses_nothing(cluster: FakeKube) -> None:
    cluster.add(deployment())
    await reconcile()
    assert cluster.find("ModelVersion", "iris-v1")["status"]["usedBy"] == ["iris"]  # type: ignore[index]
    body = cluster.find("ModelDeployment", "iris")
    assert body is not None
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    await h.follow_rollout(
        event={"type": "MODIFIED", "object": body}, body=body, namespace=NS, name="iris",
        spec=body["spec"], status=body["status"], logger=log,
    )  # fmt: skip
    assert cluster.find("ModelVersion", "iris-v1")["status"]["usedBy"] == []  # type: ignore[index]
    assert (NS, "iris") not in h._analyses


# --- The canary's window, over real HTTP ------------------------------------------------


async def test_a_step_counts_only_the_requests_since_it_began(
    cluster: FakeKube, serving_pods: tuple[int, MetricsPods]
) -> None:
    port, pods = serving_pods
    stable_metrics, canary_metrics = pods.metrics["127.0.0.1"], pods.metrics["127.0.0.2"]
    for _ in range(500):  # served before the rollout: not the canary step's business
        stable_metrics.observe_request("v2_infer", 200, 0.003)
    cluster.add(deployment(server={"port": port}))
    cluster.add(pod("iris-stable-a", "stable", "iris-v1", ip="127.0.0.1"))
    await reconcile()
    cluster.add(version("iris-v2", 2))
    await kube.merge_patch(
        kube.API_VERSION, "ModelDeployment", "iris", NS, {"spec": {"modelVersion": "iris-v2"}}
    )
    await reconcile()
    await evaluate(cluster, scored(0.95, 0.95))  # step 0 entered; the window's baseline
    cluster.add(pod("iris-canary-a", "canary", "iris-v2", ip="127.0.0.2"))
    await reconcile()  # canary ready: the step's clock starts
    for _ in range(7):
        stable_metrics.observe_request("v2_infer", 200, 0.003)
        canary_metrics.observe_request("v2_infer", 200, 0.003)
    status = await reconcile()
    analysis = status["analysis"]
    assert analysis["stable"]["requests"] == 7
    assert analysis["canary"]["requests"] == 7
    assert analysis["verdict"] == "Inconclusive"  # 14 requests: fewer than minRequests


async def test_a_failing_reconcile_is_retried_with_backoff(
    cluster: FakeKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def away(*_: Any) -> None:
        raise kube.KubeError(503, "the API server is away")

    monkeypatch.setattr(h, "reconcile", away)
    delays = []
    for retry in (0, 1, 2, 9):
        with pytest.raises(kopf.TemporaryError) as err:
            await h.changed(namespace=NS, name="iris", logger=log, retry=retry)
        delays.append(err.value.delay)
    assert delays == [10.0, 20.0, 40.0, 600.0]


async def test_a_version_that_appears_or_changes_phase_moves_its_users(
    cluster: FakeKube,
) -> None:
    """No loop polls a deployment waiting for its first version: the version's own
    events (found through the index of who uses what) reconcile it, once per phase."""
    cluster.add(deployment("iris-v2"))
    status = await reconcile()
    assert (status["phase"], status["reason"]) == ("Pending", "WaitingForModelVersion")
    assert (NS, "iris") not in h._analyses
    added = version("iris-v2", 2)

    async def event(kind: str) -> None:
        await h.model_version_changed(
            event={"type": kind, "object": added}, body=added, namespace=NS, name="iris-v2",
            spec=added["spec"], status=added["status"], logger=log,
        )  # fmt: skip

    cluster.add(added)
    await event("ADDED")
    status = dict(cluster.find("ModelDeployment", "iris")["status"])  # type: ignore[index]
    assert (status["phase"], status["reason"], status["stableVersion"]) == (
        "Pending", "Deploying", "iris-v2"
    )  # fmt: skip
    writes = len(cluster.writes)
    await event("MODIFIED")  # the same phase (its usedBy, say): nothing to decide again
    assert cluster.writes[writes:] == []
