"""ModelVersion controller: verify the artifact with a short Job, set ArtifactVerified
and Ready, and hold deletion while a ModelDeployment uses the version (the only
finalizer Orchard puts on anything, and only while status.usedBy is not empty).

The verification is a real check, not trust: a pod in the server image fetches the
artifact and compares every digest with the one the ModelVersion records, then finds
the runtime a server would answer through (`status.runtime`). Its Job is
watched like the training Jobs: event handlers on the Job and its pod, and a slow poll
only while the verification is unfinished (a loop of `handlers.loops`, no finalizer).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from orchard import kube
from orchard.api.common import API_VERSION, FINALIZER, GROUP, VERSION, status_patch, to_k8s
from orchard.api.modelversion import ModelVersion
from orchard.builders.common import ServerSettings, TrainerSettings, owned_by
from orchard.builders.modelversion import MODELVERSION_LABEL, verify_job, verify_job_name
from orchard.decisions import policy as pol
from orchard.decisions import retries
from orchard.decisions.modelversion import (
    IN_USE,
    INVALID_JOB,
    JOB_CONFLICT,
    START_FAILED,
    VERIFYING,
    Verification,
    deletion_blocked,
    deletion_guarded,
    deployments_using,
    in_use_message,
    verification_outcome,
    verification_status,
)
from orchard.handlers import children, policy
from orchard.handlers.loops import Loops
from orchard.handlers.serial import Serial, live_after_first
from orchard.handlers.watched import Latest, job_without_template

RBAC_RULES: list[dict[str, Any]] = [
    # patch: the guard's finalizer taken off when the operator stops (release_guards).
    {
        "apiGroups": [GROUP],
        "resources": ["modelversions"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": [GROUP], "resources": ["modelversions/status"], "verbs": ["get", "patch"]},
    {"apiGroups": [GROUP], "resources": ["modelversions/finalizers"], "verbs": ["update"]},
    {"apiGroups": [GROUP], "resources": ["modeldeployments"], "verbs": ["get", "list"]},
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        # delete: a stale verification Job of an earlier version of the same name
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
]

POLL_SECONDS = retries.QUIET_POLL.first
JOB_REMADE_MESSAGE = "the verification Job was gone before its verdict, and is made again"

_serial = Serial()
_polls = Loops("ModelVersion poll", retry_after=POLL_SECONDS)
_guarded: set[tuple[str, str]] = set()  # versions seen holding the guard's finalizer
# What a step reads, as the watch brought it: the versions under verification, and the
# verification Jobs (their status; `handlers.watched`).
_versions = Latest()
_jobs = Latest(job_without_template)


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
    body: kopf.Body,
    namespace: str | None,
    name: str,
    logger: kopf.Logger,
    retry: int = 0,
    **_: Any,
) -> None:
    """Start the verification Job (once, claimed by owner), then sync. Like a
    TrainingJob's start: a refusal no retry can help fails the version at once, any other
    error is retried after 5, 10, 20, 40 and 80 s, then fails it with StartFailed."""
    mv = _parse(body)
    if not unverified(body.status):
        return
    try:
        refusal = await make_job(mv)
    except Exception as err:  # the API server away, a 5xx, RBAC: it may recover
        delay = retries.TRAINING_START.delay(retry)
        if delay is None:
            message = retries.gave_up_message("starting the verification", retry + 1, str(err))
            await _write_status(dict(body), mv, Verification("Failed", START_FAILED, message),
                                logger)  # fmt: skip
            return
        raise kopf.TemporaryError(f"cannot start the verification: {err}", delay=delay) from err
    if refusal is not None:
        await _write_status(dict(body), mv, refusal, logger)
        return
    await sync(str(namespace), name, logger)


async def make_job(mv: ModelVersion) -> Verification | None:
    """Create the verification Job unless it exists (claimed by owner); the verdict when
    no Job can be made: the policy refuses it, its name is taken, the API server refuses
    it. Other errors are raised, for the caller to retry."""
    namespace, name = str(mv.metadata.namespace), str(mv.metadata.name)
    violations = pol.modelversion_violations(mv.spec, policy.current())
    # Refused before anything exists; a Job made under an earlier policy runs on.
    if violations and await kube.get("batch/v1", "Job", verify_job_name(mv), namespace) is None:
        return Verification("Failed", pol.REASON, pol.summary(violations))
    job = verify_job(mv, TrainerSettings.from_env(), ServerSettings.from_env())
    try:
        made = await children.ensure_child("ModelVersion", name, mv.metadata.uid, job, JOB_CONFLICT)
    except children.ChildConflict as err:
        return Verification("Failed", err.reason, str(err))
    except kube.Invalid as err:
        return Verification("Failed", INVALID_JOB, f"the API server refused the Job: {err}")
    _jobs.see("ADDED", made)  # the step that follows reads it before its ADDED event comes
    return None


@kopf.on.event("batch", "v1", "jobs", labels={MODELVERSION_LABEL: kopf.PRESENT})
async def job_changed(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, logger: kopf.Logger,
    **_: Any,
) -> None:  # fmt: skip
    """A verification Job changed: mirror it into its ModelVersion."""
    _jobs.see(event.get("type"), body)
    owner = body.get("metadata", {}).get("labels", {}).get(MODELVERSION_LABEL)
    if owner:
        await sync(str(namespace), owner, logger, coalesce=True)


@kopf.on.event("v1", "pods", labels={MODELVERSION_LABEL: kopf.PRESENT})
async def pod_changed(
    body: kopf.Body, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """A verifier pod changed: its exit decides before its Job says so."""
    owner = body.get("metadata", {}).get("labels", {}).get(MODELVERSION_LABEL)
    if owner:
        await sync(str(namespace), owner, logger, coalesce=True)


@kopf.on.event(GROUP, VERSION, "modelversions")
async def follow(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str,
    logger: kopf.Logger, **_: Any,
) -> None:  # fmt: skip
    """Poll only while unverified: catch what does not change the Job (image pulls). A
    loop, not a Kopf timer, so that no finalizer holds the ModelVersion. The body is kept
    for the steps (`_versions`) until the verdict."""
    key = (str(namespace), name)
    wanted = (
        event.get("type") != "DELETED"
        and not body.get("metadata", {}).get("deletionTimestamp")
        and unverified(body.get("status") or {})
    )
    _versions.see(event.get("type"), body, wanted=wanted)
    ticks = itertools.count()  # each event starts the poll's backoff again
    _polls.follow(key, wanted, lambda: poll(key, logger, next(ticks)), initial_delay=POLL_SECONDS)
    if event.get("type") == "DELETED":
        _serial.forget(key)
    if event.get("type") != "DELETED" and FINALIZER in (
        body.get("metadata", {}).get("finalizers") or []
    ):
        _guarded.add(key)
    else:
        _guarded.discard(key)


@kopf.on.cleanup()
async def release_guards(logger: kopf.Logger, **_: Any) -> None:
    """The operator stops (an upgrade, an uninstall): take the guard's finalizer off
    every version it holds, so that nothing waits for an operator that may not come back
    (uninstalling deletes the deployments, the versions and the CRDs at once). A started
    operator puts it back within seconds on the versions still in use."""
    for namespace, name in sorted(_guarded):
        try:
            await release(namespace, name)
        except kube.KubeError as err:  # another try would not outlive the operator
            logger.warning(
                "cannot take the finalizer off ModelVersion %s/%s: %s", namespace, name, err
            )
    _guarded.clear()


async def release(namespace: str, name: str) -> None:
    """Remove Orchard's finalizer from one ModelVersion (only if unchanged since read)."""
    body = await kube.get(API_VERSION, "ModelVersion", name, namespace)
    held = list((body or {}).get("metadata", {}).get("finalizers") or [])
    if body is None or FINALIZER not in held:
        return
    meta = {
        "finalizers": [f for f in held if f != FINALIZER],
        "resourceVersion": body["metadata"]["resourceVersion"],
    }
    await kube.merge_patch(API_VERSION, "ModelVersion", name, namespace, {"metadata": meta})


async def poll(key: tuple[str, str], logger: kopf.Logger, tick: int = 0) -> float:
    """Sync; the next poll waits longer the longer no event came (`retries.QUIET_POLL`)."""
    await sync(key[0], key[1], logger, coalesce=True)
    return retries.QUIET_POLL.delay(tick) or retries.MAX_DELAY


async def sync(namespace: str, name: str, logger: kopf.Logger, *, coalesce: bool = False) -> None:
    """Read the ModelVersion and its verification Job and pods; write status; tell. A
    watch event's sync (`coalesce`) is left to one that waits already (`handlers.serial`).
    The first read of the version and its Job is the watch's (`handlers.watched`); after a
    conflicting status write, the step is taken again on a live read."""
    step = live_after_first(lambda live: _step(namespace, name, logger, live=live))
    await _serial.step((namespace, name), step, f"ModelVersion {name}", coalesce=coalesce)


async def _step(namespace: str, name: str, logger: kopf.Logger, *, live: bool) -> None:
    """One read → decide → write status of a ModelVersion (under its lock)."""
    key = (namespace, name)
    body = None if live else _versions.get(key)
    if body is None:
        body = await kube.get(API_VERSION, "ModelVersion", name, namespace)
    if body is None:
        return
    if not unverified(body.get("status") or {}):
        return
    mv = _parse(body)
    read_at = body["metadata"].get("resourceVersion")
    job = None if live else _jobs.get((namespace, verify_job_name(mv)))
    if job is None:
        job = await kube.get("batch/v1", "Job", verify_job_name(mv), namespace)
    if job is not None and not owned_by(job, mv.metadata.uid):
        job = None  # someone else's Job by that name: not evidence about this artifact
    if job is None and mv.status.phase is not None:
        # Made once and gone (deleted by hand, or by its TTL before a verdict was
        # seen): the check is read-only, so it is made again, and status says so.
        try:
            refusal = await make_job(mv)
        except kube.KubeError as err:  # the poll tries again
            logger.warning("cannot make the verification Job again: %s", err)
            return
        outcome = refusal or Verification("Pending", VERIFYING, JOB_REMADE_MESSAGE)
        await _write_status(body, mv, outcome, logger, resource_version=read_at)
        return
    pods = await children.job_pods(job) if job is not None else []
    outcome = verification_outcome(job, pods)
    if outcome.stop_job and job is not None:
        with contextlib.suppress(kube.NotFound):
            await kube.merge_patch(
                "batch/v1", "Job", verify_job_name(mv), namespace, {"spec": {"suspend": True}}
            )
    await _write_status(body, mv, outcome, logger, resource_version=read_at)


async def _write_status(
    body: dict[str, Any],
    mv: ModelVersion,
    outcome: Verification,
    logger: kopf.Logger,
    *,
    resource_version: str | None = None,
) -> None:
    """The status an outcome asks for, and an event when the phase changes. With the
    `resource_version` it was decided on, `kube.Conflict` when the version changed since."""
    new = verification_status(mv.status, outcome, generation=mv.metadata.generation)
    new_status = to_k8s(new)
    if new_status == to_k8s(mv.status):
        return
    # usedBy and evaluations belong to the ModelDeployment controller: never write back a
    # stale copy.
    new_status.pop("usedBy", None)
    new_status.pop("evaluations", None)
    name, namespace = str(mv.metadata.name), str(mv.metadata.namespace)
    written = await kube.patch_status(
        "ModelVersion", name, namespace, new_status, resource_version=resource_version
    )
    # Written over the resourceVersion the step read, the version as written is the
    # newest there is (a change in between would have been a 409): the next step reads
    # it, not the event before it, which may reach the operator after the Job's next one.
    # (`start` names no resourceVersion: should its copy be behind, the next step's write
    # is the 409 that reads live.)
    _versions.see("MODIFIED", written, wanted=unverified(written.get("status") or {}))
    if new.phase != mv.status.phase:
        logger.info("phase %s -> %s (%s)", mv.status.phase, new.phase, outcome.reason)
        type_ = "Warning" if new.phase == "Failed" else "Normal"
        try:
            await kube.post_event(body, outcome.reason, outcome.message, type_=type_)
        except kube.KubeError as err:
            logger.warning("cannot post event %s: %s", outcome.reason, err)


def guarded(status: Mapping[str, Any], annotations: Mapping[str, str], **_: Any) -> bool:
    """Kopf's filter of the guard: a finalizer only while a deployment uses the version."""
    return deletion_guarded(status, annotations)


@kopf.on.delete(GROUP, VERSION, "modelversions", when=guarded)
async def guard_deletion(
    body: kopf.Body, namespace: str | None, name: str, retry: int, logger: kopf.Logger, **_: Any
) -> None:
    """Hold deletion while a ModelDeployment serves (or is moving to or from) this version.

    Only while status.usedBy names one does the version carry a finalizer (Kopf adds and
    removes it as `guarded` says), so with no deployment, or with the annotation
    orchard.dev/allow-deletion=true, deletion never waits for the operator. Here the
    deployments are read again: those gone or being deleted no longer count, and when
    none is left usedBy is cleared and the deletion goes ahead. Else the DeletionBlocked
    condition (InUse) and a Warning event say why, and the check comes again with
    backoff (15 s doubling, at most 10 min), or at once when usedBy changes.
    """
    namespace = str(namespace)
    mv = _parse(body)
    deployments = await kube.list_objects(API_VERSION, "ModelDeployment", namespace)
    users = deployments_using(name, deployments)
    delay = retries.DELETION_GUARD.delay(retry) or retries.MAX_DELAY
    message = in_use_message(name, users, delay)
    new = deletion_blocked(mv.status, users, message, generation=mv.metadata.generation)
    patch = status_patch(to_k8s(mv.status), to_k8s(new))
    if patch:
        await kube.patch_status("ModelVersion", name, namespace, patch)
    if not users:
        logger.info("no ModelDeployment uses %s any more: deletion goes ahead", name)
        return
    try:
        await kube.post_event(dict(body), IN_USE, message, type_="Warning")
    except kube.KubeError as err:
        logger.warning("cannot post event InUse: %s", err)
    logger.info(message)
    raise kopf.TemporaryError(message, delay=delay)
