"""The TrainingJob and ModelVersion controllers against a real kube-apiserver.

The Jobs are built by the builders and stored by the API server (which validates them);
no pods run at this level, so the tests write Job and pod status through the status
subresources, as the Job controller and the kubelet would. The Jobs are created
suspended and their pods bound to a node that does not exist, so that a cluster that
does run controllers (the node level) leaves them as the test wrote them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kopf
import pytest
from conftest import install_crds, kubectl

from orchard import kube
from orchard.api.common import API_VERSION
from orchard.api.modelversion import ModelVersion
from orchard.api.trainingjob import Artifacts, TrainingJob
from orchard.builders.modelversion import verify_job, verify_job_name
from orchard.builders.training import config_map, job_name, training_job
from orchard.decisions.queue import TrainingQueue
from orchard.handlers import modelversion as mv_handlers
from orchard.handlers import trainingjob as tj_handlers
from orchard.handlers import watched
from orchard.handlers.watched import Latest, job_without_template

pytestmark = pytest.mark.api

REPO = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32
DATASET_DIGEST = "sha256:" + "cd" * 32
NOWHERE = "orchard-api-test-no-such-node"
# Recent times: a finished Job with a ttlSecondsAfterFinished is deleted by the TTL
# controller (where one runs) once its finish time is that old.
_NOW = datetime.now(UTC).replace(microsecond=0)
T0 = (_NOW - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%SZ")
T1 = _NOW.strftime("%Y-%m-%dT%H:%M:%SZ")
log = logging.getLogger("test")


@pytest.fixture(scope="module")
def api_server(kubeconfig_api: Path) -> Iterator[str]:
    """The API server of the local cluster (the api level, or more), with Orchard's CRDs;
    KUBECONFIG is set for the operator's client and for kubectl."""
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig_api)
    install_crds()
    yield str(kubeconfig_api)
    if saved is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = saved


@pytest.fixture
def namespace(api_server: str, api_namespace: str) -> str:
    return api_namespace


@pytest.fixture(autouse=True)
async def fresh_client() -> AsyncIterator[None]:
    """lightkube's async client is bound to the event loop it was made on."""
    yield
    await kube.close()


@pytest.fixture(autouse=True)
def fresh_queue(monkeypatch: pytest.MonkeyPatch) -> TrainingQueue:
    """The training queue is the operator's memory; no watch events end these tests'
    TrainingJobs, so each test starts with an empty one (of the default limit)."""
    queue = TrainingQueue()
    monkeypatch.setattr(tj_handlers, "_queue", queue)
    monkeypatch.setattr(tj_handlers, "_queued_written", {})
    return queue


@pytest.fixture(autouse=True)
def fresh_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the watch brought is the operator's memory too: each test starts with none
    (a test hands events to the handlers itself, as Kopf would)."""
    monkeypatch.setattr(tj_handlers, "_trainings", Latest())
    monkeypatch.setattr(tj_handlers, "_jobs", Latest(job_without_template))
    monkeypatch.setattr(mv_handlers, "_versions", Latest())
    monkeypatch.setattr(mv_handlers, "_jobs", Latest(job_without_template))


@contextlib.contextmanager
def counting(monkeypatch: pytest.MonkeyPatch, verb: str = "get") -> Iterator[list[str]]:
    """The kinds the controllers ask `kube.<verb>` for (get, list_objects) while inside,
    in order."""
    kinds: list[str] = []
    real = getattr(kube, verb)

    async def counted(*args: Any, **kwargs: Any) -> Any:
        kinds.append(args[1])  # (api_version, kind, ...)
        return await real(*args, **kwargs)

    monkeypatch.setattr(kube, verb, counted)
    try:
        yield kinds
    finally:
        monkeypatch.setattr(kube, verb, real)


def tj_body(namespace: str, name: str = "iris-rf", **spec: Any) -> dict[str, Any]:
    """A TrainingJob's body; a field given as None is left out (artifacts=None: the
    minimal TrainingJob)."""
    base: dict[str, Any] = {
        "model": "iris",
        "dataset": {"builtin": "iris"},
        "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 20}},
        "gate": {"metric": "accuracy", "min": 0.8},
        "artifacts": {"uri": "pvc://orchard-artifacts/models"},
    }
    base.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {k: v for k, v in base.items() if v is not None},
    }


async def create_tj(namespace: str, name: str = "iris-rf", **spec: Any) -> TrainingJob:
    return TrainingJob.model_validate(await kube.create(tj_body(namespace, name, **spec)))


def own_store(tj: TrainingJob) -> Artifacts:
    """The store of a TrainingJob that names one, as the controller resolves it."""
    assert tj.spec.artifacts is not None
    return tj.spec.artifacts


async def create_job(tj: TrainingJob) -> dict[str, Any]:
    """The Job exactly as the controller builds it, but suspended (see module doc)."""
    await tj_handlers.ensure_child(tj, config_map(tj), "SpecConflict")
    job = training_job(tj, own_store(tj))
    job["spec"]["suspend"] = True
    return await kube.create(job)


async def write_job_status(job: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
    meta = job["metadata"]
    res = kube.resource("batch/v1", "Job")
    out = await kube.client().patch(
        res.Status,
        meta["name"],
        {"status": status},
        namespace=meta["namespace"],
        patch_type=kube.PatchType.MERGE,
    )
    return kube._as_dict(out)


async def make_pod(
    job: dict[str, Any],
    index: int | None,
    phase: str,
    container: dict[str, Any],
    name: str = "trainer",
) -> dict[str, Any]:
    """A pod of `job` as the Job controller would label it, with the status a kubelet
    would write."""
    meta = job["metadata"]
    labels = {
        "batch.kubernetes.io/controller-uid": meta["uid"],
        "batch.kubernetes.io/job-name": meta["name"],
    }
    annotations = {}
    if index is not None:
        labels["batch.kubernetes.io/job-completion-index"] = str(index)
        annotations["batch.kubernetes.io/job-completion-index"] = str(index)
    suffix = f"-{index}" if index is not None else ""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{meta['name']}{suffix}-{uuid.uuid4().hex[:5]}",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "nodeName": NOWHERE,
            "restartPolicy": "Never",
            "containers": [{"name": name, "image": "localhost/orchard/trainer:dev"}],
        },
    }
    created = await kube.create(pod)
    res = kube.resource("v1", "Pod")
    status = {
        "phase": phase,
        "containerStatuses": [
            {
                "name": name,
                "image": "localhost/orchard/trainer:dev",
                "imageID": "",
                "ready": phase == "Running",
                "restartCount": 0,
                "state": container,
            }
        ],
    }
    out = await kube.client().patch(
        res.Status,
        created["metadata"]["name"],
        {"status": status},
        namespace=meta["namespace"],
        patch_type=kube.PatchType.MERGE,
    )
    return kube._as_dict(out)


def result(trial: int | None = None, accuracy: float = 0.95) -> dict[str, Any]:
    body: dict[str, Any] = {
        "artifactUri": f"pvc://orchard-artifacts/models/iris/iris-rf/trial-{trial}/",
        "digest": DIGEST,
        "metrics": {"accuracy": accuracy, "f1_macro": accuracy - 0.01},
        "framework": {"name": "scikit-learn", "version": "1.7.2"},
        "inputs": [{"name": "sepal_length", "type": "number"}],
        "dataset": {"uri": "builtin:iris", "digest": DATASET_DIGEST},
        "task": "classification",
        "params": {"max_depth": trial},
    }
    if trial is not None:
        body["trial"] = trial
    return body


def terminated(
    code: int, message: dict[str, Any] | str, reason: str | None = None
) -> dict[str, Any]:
    return {
        "terminated": {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "message": message if isinstance(message, str) else json.dumps(message),
            "startedAt": T0,
            "finishedAt": T1,
        }
    }


def complete(succeeded: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "startTime": T0,
        "completionTime": T1,
        "succeeded": succeeded,
        "active": 0,
        "conditions": [
            {
                "type": "SuccessCriteriaMet",
                "status": "True",
                "reason": "CompletionsReached",
                "lastProbeTime": T1,
                "lastTransitionTime": T1,
            },
            {
                "type": "Complete",
                "status": "True",
                "reason": "CompletionsReached",
                "lastProbeTime": T1,
                "lastTransitionTime": T1,
            },
        ],
        **extra,
    }


def failed(reason: str, failed_count: int = 1, **extra: Any) -> dict[str, Any]:
    return {
        "startTime": T0,
        "failed": failed_count,
        "active": 0,
        "conditions": [
            {
                "type": "FailureTarget",
                "status": "True",
                "reason": reason,
                "lastProbeTime": T1,
                "lastTransitionTime": T1,
            },
            {
                "type": "Failed",
                "status": "True",
                "reason": reason,
                "lastProbeTime": T1,
                "lastTransitionTime": T1,
            },
        ],
        **extra,
    }


async def get_tj(namespace: str, name: str = "iris-rf") -> dict[str, Any]:
    body = await kube.get(API_VERSION, "TrainingJob", name, namespace)
    assert body is not None
    return body


async def model_versions(namespace: str) -> list[dict[str, Any]]:
    return await kube.list_objects(API_VERSION, "ModelVersion", namespace)


# --- the Job ---------------------------------------------------------------------


async def test_built_job_is_accepted_owned_and_created_once(namespace: str) -> None:
    tj = await create_tj(namespace)
    assert tj.metadata.uid
    await create_job(tj)
    again = training_job(tj, own_store(tj))
    with pytest.raises(kube.Conflict):
        await kube.create(again)
    await tj_handlers.ensure_child(tj, again, "JobConflict")  # the handler's path: ours
    await tj_handlers.ensure_child(tj, config_map(tj), "SpecConflict")

    stored = await kube.get("batch/v1", "Job", job_name(tj), namespace)
    assert stored is not None
    assert stored["metadata"]["ownerReferences"][0]["uid"] == tj.metadata.uid
    assert stored["metadata"]["labels"]["orchard.dev/trainingjob"] == "iris-rf"
    pod = stored["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001
    container = pod["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The API server chose the selector from the Job's own uid.
    assert (
        stored["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"]
        == (stored["metadata"]["uid"])
    )
    cm = await kube.get("v1", "ConfigMap", f"{tj.metadata.name}-spec", namespace)
    assert cm is not None and "trainingjob.yaml" in cm["data"]


async def test_the_pods_of_a_job_not_started_are_not_listed(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Job the Job controller has not started has no pods: a sync reads the TrainingJob
    and its Job, and lists pods only once the Job's status says it started."""
    tj = await create_tj(namespace)
    job = await create_job(tj)  # suspended, no status: as on a cluster without a node
    with counting(monkeypatch, "list_objects") as listed:
        await tj_handlers.sync(namespace, "iris-rf", log)
        assert listed == []
        assert (await get_tj(namespace))["status"]["reason"] == "JobCreated"
        job = await write_job_status(job, {"startTime": T0, "active": 1, "ready": 0})
        await make_pod(
            job, None, "Pending", {"waiting": {"reason": "ErrImagePull", "message": "x"}}
        )
        await tj_handlers.sync(namespace, "iris-rf", log)
        assert listed == ["Pod"]
    assert (await get_tj(namespace))["status"]["reason"] == "ImageProblem"


async def test_search_is_accepted_as_an_indexed_job(namespace: str) -> None:
    tj = await create_tj(
        namespace,
        search={
            "parameters": {"max_depth": [2, 4, 8, 16]},
            "maxTrials": 4,
            "parallelism": 2,
            "objective": {"metric": "accuracy"},
        },
    )
    job = await create_job(tj)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 4, 2)
    assert spec["backoffLimitPerIndex"] == 0


# --- status mapped from the Job ----------------------------------------------------


async def test_success_registers_one_model_version(namespace: str) -> None:
    tj = await create_tj(namespace)
    job = await create_job(tj)
    await tj_handlers.sync(namespace, "iris-rf", log)
    assert (await get_tj(namespace))["status"]["phase"] == "Pending"

    job = await write_job_status(job, complete())
    await make_pod(job, None, "Succeeded", terminated(0, result()))
    await tj_handlers.sync(namespace, "iris-rf", log)
    await tj_handlers.sync(namespace, "iris-rf", log)  # idempotent

    status = (await get_tj(namespace))["status"]
    assert status["phase"] == "Succeeded"
    assert status["modelVersion"] == "iris-v1"
    assert status["primaryMetric"] == {"name": "accuracy", "value": 0.95}
    assert status["artifact"]["digest"] == DIGEST
    assert status["completionTime"] == T1
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("True", "Registered")

    versions = await model_versions(namespace)
    assert [v["metadata"]["name"] for v in versions] == ["iris-v1"]
    mv = versions[0]
    assert "ownerReferences" not in mv["metadata"]
    assert mv["spec"]["source"]["trainingJob"] == "iris-rf"
    assert mv["spec"]["source"]["dataset"]["digest"] == DATASET_DIGEST
    assert mv["spec"]["metrics"]["accuracy"] == 0.95

    events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "iris-rf"}
    assert {"Registered", "Succeeded"} <= reasons

    # kubectl get tj shows phase, model, metric and version
    table = kubectl("get", "tj", "iris-rf", "-n", namespace).stdout
    assert "Succeeded" in table and "accuracy" in table and "iris-v1" in table


async def test_concurrent_registrations_take_distinct_versions(namespace: str) -> None:
    first = await create_tj(namespace, "iris-a")
    second = await create_tj(namespace, "iris-b")
    from orchard.decisions.training import parse_termination_message

    res = parse_termination_message(json.dumps(result()))
    assert res is not None and not hasattr(res, "reason")
    names = await asyncio.gather(
        tj_handlers.register(first, res),
        tj_handlers.register(second, res),  # type: ignore[arg-type]
    )
    assert sorted(names) == ["iris-v1", "iris-v2"]
    # registering again finds the existing one: exactly once per TrainingJob
    assert await tj_handlers.register(first, res) == names[0]  # type: ignore[arg-type]
    assert len(await model_versions(namespace)) == 2


@pytest.mark.parametrize(
    ("job_status", "container", "reason", "in_message"),
    [
        (
            failed("BackoffLimitExceeded"),
            terminated(
                1,
                {
                    "error": {
                        "reason": "DataCheckFailed",
                        "message": "target column 'species' is not in the dataset",
                    }
                },
            ),
            "DataCheckFailed",
            "species",
        ),
        (
            failed("BackoffLimitExceeded"),
            terminated(
                1,
                {
                    "error": {
                        "reason": "GateFailed",
                        "message": "accuracy=0.41 is below the gate's min 0.8",
                    }
                },
            ),
            "GateFailed",
            "nothing was registered",
        ),
        (failed("BackoffLimitExceeded"), terminated(137, "", "OOMKilled"), "OutOfMemory", "memory"),
        (failed("DeadlineExceeded"), terminated(143, "", "Error"), "DeadlineExceeded", "deadline"),
    ],
)
async def test_failure_reasons_reach_status(
    namespace: str,
    job_status: dict[str, Any],
    container: dict[str, Any],
    reason: str,
    in_message: str,
) -> None:
    tj = await create_tj(namespace)
    job = await create_job(tj)
    job = await write_job_status(job, job_status)
    await make_pod(job, None, "Failed", container)
    await tj_handlers.sync(namespace, "iris-rf", log)
    status = (await get_tj(namespace))["status"]
    assert (status["phase"], status["reason"]) == ("Failed", reason)
    assert in_message in status["message"]
    assert "modelVersion" not in status
    assert await model_versions(namespace) == []
    table = kubectl("get", "tj", "iris-rf", "-n", namespace).stdout
    assert "Failed" in table and reason in table


async def test_image_problem_fails_and_stops_the_job(namespace: str) -> None:
    tj = await create_tj(namespace)
    job = await create_job(tj)
    # (The Job stays suspended from creation: a Job controller, if the cluster runs one,
    # would otherwise start a real pod beside the one written here.)
    job = await write_job_status(job, {"startTime": T0, "active": 1, "ready": 0})
    await make_pod(
        job,
        None,
        "Pending",
        {
            "waiting": {
                "reason": "ErrImageNeverPull",
                "message": 'Container image "localhost/orchard/trainer:dev" is not present',
            }
        },
    )
    await tj_handlers.sync(namespace, "iris-rf", log)
    status = (await get_tj(namespace))["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "ImageProblem")
    stored = await kube.get("batch/v1", "Job", job_name(tj), namespace)
    assert stored is not None and stored["spec"]["suspend"] is True


async def test_search_registers_the_best_trial(namespace: str) -> None:
    tj = await create_tj(
        namespace,
        search={
            "parameters": {"max_depth": [2, 4, 8, 16]},
            "maxTrials": 4,
            "parallelism": 2,
            "objective": {"metric": "accuracy"},
        },
    )
    job = await create_job(tj)
    job = await write_job_status(job, complete(4, completedIndexes="0-3"))
    for index, accuracy in enumerate([0.90, 0.97, 0.93, 0.95]):
        await make_pod(job, index, "Succeeded", terminated(0, result(index, accuracy)))
    await tj_handlers.sync(namespace, "iris-rf", log)
    status = (await get_tj(namespace))["status"]
    assert (status["phase"], status["bestTrial"]) == ("Succeeded", 1)
    assert [t["index"] for t in status["trials"]] == [0, 1, 2, 3]
    assert status["trials"][1]["metrics"]["accuracy"] == 0.97
    (mv,) = await model_versions(namespace)
    assert mv["spec"]["source"]["trial"] == 1
    assert mv["spec"]["artifact"]["uri"].endswith("trial-1/")


# --- ModelVersion ----------------------------------------------------------------


async def registered(namespace: str) -> ModelVersion:
    tj = await create_tj(namespace)
    from orchard.contracts import TrainerReport
    from orchard.decisions.training import parse_termination_message

    res = parse_termination_message(json.dumps(result()))
    assert isinstance(res, TrainerReport)
    name = await tj_handlers.register(tj, res)
    body = await kube.get(API_VERSION, "ModelVersion", name, namespace)
    assert body is not None
    return ModelVersion.model_validate(body)


async def test_model_version_spec_is_immutable(namespace: str) -> None:
    mv = await registered(namespace)
    with pytest.raises(kube.Invalid) as err:
        await kube.merge_patch(
            API_VERSION,
            "ModelVersion",
            str(mv.metadata.name),
            namespace,
            {"spec": {"metrics": {"accuracy": 1.0}}},
        )
    assert err.value.code == 422
    assert "immutable" in str(err.value)


@pytest.mark.parametrize(
    ("job_status", "container", "phase", "verified"),
    [
        (
            complete(),
            terminated(
                0, {"verified": True, "digest": DIGEST, "files": {"model.joblib": "sha256:x"}}
            ),
            "Ready",
            "True",
        ),
        (
            failed("BackoffLimitExceeded"),
            terminated(
                1,
                {
                    "error": {
                        "reason": "DigestMismatch",
                        "message": "metadata.json has "
                        "digest sha256:00, but the recorded digest is ...",
                    }
                },
            ),
            "Failed",
            "False",
        ),
    ],
)
async def test_verification_sets_artifact_verified_and_ready(
    namespace: str,
    job_status: dict[str, Any],
    container: dict[str, Any],
    phase: str,
    verified: str,
) -> None:
    mv = await registered(namespace)
    job = verify_job(mv)
    job["spec"]["suspend"] = True
    job = await kube.create(job)
    await mv_handlers.sync(namespace, str(mv.metadata.name), log)
    status = (await kube.get(API_VERSION, "ModelVersion", str(mv.metadata.name), namespace) or {})[
        "status"
    ]
    assert status["phase"] == "Verifying"
    # usedBy is the ModelDeployment controller's: a verification sync leaves it as it is.
    await kube.patch_status("ModelVersion", str(mv.metadata.name), namespace, {"usedBy": ["web"]})

    job = await write_job_status(job, job_status)
    await make_pod(
        job, None, "Succeeded" if phase == "Ready" else "Failed", container, name="verify"
    )
    await mv_handlers.sync(namespace, str(mv.metadata.name), log)
    status = (await kube.get(API_VERSION, "ModelVersion", str(mv.metadata.name), namespace) or {})[
        "status"
    ]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert status["phase"] == phase
    assert conditions == {"ArtifactVerified": verified, "Ready": verified}
    assert status["usedBy"] == ["web"]
    assert verify_job_name(mv) == job["metadata"]["name"]


async def test_deletion_guard_holds_while_a_deployment_uses_the_version(namespace: str) -> None:
    mv = await registered(namespace)
    body = await kube.get(API_VERSION, "ModelVersion", str(mv.metadata.name), namespace)
    assert body is not None
    # Nothing uses it: deletion goes ahead at once.
    await mv_handlers.guard_deletion(
        body=body,
        namespace=namespace,  # type: ignore[arg-type]
        name="iris-v1",
        retry=0,
        logger=log,
    )
    await kube.create(
        {
            "apiVersion": API_VERSION,
            "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": namespace},
            "spec": {"modelVersion": "iris-v1", "replicas": 1},
        }
    )
    with pytest.raises(kopf.TemporaryError) as err:
        await mv_handlers.guard_deletion(
            body=body,
            namespace=namespace,  # type: ignore[arg-type]
            name="iris-v1",
            retry=0,
            logger=log,
        )
    assert "ModelDeployment(s) iris" in str(err.value)
    assert err.value.delay == 15.0  # then doubling, at most ten minutes (decisions.retries)
    events = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    assert any(e["reason"] == "InUse" and e["type"] == "Warning" for e in events)
    status = (await kube.get(API_VERSION, "ModelVersion", "iris-v1", namespace) or {})["status"]
    blocked = next(c for c in status["conditions"] if c["type"] == "DeletionBlocked")
    assert (blocked["status"], blocked["reason"]) == ("True", "InUse")
    assert status["usedBy"] == ["iris"]
    # A later retry waits longer.
    with pytest.raises(kopf.TemporaryError) as err:
        await mv_handlers.guard_deletion(
            body=body,
            namespace=namespace,  # type: ignore[arg-type]
            name="iris-v1",
            retry=3,
            logger=log,
        )
    assert err.value.delay == 120.0


async def test_a_job_the_api_server_refuses_fails_the_trainingjob(namespace: str) -> None:
    # The CRD keeps resources free-form; the Job's own validation refuses the quantity.
    tj = await create_tj(namespace, resources={"limits": {"memory": "lots"}})
    body = await get_tj(namespace)
    with pytest.raises(kopf.PermanentError):
        await tj_handlers.start(body=kopf.Body(body), namespace=namespace, name="iris-rf",
                                logger=log)  # fmt: skip
    status = (await get_tj(namespace))["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "InvalidJob")
    assert "quantities must match" in status["message"]
    assert await kube.get("batch/v1", "Job", job_name(tj), namespace) is None


def events_of(namespace: str, reason: str) -> list[dict[str, Any]]:
    items = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    return [e for e in items if e["reason"] == reason]


async def test_a_trainingjob_cannot_run_a_foreign_image_or_mount_any_secret(
    namespace: str,
) -> None:
    """A namespace user's spec names an image of their own and a Secret they cannot read:
    the default policy refuses both before any Job exists, naming the rules."""
    tj = await create_tj(
        namespace,
        image="attacker.example/miner:1",
        dataset={"uri": "s3://data/iris.csv", "target": "species", "secretName": "ci-token"},
    )
    body = await get_tj(namespace)
    await tj_handlers.start(body=kopf.Body(body), namespace=namespace, name="iris-rf", logger=log)
    status = (await get_tj(namespace))["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "PolicyViolation")
    assert "policy rule images.allowedPrefixes" in status["message"]
    assert "policy rule secrets.allowedNames" in status["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "PolicyViolation")
    assert await kube.get("batch/v1", "Job", job_name(tj), namespace) is None
    assert await kube.get("v1", "ConfigMap", config_map(tj)["metadata"]["name"], namespace) is None
    events = events_of(namespace, "PolicyViolation")
    assert events and all(e["type"] == "Warning" and "ci-token" in e["message"] for e in events)


async def test_a_hand_made_model_version_cannot_borrow_a_secret(namespace: str) -> None:
    """A ModelVersion imported by hand names another team's Secret: no verification Job
    (which would mount it) is made, and the version fails with the rule."""
    body = {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {"name": "iris-v9", "namespace": namespace},
        "spec": {
            "model": "iris",
            "version": 9,
            "task": "classification",
            "artifact": {"uri": "s3://models/iris/9/", "digest": DIGEST, "secretName": "db-admin"},
            "framework": {"name": "scikit-learn", "version": "1.5"},
        },
    }
    created = await kube.create(body)
    mv = ModelVersion.model_validate(created)
    await mv_handlers.start(
        body=kopf.Body(created), namespace=namespace, name="iris-v9", logger=log
    )
    got = await kube.get(API_VERSION, "ModelVersion", "iris-v9", namespace)
    status = (got or {})["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "PolicyViolation")
    assert "spec.artifact.secretName" in status["message"] and "db-admin" in status["message"]
    assert await kube.get("batch/v1", "Job", verify_job_name(mv), namespace) is None
    assert events_of(namespace, "PolicyViolation")


async def test_a_trainingjob_with_nowhere_to_write_fails_with_no_artifact_store(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The minimal TrainingJob (no spec.artifacts) on an operator without a default store:
    the API server accepts it, the controller refuses it before any Job exists, and the
    condition and the event say what to set."""
    monkeypatch.delenv("ORCHARD_DEFAULT_ARTIFACTS", raising=False)
    tj = await create_tj(namespace, artifacts=None)
    assert tj.spec.artifacts is None
    body = await get_tj(namespace)
    await tj_handlers.start(body=kopf.Body(body), namespace=namespace, name="iris-rf", logger=log)

    status = (await get_tj(namespace))["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "NoArtifactStore")
    assert "spec.artifacts.uri" in status["message"]
    assert "ORCHARD_DEFAULT_ARTIFACTS" in status["message"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == (
        "False",
        "NoArtifactStore",
    )
    assert (conditions["Failed"]["status"], conditions["Failed"]["reason"]) == (
        "True",
        "NoArtifactStore",
    )
    assert await kube.get("batch/v1", "Job", job_name(tj), namespace) is None
    assert await kube.get("v1", "ConfigMap", config_map(tj)["metadata"]["name"], namespace) is None
    events = events_of(namespace, "NoArtifactStore")
    assert events and all(
        e["type"] == "Warning" and "spec.artifacts.uri" in e["message"] for e in events
    )
    table = kubectl("get", "tj", "iris-rf", "-n", namespace).stdout
    assert "Failed" in table and "NoArtifactStore" in table


async def test_a_stale_spec_config_map_is_replaced_and_a_foreign_one_refused(
    namespace: str,
) -> None:
    """The `<tj>-spec` ConfigMap is claimed by owner uid: one left by an earlier
    TrainingJob of the same name (its garbage not yet collected) is replaced; one of
    anybody else fails the TrainingJob with SpecConflict and creates nothing."""
    earlier = await create_tj(namespace)
    stale = config_map(earlier)
    stale["data"] = {"trainingjob.yaml": "the earlier spec"}
    # As garbage collection would leave it: owned by an uid that no longer exists.
    stale["metadata"]["ownerReferences"][0]["uid"] = str(uuid.uuid4())
    await kube.create(stale)
    tj = TrainingJob.model_validate(await get_tj(namespace))
    await tj_handlers.start(body=kopf.Body(await get_tj(namespace)), namespace=namespace,
                            name="iris-rf", logger=log)  # fmt: skip
    cm = await kube.get("v1", "ConfigMap", "iris-rf-spec", namespace)
    assert cm is not None
    assert cm["metadata"]["ownerReferences"][0]["uid"] == tj.metadata.uid
    assert cm["data"]["trainingjob.yaml"] != "the earlier spec"
    assert await kube.get("batch/v1", "Job", job_name(tj), namespace) is not None

    other = await create_tj(namespace, "other")
    await kube.create(
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "other-spec", "namespace": namespace},
            "data": {"note": "someone else's"},
        }
    )
    await tj_handlers.start(body=kopf.Body(await get_tj(namespace, "other")),
                            namespace=namespace, name="other", logger=log)  # fmt: skip
    status = (await get_tj(namespace, "other"))["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "SpecConflict")
    assert "ConfigMap named other-spec" in status["message"]
    assert await kube.get("batch/v1", "Job", job_name(other), namespace) is None
    assert events_of(namespace, "SpecConflict")


async def test_a_training_job_deleted_by_hand_fails_the_trainingjob_at_once(
    namespace: str,
) -> None:
    tj = await create_tj(namespace)
    job = await create_job(tj)
    await tj_handlers.sync(namespace, "iris-rf", log)
    assert (await get_tj(namespace))["status"]["phase"] == "Pending"
    assert await kube.delete("batch/v1", "Job", job["metadata"]["name"], namespace, background=True)
    await tj_handlers.sync(namespace, "iris-rf", log)  # as the Job's DELETED event does
    status = (await get_tj(namespace))["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "JobDeleted")
    assert "was deleted" in status["message"]
    assert events_of(namespace, "JobDeleted")


async def test_starting_is_retried_with_backoff_then_fails_with_start_failed(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API server refuses the Job with a 500 every time: five retries with growing
    delays, then Failed with StartFailed and the last error."""
    await create_tj(namespace)

    async def refuse(obj: dict[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Job":
            raise kube.KubeError(500, "etcdserver: request timed out")
        return await real_create(obj)

    real_create = kube.create
    monkeypatch.setattr(kube, "create", refuse)
    delays = []
    for retry in range(5):
        body = kopf.Body(await get_tj(namespace))
        with pytest.raises(kopf.TemporaryError) as err:
            await tj_handlers.start(body=body, namespace=namespace, name="iris-rf", logger=log,
                                    retry=retry)  # fmt: skip
        delays.append(err.value.delay)
        assert f"try {retry + 1} of 6" in str(err.value)
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0]
    assert "status" not in await get_tj(namespace) or (
        (await get_tj(namespace))["status"].get("phase") != "Failed"
    )
    await tj_handlers.start(body=kopf.Body(await get_tj(namespace)), namespace=namespace,
                            name="iris-rf", logger=log, retry=5)  # fmt: skip
    status = (await get_tj(namespace))["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "StartFailed")
    assert "failed 6 times" in status["message"] and "request timed out" in status["message"]


async def test_a_status_is_never_written_over_a_newer_one(namespace: str) -> None:
    """Optimistic concurrency: a status patch names the resourceVersion it was decided
    on, and the API server refuses it once the object changed."""
    await create_tj(namespace)
    body = await get_tj(namespace)
    read_at = body["metadata"]["resourceVersion"]
    await kube.patch_status("TrainingJob", "iris-rf", namespace, {"phase": "Running"})
    with pytest.raises(kube.Conflict):
        await kube.patch_status(
            "TrainingJob", "iris-rf", namespace, {"phase": "Failed"}, resource_version=read_at
        )
    assert (await get_tj(namespace))["status"]["phase"] == "Running"


async def test_a_verification_job_is_claimed_by_owner_not_by_name(namespace: str) -> None:
    """A Job named `<mv>-verify` left by an earlier ModelVersion of the same name is
    replaced by this version's own; anybody else's fails the version with JobConflict."""
    mv = await registered(namespace)
    stale = verify_job(mv)
    stale["metadata"]["ownerReferences"][0]["uid"] = str(uuid.uuid4())  # the earlier one
    stale["spec"]["suspend"] = True
    await kube.create(stale)
    body = await kube.get(API_VERSION, "ModelVersion", str(mv.metadata.name), namespace)
    assert body is not None
    await mv_handlers.start(body=kopf.Body(body), namespace=namespace, name="iris-v1",
                            logger=log)  # fmt: skip
    job = await kube.get("batch/v1", "Job", verify_job_name(mv), namespace)
    assert job is not None and job["metadata"]["ownerReferences"][0]["uid"] == mv.metadata.uid

    await kube.delete("batch/v1", "Job", verify_job_name(mv), namespace, background=True)
    foreign = verify_job(mv)
    del foreign["metadata"]["ownerReferences"]
    foreign["spec"]["suspend"] = True
    for _ in range(20):  # the deletion above may take a moment
        try:
            await kube.create(foreign)
            break
        except kube.Conflict:
            await asyncio.sleep(0.2)
    await mv_handlers.start(body=kopf.Body(body), namespace=namespace, name="iris-v1",
                            logger=log)  # fmt: skip
    status = (await kube.get(API_VERSION, "ModelVersion", "iris-v1", namespace) or {})["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "JobConflict")
    assert "does not belong to this ModelVersion" in status["message"]


async def _wait_for_job(tj: dict[str, Any], namespace: str, seconds: float = 15) -> None:
    name = job_name(TrainingJob.model_validate(tj))
    for _ in range(int(seconds * 10)):
        if await kube.get("batch/v1", "Job", name, namespace) is not None:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no Job {name} after {seconds} s")


async def test_at_most_the_limit_train_and_the_rest_queue_in_turn(
    namespace: str, fresh_queue: TrainingQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two slots, four TrainingJobs: two Jobs, two Queued with their places; an ended
    or deleted one lets the next in turn start, and a queued one whose place did not
    change is polled without an API request."""
    fresh_queue.limit = 2
    names = ["q-a", "q-b", "q-c", "q-d"]  # created in the same second: turn by name
    bodies = {n: tj_body(namespace, n) for n in names}
    for name in names:
        await kube.create(bodies[name])
    for name in reversed(names):  # the handlers of the later ones happen to run first
        await tj_handlers.start(body=kopf.Body(await get_tj(namespace, name)), logger=log)
    jobs = {n: await kube.get("batch/v1", "Job", n, namespace) for n in names}  # job_name
    statuses = {n: (await get_tj(namespace, n))["status"] for n in names}
    # q-d and q-c started first, and hold the slots: the turn counts from the queue on.
    assert {n for n, job in jobs.items() if job} == {"q-c", "q-d"}
    assert (statuses["q-a"]["phase"], statuses["q-a"]["reason"]) == ("Pending", "Queued")
    assert statuses["q-a"]["queuePosition"] == 1
    # q-b was first in the queue when it joined; q-a, created earlier, went ahead of it,
    # and q-b's poll says so.
    assert statuses["q-b"]["queuePosition"] == 1
    await tj_handlers.poll((namespace, "q-b"), log)
    status = (await get_tj(namespace, "q-b"))["status"]
    assert (status["reason"], status["queuePosition"]) == ("Queued", 2)
    assert status["message"].startswith("queued: 2 of 2 waiting; at most 2")

    # A deleted one frees its slot: the first in turn starts, the second moves up.
    gone = await get_tj(namespace, "q-d")
    await kube.delete(API_VERSION, "TrainingJob", "q-d", namespace)
    await tj_handlers.follow(event={"type": "DELETED"}, body=gone, namespace=namespace,
                             name="q-d", logger=log)  # fmt: skip
    await _wait_for_job(await get_tj(namespace, "q-a"), namespace)
    assert (await get_tj(namespace, "q-a"))["status"].get("queuePosition") is None
    await tj_handlers.poll((namespace, "q-b"), log)
    assert (await get_tj(namespace, "q-b"))["status"]["queuePosition"] == 1

    with counting(monkeypatch) as reads:
        await tj_handlers.poll((namespace, "q-b"), log)
    assert reads == []

    # One that ends (its Job deleted by hand: JobDeleted) frees its slot too.
    job = await kube.get("batch/v1", "Job", "q-c", namespace)
    await kube.delete("batch/v1", "Job", "q-c", namespace, background=True)
    await tj_handlers.job_changed(event={"type": "DELETED"}, body=kopf.Body(job),
                                  namespace=namespace, logger=log)  # fmt: skip
    ended = await get_tj(namespace, "q-c")
    assert (ended["status"]["phase"], ended["status"]["reason"]) == ("Failed", "JobDeleted")
    await tj_handlers.follow(event={"type": "MODIFIED"}, body=ended, namespace=namespace,
                             name="q-c", logger=log)  # fmt: skip
    await _wait_for_job(await get_tj(namespace, "q-b"), namespace)
    assert fresh_queue.running == {(namespace, "q-a"), (namespace, "q-b")}
    assert not fresh_queue.waiting


async def test_a_place_far_back_in_the_queue_is_rewritten_once_it_halved(
    namespace: str, fresh_queue: TrainingQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thirty wait ahead: the status shows place 31 and is left alone (no request from
    the poll, no write from a sync) until the place is 15."""
    fresh_queue.limit = 1
    fresh_queue.hold(("elsewhere", "training"))
    ahead = [("elsewhere", f"ahead-{i:02d}") for i in range(30)]
    for key in ahead:
        fresh_queue.admit(key, "2026-01-01T00:00:00Z")
    await kube.create(tj_body(namespace, "far"))
    await tj_handlers.start(body=kopf.Body(await get_tj(namespace, "far")), logger=log)
    queued = await get_tj(namespace, "far")
    assert (queued["status"]["reason"], queued["status"]["queuePosition"]) == ("Queued", 31)
    assert queued["status"]["message"] == (
        "queued: 31 of 31 waiting; at most 1 TrainingJobs train at once "
        "(ORCHARD_MAX_RUNNING_TRAININGS); a place beyond 10 is rewritten once it halves"
    )

    for key in ahead[:15]:
        fresh_queue.forget(key)  # 16th now
    with counting(monkeypatch) as reads:
        await tj_handlers.poll((namespace, "far"), log)
    assert reads == []
    await tj_handlers.sync(namespace, "far", log)  # as a watch event's would
    unchanged = await get_tj(namespace, "far")
    assert unchanged["metadata"]["resourceVersion"] == queued["metadata"]["resourceVersion"]

    fresh_queue.forget(ahead[15])  # 15th: half of 31, rounded down
    await tj_handlers.poll((namespace, "far"), log)
    status = (await get_tj(namespace, "far"))["status"]
    assert (status["reason"], status["queuePosition"]) == ("Queued", 15)
    assert status["message"].startswith("queued: 15 of 15 waiting;")


async def test_a_verification_job_deleted_by_hand_is_made_again(namespace: str) -> None:
    """The check is read-only: a verification Job gone before its verdict is made again,
    and status says so, instead of Verifying for ever."""
    mv = await registered(namespace)
    name = str(mv.metadata.name)
    job = verify_job(mv)
    job["spec"]["suspend"] = True
    job = await kube.create(job)
    await mv_handlers.sync(namespace, name, log)
    assert await kube.delete("batch/v1", "Job", job["metadata"]["name"], namespace, background=True)
    for _ in range(50):  # the API server takes the Job away (no finalizer at this level)
        if await kube.get("batch/v1", "Job", job["metadata"]["name"], namespace) is None:
            break
        await asyncio.sleep(0.1)
    await mv_handlers.sync(namespace, name, log)  # as the Job's DELETED event does
    status = (await kube.get(API_VERSION, "ModelVersion", name, namespace) or {})["status"]
    assert (status["phase"], status["reason"]) == ("Pending", "Verifying")
    assert status["message"] == mv_handlers.JOB_REMADE_MESSAGE
    remade = await kube.get("batch/v1", "Job", verify_job_name(mv), namespace)
    assert remade is not None and remade["metadata"]["uid"] != job["metadata"]["uid"]
    assert remade["metadata"]["ownerReferences"][0]["uid"] == mv.metadata.uid


async def test_a_verification_step_reads_the_watch_and_a_stale_read_is_taken_again(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A step reads the version and its Job as their watch events (and its own status
    write) left them, with no GET. One that decided on a body older than the API server's
    writes nothing over the newer one (409) and is taken again on a live read: one status,
    one event each, and the other controller's usedBy kept."""
    mv = await registered(namespace)
    name = str(mv.metadata.name)
    job = verify_job(mv)
    job["spec"]["suspend"] = True
    job = await kube.create(job)
    body = await kube.get(API_VERSION, "ModelVersion", name, namespace)
    assert body is not None
    # What Kopf hands the event handlers: the version's and the Job's ADDED.
    await mv_handlers.follow(event={"type": "ADDED"}, body=kopf.Body(body), namespace=namespace,
                             name=name, logger=log)  # fmt: skip
    with counting(monkeypatch) as gets:
        await mv_handlers.job_changed(event={"type": "ADDED"}, body=kopf.Body(job),
                                      namespace=namespace, logger=log)  # fmt: skip
    assert gets == []
    kept = mv_handlers._versions.get((namespace, name))
    assert kept is not None and kept["status"]["phase"] == "Verifying"  # as written

    # The deployment controller writes usedBy; its event has not reached the operator
    # when the Job finishes and its pod reports.
    await kube.patch_status("ModelVersion", name, namespace, {"usedBy": ["web"]})
    job = await write_job_status(job, complete())
    report = {"verified": True, "digest": DIGEST, "files": {"model.joblib": "sha256:x"}}
    await make_pod(job, None, "Succeeded", terminated(0, report), name="verify")
    with counting(monkeypatch) as gets:
        await mv_handlers.job_changed(event={"type": "MODIFIED"}, body=kopf.Body(job),
                                      namespace=namespace, logger=log)  # fmt: skip
    assert gets == ["ModelVersion", "Job"]  # the second step's live read, after the 409
    status = (await kube.get(API_VERSION, "ModelVersion", name, namespace) or {})["status"]
    assert (status["phase"], status["usedBy"]) == ("Ready", ["web"])
    assert mv_handlers._versions.get((namespace, name)) is None  # a verdict: not kept
    for reason in ("Verifying", "Verified"):
        told = [e for e in events_of(namespace, reason) if e["involvedObject"]["name"] == name]
        assert len(told) == 1, reason


async def test_a_training_step_reads_the_trainingjob_and_its_job_from_the_watch(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The TrainingJob and its Job as their watch events brought them: the step that
    registers the version sends no GET; the finished TrainingJob is not kept."""
    await create_tj(namespace)
    await tj_handlers.follow(event={"type": "ADDED"}, body=kopf.Body(await get_tj(namespace)),
                             namespace=namespace, name="iris-rf", logger=log)  # fmt: skip
    job = await create_job(TrainingJob.model_validate(await get_tj(namespace)))
    job = await write_job_status(job, complete())
    await make_pod(job, None, "Succeeded", terminated(0, result()))
    with counting(monkeypatch) as gets:
        await tj_handlers.job_changed(event={"type": "MODIFIED"}, body=kopf.Body(job),
                                      namespace=namespace, logger=log)  # fmt: skip
    assert gets == []
    status = (await get_tj(namespace))["status"]
    assert (status["phase"], status["modelVersion"]) == ("Succeeded", "iris-v1")
    assert tj_handlers._trainings.get((namespace, "iris-rf")) is None


async def test_a_job_no_event_confirmed_for_a_while_is_read_live(
    namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Job deleted while a watch had to list again (after a 410) brings no DELETED
    event: once no event has brought it for `watched.MAX_AGE`, the poll reads it live
    and the TrainingJob fails (JobDeleted); before that, the poll reads memory."""
    now = [0.0]
    monkeypatch.setattr(tj_handlers, "_jobs", Latest(job_without_template, clock=lambda: now[0]))
    tj = await create_tj(namespace)
    await tj_handlers.follow(event={"type": "ADDED"}, body=kopf.Body(await get_tj(namespace)),
                             namespace=namespace, name="iris-rf", logger=log)  # fmt: skip
    job = await create_job(tj)
    await tj_handlers.job_changed(event={"type": "ADDED"}, body=kopf.Body(job),
                                  namespace=namespace, logger=log)  # fmt: skip
    assert (await get_tj(namespace))["status"]["reason"] == "JobCreated"
    await kube.delete("batch/v1", "Job", job["metadata"]["name"], namespace, background=True)
    now[0] += watched.MAX_AGE - 1
    await tj_handlers.poll((namespace, "iris-rf"), log)
    assert (await get_tj(namespace))["status"]["reason"] == "JobCreated"
    now[0] += 2
    await tj_handlers.poll((namespace, "iris-rf"), log)
    status = (await get_tj(namespace))["status"]
    assert (status["phase"], status["reason"]) == ("Failed", "JobDeleted")
