"""TrainingJob controller: run the trainer as a batch/v1 Job, mirror it into status, and
register the (best) result as a ModelVersion exactly once.

How the Job is watched: event handlers on the Jobs and pods carrying the TrainingJob
label (filtered on the server by label selectors) react the moment a pod starts, exits
or cannot pull its image, and when the Job's own status changes; a slow poll, running
only while a TrainingJob is unfinished, is the safety net for a watch that went silent
(a loop of `handlers.loops`, not a Kopf timer: nothing puts a finalizer on a TrainingJob,
whose children go by their ownerReferences).
All run the same `sync`, serialised per TrainingJob.

At most ORCHARD_MAX_RUNNING_TRAININGS train at once (`decisions.queue`): a TrainingJob
beyond that waits Pending with reason Queued and its place, and is started when a slot
frees, by the event that ends another or by its own poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import itertools
import os
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from orchard import kube
from orchard.api.common import API_VERSION, GROUP, VERSION, status_patch, to_k8s
from orchard.api.trainingjob import TrainingJob
from orchard.builders.common import (
    COMPONENT_LABEL,
    PART_OF,
    PART_OF_LABEL,
    SERVING_COMPONENT,
    TRAINING_COMPONENT,
    TRAININGJOB_LABEL,
    VERIFICATION_COMPONENT,
    TrainerSettings,
    label_selector,
    owned_by,
)
from orchard.builders.modelversion import TRAININGJOB_UID_LABEL, model_version, version_name
from orchard.builders.training import config_map, job_name, training_job
from orchard.contracts import TrainerReport
from orchard.decisions import policy as pol
from orchard.decisions import retries
from orchard.decisions.queue import TrainingQueue, holds_slot, max_running_setting
from orchard.decisions.training import (
    JOB_CONFLICT,
    NO_ARTIFACT_STORE,
    NO_ARTIFACT_STORE_MESSAGE,
    QUEUED,
    SPEC_CONFLICT,
    START_FAILED,
    Outcome,
    artifact_store,
    missing_job,
    next_version,
    registered_version,
    training_outcome,
    training_status,
)
from orchard.handlers import children, policy
from orchard.handlers.loops import Loops
from orchard.handlers.serial import Serial, live_after_first, until_written
from orchard.handlers.watched import Latest, job_without_template

RBAC_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": ["trainingjobs"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [GROUP], "resources": ["trainingjobs/status"], "verbs": ["get", "patch"]},
    # blockOwnerDeletion on the children's ownerReferences needs this.
    {"apiGroups": [GROUP], "resources": ["trainingjobs/finalizers"], "verbs": ["update"]},
    {"apiGroups": [GROUP], "resources": ["modelversions"], "verbs": ["get", "list", "create"]},
    {
        "apiGroups": ["batch"],
        "resources": ["jobs"],
        "verbs": ["get", "list", "watch", "create", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    # get and delete: a spec ConfigMap found by name is claimed by owner, a stale one
    # (an earlier TrainingJob's of the same name) replaced; stale Jobs likewise.
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "delete"]},
]

POLL_SECONDS = retries.QUIET_POLL.first
ORCHARD_JOBS = label_selector({PART_OF_LABEL: PART_OF})
# Orchard's own pods: training and verification (TrainingJob, ModelVersion) and serving
# (ModelDeployment: a pod that refuses its artifact, `modeldeployment.serving_pod_refused`).
ORCHARD_PODS = label_selector(
    {
        PART_OF_LABEL: PART_OF,
        COMPONENT_LABEL: (TRAINING_COMPONENT, VERIFICATION_COMPONENT, SERVING_COMPONENT),
    }
)
MAX_VERSION_ATTEMPTS = 5

_serial = Serial()
_polls = Loops("TrainingJob poll", retry_after=POLL_SECONDS)
_queue = TrainingQueue()
_queued_written: dict[tuple[str, str], int | None] = {}  # the place each status shows
_starting: set[asyncio.Task[None]] = set()
# What a step reads, as the watch brought it (`handlers.watched`): the unfinished
# TrainingJobs, and the training Jobs without their pod template.
_trainings = Latest()
_jobs = Latest(job_without_template)


def unfinished(status: Mapping[str, Any], **_: Any) -> bool:
    """Still needs watching: not finished, or finished but not yet registered."""
    phase = status.get("phase")
    return phase not in ("Succeeded", "Failed") or (
        phase == "Succeeded" and not status.get("modelVersion")
    )


def _parse(body: kopf.Body | dict[str, Any]) -> TrainingJob:
    try:
        return TrainingJob.model_validate(dict(body))
    except ValidationError as exc:
        # The API server validates the same schema, so this is an operator/CRD skew.
        raise kopf.PermanentError(
            f"TrainingJob does not match the operator's schema: {exc}"
        ) from exc


async def ensure_child(tj: TrainingJob, obj: dict[str, Any], conflict: str) -> dict[str, Any]:
    """Create a child of the TrainingJob once, claimed by owner (`handlers.children`)."""
    return await children.ensure_child("TrainingJob", str(tj.metadata.name), tj.metadata.uid, obj,
                                conflict)  # fmt: skip


@kopf.on.startup()
def watch_only_orchard_batch(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Filter the Job and pod watches on the server: Orchard follows only the Jobs it made
    and its own pods, never every pod of the cluster. (A controller that needs other pods
    must widen the pod selector here.)"""
    settings.watching.label_selectors["batch", "jobs"] = ORCHARD_JOBS
    settings.watching.label_selectors["v1", "pods"] = ORCHARD_PODS


@kopf.on.startup()
async def count_running_trainings(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Read the queue's limit, and count the TrainingJobs that train before any other is
    admitted (the create and resume handlers of many objects run at once)."""
    try:
        _queue.limit = max_running_setting(os.environ)
    except ValueError as exc:
        raise kopf.PermanentError(str(exc)) from exc
    options = memo.get("options")
    patterns: tuple[str, ...] = ()
    if options is not None and not options.all_namespaces:
        patterns = tuple(options.namespaces)
    for body in await kube.list_objects(API_VERSION, "TrainingJob", kube.ALL_NAMESPACES):
        meta, status = body["metadata"], body.get("status") or {}
        if patterns and not any(fnmatch.fnmatchcase(meta["namespace"], p) for p in patterns):
            continue
        if holds_slot(status.get("phase"), status.get("reason")):
            _queue.hold((meta["namespace"], meta["name"]))
    logger.info(
        "training queue: %d TrainingJobs training, at most %s at once",
        len(_queue.running), _queue.limit or "any",
    )  # fmt: skip


@kopf.on.resume(GROUP, VERSION, "trainingjobs")
@kopf.on.create(GROUP, VERSION, "trainingjobs")
async def start(
    body: kopf.Body,
    logger: kopf.Logger,
    retry: int = 0,
    **_: Any,
) -> None:
    """Start the training, or queue it when ORCHARD_MAX_RUNNING_TRAININGS train already."""
    if unfinished(body.status):
        await begin(_parse(body), logger, retry)


async def begin(tj: TrainingJob, logger: kopf.Logger, retry: int) -> None:
    """Check the spec against the policy; when admitted by the queue, create the spec
    ConfigMap and the Job (once, claimed by owner); then sync.

    A refusal no retry can help (400/422, a name taken by someone else's object) fails
    the TrainingJob at once; any other error is retried with backoff (5, 10, 20, 40,
    80 s: `retry` counts the tries), and the sixth failure fails it with reason StartFailed.
    """
    namespace, name = str(tj.metadata.namespace), str(tj.metadata.name)
    settings = TrainerSettings.from_env()
    violations = pol.trainingjob_violations(tj.spec, policy.current(), settings.image)
    store = artifact_store(tj.spec, settings.default_artifacts)
    if violations or store is None:
        if await kube.get("batch/v1", "Job", job_name(tj), namespace) is None:
            # Refused before anything exists.
            if violations:
                reason, message = pol.REASON, pol.summary(violations)
            else:
                reason, message = NO_ARTIFACT_STORE, NO_ARTIFACT_STORE_MESSAGE
            if _queue.forget((namespace, name)):
                _start_next(logger)
            await _fail(namespace, name, reason, message)
            return
        # A Job made under an earlier policy or default store runs on.
        await sync(namespace, name, logger)
        return
    if not await _admitted(tj):
        await sync(namespace, name, logger)  # Queued, with its place
        return
    try:
        await ensure_child(tj, config_map(tj), SPEC_CONFLICT)
        made = await ensure_child(tj, training_job(tj, store, settings), JOB_CONFLICT)
    except children.ChildConflict as err:
        await _fail(namespace, name, err.reason, str(err))
        return
    except kube.Invalid as err:
        # The API server refused what the spec asks for (e.g. malformed resources): no
        # retry can help, so say why in status and stop.
        await _fail(namespace, name, "InvalidJob", f"the API server refused the Job: {err}")
        raise kopf.PermanentError(f"the API server refused the Job: {err}") from err
    except Exception as err:  # the API server away, a 5xx, RBAC: it may recover
        delay = retries.TRAINING_START.delay(retry)
        tries = retries.TRAINING_START.tries
        if delay is None:
            message = retries.gave_up_message("starting the training", retry + 1, str(err))
            await _fail(namespace, name, START_FAILED, message)
            return
        raise kopf.TemporaryError(
            f"cannot start the training (try {retry + 1} of {tries}): {err}", delay=delay
        ) from err
    _jobs.see("ADDED", made)  # the sync below reads it before its ADDED event comes
    try:
        await sync(namespace, name, logger)
    except Exception as err:  # started; the poll syncs again
        logger.warning("sync after start failed, the poll retries: %s", err)


async def _admitted(tj: TrainingJob) -> bool:
    """Whether the TrainingJob may have its Job: it trains already (by its status, or by
    a Job made just before a restart), it is trained, or the queue admits it now."""
    key = (str(tj.metadata.namespace), str(tj.metadata.name))
    if tj.status.phase == "Succeeded":  # trained, registering: it needs no slot
        return True
    if holds_slot(tj.status.phase, tj.status.reason):
        _queue.hold(key)
        return True
    if _queue.admit(key, tj.metadata.creation_timestamp or ""):
        return True
    if await kube.get("batch/v1", "Job", job_name(tj), key[0]) is not None:
        _queue.hold(key)
        return True
    return False


def _start_next(logger: kopf.Logger) -> None:
    """Start as many queued TrainingJobs as there are free slots, in turn."""
    for key in _queue.admit_next():
        task = asyncio.create_task(
            _start_admitted(key, logger), name=f"orchard start {key[0]}/{key[1]}"
        )
        _starting.add(task)
        task.add_done_callback(_starting.discard)


async def _start_admitted(key: tuple[str, str], logger: kopf.Logger) -> None:
    """`begin` for a TrainingJob the queue admitted, with the same bounded retries as
    the create handler's (here, in this task)."""
    namespace, name = key
    for attempt in itertools.count():
        try:
            body = await kube.get(API_VERSION, "TrainingJob", name, namespace)
            if body is None or not unfinished(body.get("status") or {}):
                if _queue.forget(key):
                    _start_next(logger)
                return
            await begin(_parse(body), logger, attempt)
            return
        except kopf.PermanentError:
            return
        except kopf.TemporaryError as err:
            delay = err.delay or POLL_SECONDS
        except Exception as err:  # the API server away: it may recover
            logger.warning("cannot start queued TrainingJob %s/%s yet: %s", namespace, name, err)
            delay = POLL_SECONDS
        await asyncio.sleep(delay)


@kopf.on.update(GROUP, VERSION, "trainingjobs", field="spec")
async def spec_changed(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    """A run cannot change under way (a Job's pod template is immutable): say so."""
    message = (
        "spec changed after training started; the change does not apply to this run "
        "(create a new TrainingJob to train with it)"
    )
    logger.warning(message)
    try:
        await kube.post_event(dict(body), "SpecChangeIgnored", message, type_="Warning")
    except kube.KubeError as err:
        logger.warning("cannot post event SpecChangeIgnored: %s", err)


async def _fail(namespace: str, name: str, reason: str, message: str) -> None:
    """Fail the TrainingJob with a reason, under its lock and only over the status it was
    read with (a sync finishing meanwhile is never overwritten)."""

    async def attempt() -> None:
        body = await kube.get(API_VERSION, "TrainingJob", name, namespace)
        if body is None or not unfinished(body.get("status") or {}):
            return
        tj = _parse(body)
        outcome = Outcome("Failed", reason, message)
        new = training_status(
            tj.status, outcome, tj.spec, generation=tj.metadata.generation,
            job_name=job_name(tj),
        )  # fmt: skip
        await kube.patch_status(
            "TrainingJob", name, namespace, to_k8s(new),
            resource_version=body["metadata"]["resourceVersion"],
        )  # fmt: skip
        await kube.post_event(body, reason, message, type_="Warning")

    async with _serial.lock((namespace, name)):
        await until_written(attempt, f"TrainingJob {name}")


@kopf.on.event("batch", "v1", "jobs", labels={TRAININGJOB_LABEL: kopf.PRESENT})
async def job_changed(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, logger: kopf.Logger,
    **_: Any,
) -> None:  # fmt: skip
    """A training Job changed: mirror it into its TrainingJob."""
    _jobs.see(event.get("type"), body)
    owner = body.get("metadata", {}).get("labels", {}).get(TRAININGJOB_LABEL)
    if owner:
        await sync(str(namespace), owner, logger, coalesce=True)


@kopf.on.event("v1", "pods", labels={TRAININGJOB_LABEL: kopf.PRESENT})
async def pod_changed(
    body: kopf.Body, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """A trainer pod changed: its exit (and result) decides before the Job says so, and a
    pod that cannot pull its image shows at once."""
    owner = body.get("metadata", {}).get("labels", {}).get(TRAININGJOB_LABEL)
    if owner:
        await sync(str(namespace), owner, logger, coalesce=True)


@kopf.on.event(GROUP, VERSION, "trainingjobs")
async def follow(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str,
    logger: kopf.Logger, **_: Any,
) -> None:  # fmt: skip
    """Poll only while unfinished: what does not change the Job (image pulls) still
    shows. A loop, not a Kopf timer, so that no finalizer holds the TrainingJob. The body
    is kept for the steps (`_trainings`) until it is finished."""
    key = (str(namespace), name)
    status = body.get("status") or {}
    deleting = bool(body.get("metadata", {}).get("deletionTimestamp"))
    gone = event.get("type") == "DELETED" or deleting
    wanted = not gone and unfinished(status)
    _trainings.see(event.get("type"), body, wanted=wanted)
    if (gone or not wanted or status.get("phase") == "Succeeded") and _queue.forget(key):
        _start_next(logger)  # it no longer trains: the next in turn may
    ticks = itertools.count()  # each event starts the poll's backoff again
    _polls.follow(key, wanted, lambda: poll(key, logger, next(ticks)), initial_delay=POLL_SECONDS)
    if event.get("type") == "DELETED":
        _serial.forget(key)
        _queued_written.pop(key, None)


async def poll(key: tuple[str, str], logger: kopf.Logger, tick: int = 0) -> float:
    """Sync; a queued TrainingJob whose status shows its place well enough
    (`place_worth_writing`) costs no API request (and polls at the first interval, to
    start as soon as a slot's event was missed); any other waits longer the longer no
    event came (`retries.QUIET_POLL`)."""
    if key in _queue.waiting:
        _start_next(logger)  # a slot freed whose event was missed
        place = _queue.place(key)
        if place is not None and not _queue.place_worth_writing(place, _queued_written.get(key)):
            return POLL_SECONDS
    await sync(key[0], key[1], logger, coalesce=True)
    return retries.QUIET_POLL.delay(tick) or retries.MAX_DELAY


async def sync(namespace: str, name: str, logger: kopf.Logger, *, coalesce: bool = False) -> None:
    """Read the TrainingJob, its Job and pods; decide; register; write status; tell.

    The first read of the TrainingJob and its Job is the watch's (`handlers.watched`).
    The status is written only over the object as read (its resourceVersion): when it
    changed meanwhile the step is taken again on a live read. A watch event's sync
    (`coalesce`) is left to one that waits already (`handlers.serial`)."""
    step = live_after_first(lambda live: _step(namespace, name, logger, live=live))
    await _serial.step((namespace, name), step, f"TrainingJob {name}", coalesce=coalesce)


async def _step(namespace: str, name: str, logger: kopf.Logger, *, live: bool) -> None:
    """One read → decide → register → write status of a TrainingJob (under its lock)."""
    body = None if live else _trainings.get((namespace, name))
    if body is None:
        body = await kube.get(API_VERSION, "TrainingJob", name, namespace)
    if body is None:
        return
    tj = _parse(body)
    if not unfinished(body.get("status") or {}):
        return
    key = (namespace, name)
    place = _queue.place(key)
    if place is not None:  # no Job yet, by the queue's own word: nothing to read
        shown = tj.status.queue_position if tj.status.reason == QUEUED else None
        if _queue.place_worth_writing(place, shown):
            outcome = Outcome("Pending", QUEUED, _queue.queued_message(place))
        else:  # the status says as much as it must: leave it
            place, outcome = shown, Outcome("Pending", QUEUED, tj.status.message or "")
    else:
        outcome = await _observe(tj, live=live)
    if outcome.stop_job:
        # The run is over (its pod can never start): stop the Job's pods, keep the Job.
        await _suspend(job_name(tj), namespace)
    registered = None
    if outcome.phase == "Succeeded" and outcome.result is not None:
        try:
            registered = await register(tj, outcome.result)
        except (ValidationError, kube.Invalid, kube.Forbidden) as exc:
            outcome = Outcome(
                "Failed",
                "RegistrationFailed",
                f"cannot register the ModelVersion: {exc}",
                outcome.start_time,
                outcome.completion_time,
                trials=outcome.trials,
            )
    new = training_status(
        tj.status,
        outcome,
        tj.spec,
        generation=tj.metadata.generation,
        job_name=job_name(tj),
        model_version=registered,
        queue_position=place,
    )
    old_status = to_k8s(tj.status)
    new_status = to_k8s(new)
    if place is not None:
        _queued_written[key] = place
    if new_status == old_status:
        return
    written = await kube.patch_status(
        "TrainingJob", name, namespace, status_patch(old_status, new_status),
        resource_version=body["metadata"]["resourceVersion"],
    )  # fmt: skip
    # The newest there is (written over the resourceVersion read): the next step's read.
    _trainings.see("MODIFIED", written, wanted=unfinished(written.get("status") or {}))
    await _tell(body, tj, new.phase, new.reason or "", new.message or "", registered, logger)


async def _suspend(job: str, namespace: str) -> None:
    with contextlib.suppress(kube.NotFound):
        await kube.merge_patch("batch/v1", "Job", job, namespace, {"spec": {"suspend": True}})


async def _observe(tj: TrainingJob, *, live: bool) -> Outcome:
    namespace = str(tj.metadata.namespace)
    job = None if live else _jobs.get((namespace, job_name(tj)))
    if job is None:
        job = await kube.get("batch/v1", "Job", job_name(tj), namespace)
    if job is None:
        return missing_job(tj.status, job_name(tj))
    if not owned_by(job, tj.metadata.uid):
        return Outcome(
            "Failed",
            JOB_CONFLICT,
            f"a Job named {job_name(tj)} exists and does not belong to this TrainingJob",
        )
    pods = await children.job_pods(job)
    return training_outcome(
        job, pods, tj.spec.search, deadline_seconds=tj.spec.active_deadline_seconds
    )


async def register(tj: TrainingJob, result: TrainerReport) -> str:
    """Register the result as `<model>-v<N>`, exactly once per TrainingJob.

    A ModelVersion already labelled with this TrainingJob's uid is the registration
    (a retry after a crash); otherwise create the next version, and on a name conflict
    re-read: ours means done, another's means the next number.
    """
    namespace = str(tj.metadata.namespace)
    uid = str(tj.metadata.uid)
    store = artifact_store(tj.spec, TrainerSettings.from_env().default_artifacts)
    for _attempt in range(MAX_VERSION_ATTEMPTS):
        versions = await kube.list_objects(API_VERSION, "ModelVersion", namespace)
        if (existing := registered_version(versions, uid, TRAININGJOB_UID_LABEL)) is not None:
            return existing
        number = next_version(versions, tj.spec.model)
        name = version_name(tj.spec.model, number)
        try:
            await kube.create(model_version(tj, result, number, store))
            return name
        except kube.Conflict:
            found = await kube.get(API_VERSION, "ModelVersion", name, namespace)
            labels = (found or {}).get("metadata", {}).get("labels") or {}
            if labels.get(TRAININGJOB_UID_LABEL) == uid:
                return name
    raise kopf.TemporaryError("could not claim a free ModelVersion number; retrying", delay=5)


async def _tell(
    body: dict[str, Any],
    tj: TrainingJob,
    phase: str | None,
    reason: str,
    message: str,
    registered: str | None,
    logger: kopf.Logger,
) -> None:
    """An event per transition, as `kubectl describe tj` shows them."""
    before = tj.status.phase
    events: list[tuple[str, str, str]] = []
    if registered and not tj.status.model_version:
        events.append(("Normal", "Registered", f"registered ModelVersion {registered}"))
    if phase != before:
        if phase == "Failed":
            events.append(("Warning", reason, message))
        else:
            events.append(("Normal", phase or "Pending", message))
        logger.info("phase %s -> %s (%s): %s", before, phase, reason, message)
    for type_, why, text in events:
        try:
            await kube.post_event(body, why, text, type_=type_)
        except kube.KubeError as err:  # an event is worth a log line, never a failed sync
            logger.warning("cannot post event %s: %s", why, err)
