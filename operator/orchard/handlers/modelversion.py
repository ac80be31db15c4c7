"""ModelVersion controller: verify the artifact with a short Job, set ArtifactVerified
and Ready, and refuse deletion while a ModelDeployment uses the version.

The verification is a real check, not trust: a pod in the trainer image fetches the
artifact and compares every digest with the one the ModelVersion records. Its Job is
watched like the training Jobs: event handlers on the Job and its pod, and a slow timer
only while the verification is unfinished.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from orchard import kube
from orchard.api.common import API_VERSION, GROUP, VERSION, to_k8s
from orchard.api.modelversion import ModelVersion
from orchard.builders.common import JOB_UID_LABEL, TrainerSettings, owned_by
from orchard.builders.modelversion import MODELVERSION_LABEL, verify_job, verify_job_name
from orchard.decisions import policy as pol
from orchard.decisions.modelversion import (
    Verification,
    deployments_using,
    verification_outcome,
    verification_status,
)
from orchard.handlers import policy

RBAC_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": ["modelversions"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [GROUP], "resources": ["modelversions/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [GROUP], "resources": ["modelversions/finalizers"], "verbs": ["update"]},
    {"apiGroups": [GROUP], "resources": ["modeldeployments"], "verbs": ["get", "list"]},
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["get", "list", "watch", "create", "patch"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
]

POLL_SECONDS = 20.0
IN_USE_RETRY_SECONDS = 15.0
IN_USE_EVENT_EVERY = 8  # retries between two InUse events (about two minutes)

_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)


def unverified(status: Mapping[str, Any], **_: Any) -> bool:
    """The verification has not reached a verdict yet."""
    return status.get("phase") not in ("Ready", "Failed")


def _parse(body: Mapping[str, Any]) -> ModelVersion:
    try:
        return ModelVersion.model_validate(dict(body))
    except ValidationError as exc:
        raise kopf.PermanentError(
            f"ModelVersion does not match the operator's schema: {exc}"
        ) from exc


@kopf.on.resume(GROUP, VERSION, "modelversions")
@kopf.on.create(GROUP, VERSION, "modelversions")
async def start(
    body: kopf.Body, namespace: str | None, name: str, logger: kopf.Logger, **_: Any
) -> None:
    """Start the verification Job (once; a 409 means it exists), then sync."""
    mv = _parse(body)
    if not unverified(body.status):
        return
    violations = pol.modelversion_violations(mv.spec, policy.current())
    # Refused before anything exists; a Job made under an earlier policy runs on.
    if (
        violations
        and await kube.get("batch/v1", "Job", verify_job_name(mv), str(namespace)) is None
    ):
        refused = Verification("Failed", pol.REASON, pol.summary(violations))
        await _write_status(dict(body), mv, refused, logger)
        return
    with contextlib.suppress(kube.Conflict):  # it exists: this is a resume
        await kube.create(verify_job(mv, TrainerSettings.from_env()))
    await sync(str(namespace), name, logger)


@kopf.on.event("batch", "v1", "jobs", labels={MODELVERSION_LABEL: kopf.PRESENT})
async def job_changed(
    body: kopf.Body, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """A verification Job changed: mirror it into its ModelVersion."""
    owner = body.get("metadata", {}).get("labels", {}).get(MODELVERSION_LABEL)
    if owner:
        await sync(str(namespace), owner, logger)


@kopf.on.event("v1", "pods", labels={MODELVERSION_LABEL: kopf.PRESENT})
async def pod_changed(
    body: kopf.Body, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """A verifier pod changed: its exit decides before its Job says so."""
    owner = body.get("metadata", {}).get("labels", {}).get(MODELVERSION_LABEL)
    if owner:
        await sync(str(namespace), owner, logger)


@kopf.timer(
    GROUP,
    VERSION,
    "modelversions",
    interval=POLL_SECONDS,
    initial_delay=POLL_SECONDS,
    when=unverified,
)
async def poll(namespace: str | None, name: str, logger: kopf.Logger, **_: Any) -> None:
    """Only while unverified: catch what does not change the Job (image pulls)."""
    await sync(str(namespace), name, logger)


async def sync(namespace: str, name: str, logger: kopf.Logger) -> None:
    """Read the ModelVersion and its verification Job and pods; write status; tell."""
    async with _locks[(namespace, name)]:
        body = await kube.get(API_VERSION, "ModelVersion", name, namespace)
        if body is None:
            _locks.pop((namespace, name), None)
            return
        if not unverified(body.get("status") or {}):
            return
        mv = _parse(body)
        job = await kube.get("batch/v1", "Job", verify_job_name(mv), namespace)
        if job is not None and not owned_by(job, mv.metadata.uid):
            job = None  # someone else's Job by that name: not evidence about this artifact
        pods = (
            await kube.list_objects(
                "v1", "Pod", namespace, labels={JOB_UID_LABEL: job["metadata"]["uid"]}
            )
            if job is not None
            else []
        )
        outcome = verification_outcome(job, pods)
        if outcome.stop_job and job is not None:
            with contextlib.suppress(kube.NotFound):
                await kube.merge_patch(
                    "batch/v1", "Job", verify_job_name(mv), namespace, {"spec": {"suspend": True}}
                )
        await _write_status(body, mv, outcome, logger)


async def _write_status(
    body: dict[str, Any], mv: ModelVersion, outcome: Verification, logger: kopf.Logger
) -> None:
    """The status an outcome asks for, and an event when the phase changes."""
    new = verification_status(mv.status, outcome, generation=mv.metadata.generation)
    new_status = to_k8s(new)
    if new_status == to_k8s(mv.status):
        return
    # usedBy and evaluations belong to the ModelDeployment controller: never write back a
    # stale copy.
    new_status.pop("usedBy", None)
    new_status.pop("evaluations", None)
    name, namespace = str(mv.metadata.name), str(mv.metadata.namespace)
    await kube.patch_status("ModelVersion", name, namespace, new_status)
    if new.phase != mv.status.phase:
        logger.info("phase %s -> %s (%s)", mv.status.phase, new.phase, outcome.reason)
        type_ = "Warning" if new.phase == "Failed" else "Normal"
        try:
            await kube.post_event(body, outcome.reason, outcome.message, type_=type_)
        except kube.KubeError as err:
            logger.warning("cannot post event %s: %s", outcome.reason, err)


@kopf.on.delete(GROUP, VERSION, "modelversions")
async def guard_deletion(
    body: kopf.Body, namespace: str | None, name: str, retry: int, logger: kopf.Logger, **_: Any
) -> None:
    """Hold deletion while a ModelDeployment serves (or is moving to or from) this version.

    Retries with a delay until nothing uses it; says so in an event now and then. When
    nothing uses it (or ModelDeployments are not installed) deletion goes ahead at once.
    """
    deployments = await kube.list_objects(API_VERSION, "ModelDeployment", str(namespace))
    users = deployments_using(name, deployments)
    if not users:
        return
    message = (
        f"ModelVersion {name} is used by ModelDeployment(s) {', '.join(users)}; "
        "it will be deleted once none uses it"
    )
    if retry % IN_USE_EVENT_EVERY == 0:
        try:
            await kube.post_event(dict(body), "InUse", message, type_="Warning")
        except kube.KubeError as err:
            logger.warning("cannot post event InUse: %s", err)
    logger.info(message)
    raise kopf.TemporaryError(message, delay=IN_USE_RETRY_SECONDS)
