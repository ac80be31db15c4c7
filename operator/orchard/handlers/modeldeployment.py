"""ModelDeployment controller: serve a version; roll the next one out as an analysed canary.

Every trigger runs the same `reconcile`, the shape of `trainingjob.sync`: read the object,
its ModelVersions, pods, Deployments and route, and while a canary step is live the
serving pods' own /metrics (`read`); `observe` and `decide` (pure, in
`orchard.decisions`); ensure the children the new status asks for
(`serving_children`); write the status and post the events. All rollout state lives in
status, so a restarted operator resumes where it was. Triggers:

- create / update / resume of the ModelDeployment;
- a change of the `orchard.dev/rollout-action` annotation (promote | abort), acted on once;
- a loop (`handlers.loops`, no finalizer), only while a rollout is under way (phase
  Progressing or Paused), every analysis interval (it stops when the rollout ends);
- events of the Deployments it owns (pods becoming ready, or going away), the deletion
  of a Service it owns (a child deleted by hand is made again at once), and a serving
  pod that refuses its artifact (which changes no Deployment's status);
- a ModelVersion appearing, going or changing phase, for the deployments that use it
  and those that track its model (`spec.track`), found in `handlers.usage`'s index.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from orchard import kube
from orchard.api.common import API_VERSION, GROUP, VERSION, parse_duration
from orchard.api.modeldeployment import (
    GATEWAY_GROUP,
    MODELDEPLOYMENT_LABEL,
    ModelDeployment,
    ModelDeploymentSpec,
)
from orchard.builders import improvement as imp
from orchard.builders import serving as sv
from orchard.builders.common import ServerSettings, owned_by
from orchard.contracts import ReplayReport
from orchard.decisions import evaluation as ev
from orchard.decisions import jobs, retries
from orchard.decisions import observing as ob
from orchard.decisions import policy as pol
from orchard.decisions import rollout as ro
from orchard.handlers import children, policy

from .canary_metrics import AnalysisWindows, scrape_tracks
from .loops import Loops
from .serial import Serial
from .serving_children import (
    ensure_children,
    ensure_evaluation,
    ensure_replay,
    record_evaluation,
    write_status,
)
from .traffic_routes import traffic_state
from .usage import read_version, see_version, sync_used_by, usage

# The verbs of this controller and of the modules it drives (serving_children,
# traffic_routes, canary_metrics).
RBAC_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": [GROUP],
        "resources": ["modeldeployments"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": [GROUP], "resources": ["modeldeployments/status"], "verbs": ["get", "patch"]},
    # blockOwnerDeletion on the children's ownerReferences needs this.
    {"apiGroups": [GROUP], "resources": ["modeldeployments/finalizers"], "verbs": ["update"]},
    {"apiGroups": [GROUP], "resources": ["modelversions"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [GROUP], "resources": ["modelversions/status"], "verbs": ["get", "patch"]},
    # The evaluation Job of a candidate (serving_children.ensure_evaluation).
    {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "create"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch"],
    },
    # apply; list and watch: a serving Service deleted by hand is made again at once.
    {"apiGroups": [""], "resources": ["services"], "verbs": ["list", "watch", "create", "patch"]},
    # watch: a serving pod that refuses its artifact (serving_pod_refused).
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {
        "apiGroups": ["autoscaling"],
        "resources": ["horizontalpodautoscalers"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {"apiGroups": [GATEWAY_GROUP], "resources": ["httproutes"], "verbs": ["get", "patch"]},
    {"apiGroups": [GATEWAY_GROUP], "resources": ["referencegrants"], "verbs": ["list"]},
]

# Phases analysed every interval. A deployment waiting for its first version (Pending)
# is moved on by events alone: its Deployments' status, its serving pods refusing their
# artifact, its ModelVersions appearing or changing phase.
IN_PROGRESS = ("Progressing", "Paused")
RECONCILE_RETRY_SECONDS = 10.0

_serial = Serial()
_windows = AnalysisWindows()
_analyses = Loops("ModelDeployment analysis", retry_after=10.0)


def lock(namespace: str, name: str) -> asyncio.Lock:
    """One reconcile of a ModelDeployment at a time (the monitoring controller's too)."""
    return _serial.lock((namespace, name))


def in_progress(status: Mapping[str, Any], **_: Any) -> bool:
    """Only a rollout under way needs a tick every analysis interval."""
    return status.get("phase") in IN_PROGRESS


async def _parse(body: dict[str, Any], logger: kopf.Logger) -> ModelDeployment | None:
    """The typed object, or None once status and an event say why it cannot be read
    (the API server validates the same schema, so this is an operator/CRD skew)."""
    try:
        return ModelDeployment.model_validate(body)
    except ValidationError as exc:
        message = f"ModelDeployment does not match the operator's schema: {exc}"[:1000]
    meta = body["metadata"]
    if (body.get("status") or {}).get("reason") != ro.SCHEMA_MISMATCH:
        update = {"phase": "Degraded", "reason": ro.SCHEMA_MISMATCH, "message": message}
        await kube.patch_status("ModelDeployment", meta["name"], meta["namespace"], update)
        await kube.post_event(body, ro.SCHEMA_MISMATCH, message, type_="Warning")
    logger.error(message)
    return None


# --- Triggers --------------------------------------------------------------------------


@kopf.on.startup()
def watch_only_serving_deployments(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Filter the Deployment and Service watches on the server: only the serving
    children Orchard made stream into the operator, never every one of the cluster."""
    settings.watching.label_selectors["apps", "deployments"] = MODELDEPLOYMENT_LABEL
    settings.watching.label_selectors["v1", "services"] = MODELDEPLOYMENT_LABEL


@kopf.on.resume(GROUP, VERSION, "modeldeployments")
@kopf.on.create(GROUP, VERSION, "modeldeployments")
@kopf.on.update(GROUP, VERSION, "modeldeployments", field="spec")
async def changed(
    namespace: str | None, name: str, logger: kopf.Logger, retry: int = 0, **_: Any
) -> None:
    """Created, changed or found at start: reconcile; a failure is retried with backoff
    (10 s doubling, at most 10 min), not every 30 s forever."""
    try:
        await reconcile(str(namespace), name, logger)
    except (kopf.PermanentError, kopf.TemporaryError):
        raise
    except Exception as exc:
        delay = retries.loop_failure(RECONCILE_RETRY_SECONDS, retry + 1)
        raise kopf.TemporaryError(
            f"reconcile failed, again in {delay:.0f} s: {exc}", delay=delay
        ) from exc


def wants_action(body: kopf.Body, **_: Any) -> bool:
    """A manual action is waiting: status.requestedAction, or an unhandled annotation."""
    return bool((body.get("status") or {}).get("requestedAction")) or (
        ob.pending_action(body) is not None
    )


@kopf.on.event(GROUP, VERSION, "modeldeployments", when=wants_action)
async def manual_action(namespace: str | None, name: str, logger: kopf.Logger, **_: Any) -> None:
    """A person asked to promote or abort (status patch or annotation): act on it once.

    Kopf's own change tracking ignores annotations under Orchard's prefix and status,
    so this watches events; `wants_action` lets through only what is still to be done.
    """
    try:
        await reconcile(str(namespace), name, logger)
    except Exception as exc:  # events are not retried; the analysis loop or the next event will
        logger.warning("acting on a manual action failed: %s", exc)


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def follow_rollout(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str,
    spec: Mapping[str, Any], status: Mapping[str, Any], logger: kopf.Logger, **_: Any,
) -> None:  # fmt: skip
    """While a rollout is under way: analyse and decide every analysis interval, in a
    loop of `handlers.loops` (a Kopf daemon would hold a finalizer). Every event updates
    the index of the versions deployments use (`handlers.usage`) and the usedBy of those
    that gained or lost this one. The DELETED event forgets the deployment: its children
    go by garbage collection, the versions it used lose it from usedBy (so their deletion
    guard lets them go)."""
    key = (str(namespace), name)
    gone = event.get("type") == "DELETED"
    deleting = bool(body.get("metadata", {}).get("deletionTimestamp"))
    interval = _analysis_interval(spec)
    _analyses.follow(
        key,
        not gone and not deleting and in_progress(status),
        lambda: analyse(key, interval, logger),
    )
    await note_usage(key[0], name, None if gone else body, logger)
    if gone or deleting:
        _windows.forget(*key)
    if gone:
        _serial.forget(key)


async def note_usage(
    namespace: str, name: str, body: Mapping[str, Any] | None, logger: kopf.Logger
) -> None:
    """A deployment as its newest event shows it (None: gone) into the index; the usedBy
    of the versions it took up or let go follows."""
    for version in sorted(usage.see(namespace, name, body)):
        try:
            await sync_used_by(namespace, version)
        except kube.KubeError as err:  # the version's guard reads the deployments again
            logger.warning("cannot update usedBy of %s: %s", version, err)


def _analysis_interval(spec: Mapping[str, Any]) -> float:
    try:
        seconds = parse_duration(
            ModelDeploymentSpec.model_validate(dict(spec)).canary.analysis.interval
        )
    except (ValidationError, ValueError):
        seconds = 10.0
    return max(seconds, 1.0)


async def analyse(key: tuple[str, str], interval: float, logger: kopf.Logger) -> float:
    """One tick of a rollout under way."""
    await reconcile(key[0], key[1], logger, coalesce=True)
    return interval


_replica_counts: dict[tuple[str, str], tuple[Any, ...]] = {}  # by serving Deployment


def replica_counts(deployment: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a serving Deployment its owner acts on: the replicas asked for and its
    pods' counts (made, updated, ready, available). Its other status changes (observed
    generation, conditions' heartbeats) leave the owner's decision as it was."""
    spec, status = deployment.get("spec") or {}, deployment.get("status") or {}
    counts = ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
    return (spec.get("replicas"), *(status.get(c) for c in counts))


@kopf.on.event("apps", "v1", "deployments", labels={MODELDEPLOYMENT_LABEL: kopf.PRESENT})
async def deployment_changed(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, logger: kopf.Logger,
    **_: Any,
) -> None:  # fmt: skip
    """A serving Deployment went, or its pods changed (ready or gone): bring the owner in
    step. One first seen with no pod counted (just made by its owner's reconcile, or at
    start, when the owners' own resume reconciles them) tells the owner nothing new: at
    5,000 objects that second reconcile of every new deployment was a quarter of the
    requests."""
    key = (str(namespace), str(body.get("metadata", {}).get("name")))
    if event.get("type") == "DELETED":
        _replica_counts.pop(key, None)
    elif _replica_counts.get(key) == (counts := replica_counts(body)):
        return
    else:
        first = key not in _replica_counts
        _replica_counts[key] = counts
        if first and not any(counts[1:]):
            return
    await _reconcile_owner(body, namespace, logger, coalesce=True)


async def _reconcile_owner(
    child: kopf.Body, namespace: str | None, logger: kopf.Logger, *, coalesce: bool
) -> None:
    """Reconcile the ModelDeployment a serving child names in its label. Events are not
    retried: a failure is logged, and the next event or the analysis loop takes over."""
    owner = child.get("metadata", {}).get("labels", {}).get(MODELDEPLOYMENT_LABEL)
    if owner and namespace:
        try:
            await reconcile(str(namespace), owner, logger, coalesce=coalesce)
        except Exception as exc:
            logger.warning("reconcile of %s failed: %s", owner, exc)


@kopf.on.event("", "v1", "services", labels={MODELDEPLOYMENT_LABEL: kopf.PRESENT})
async def service_deleted(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """A serving Service went (deleted by hand): the owner's reconcile makes it again. Its
    other events change nothing the controller reads."""
    if event.get("type") != "DELETED":
        return
    logger.info("Service %s was deleted: its owner makes it again", body["metadata"]["name"])
    await _reconcile_owner(body, namespace, logger, coalesce=False)


def refused_its_artifact(status: Mapping[str, Any], **_: Any) -> bool:
    return ob.refused_artifact(status)


@kopf.on.event("", "v1", "pods", labels={MODELDEPLOYMENT_LABEL: kopf.PRESENT},
               when=refused_its_artifact)  # fmt: skip
async def serving_pod_refused(
    body: kopf.Body, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """A serving pod refused its artifact: its Deployment's status does not change (it was
    not ready before either), so the owner is told here, for its Ready condition to say
    why (`ob.refusal`). Other pod events are filtered out before this runs."""
    await _reconcile_owner(body, namespace, logger, coalesce=True)


# What a deployment reads of each ModelVersion, as last seen: its verdict (Ready, Failed),
# or None while it is verified. A version not in here was not seen yet.
_version_verdicts: dict[tuple[str, str], str | None] = {}


@kopf.on.event(GROUP, VERSION, "modelversions")
async def model_version_changed(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str,
    spec: Mapping[str, Any], status: Mapping[str, Any], logger: kopf.Logger, **_: Any,
) -> None:  # fmt: skip
    """A ModelVersion appeared, went, or reached its verdict (Ready, Failed): the
    deployments that use it (`handlers.usage`) and those that track its model decide
    again. Its other events (verification under way, usedBy, evaluations) change nothing
    they read. Every event's body is kept for their steps to read (`usage.read_version`)."""
    key = (str(namespace), name)
    see_version(event.get("type"), body)
    phase = status.get("phase")
    verdict = phase if phase in ("Ready", "Failed") else None
    if event.get("type") == "DELETED":
        _version_verdicts.pop(key, None)
    elif key in _version_verdicts and _version_verdicts[key] == verdict:
        return
    else:
        _version_verdicts[key] = verdict
    model = spec.get("model")
    deployments = set(usage.users(key[0], name))
    if model:
        deployments.update(usage.trackers(key[0], str(model)))
    for deployment in sorted(deployments):
        try:
            await reconcile(key[0], deployment, logger, coalesce=True)
        except Exception as exc:  # events are not retried; the next event will
            logger.warning("reconcile of %s failed: %s", deployment, exc)


# --- One step --------------------------------------------------------------------------


async def _own_job(md: ModelDeployment, name: str) -> tuple[dict[str, Any] | None, list[Any]]:
    """A Job of this deployment by name, and its pods (none for someone else's)."""
    namespace = str(md.metadata.namespace)
    job = await kube.get("batch/v1", "Job", name, namespace)
    if job is None or not owned_by(job, md.metadata.uid):
        return None, []
    return job, await children.job_pods(job)


async def evaluation_outcome(md: ModelDeployment) -> ev.Seen | None:
    """While status.evaluation runs: where its Job stands (its pod's report once done)."""
    asked = md.status.evaluation
    if asked is None or asked.phase != "Running":
        return None
    job, pods = await _own_job(md, imp.evaluation_job_name(md, asked.candidate, asked.baseline))
    return ev.job_outcome(job, pods) if job is not None else ev.Seen("Running")


async def replay_outcome(md: ModelDeployment) -> jobs.Outcome[Any] | None:
    """While status.replay runs: where its Job stands."""
    asked = md.status.replay
    if asked is None or asked.phase != "Running" or asked.started_at is None:
        return None
    name = imp.replay_job_name(md, asked.version, asked.step, asked.started_at)
    job, pods = await _own_job(md, name)
    if job is None:
        return jobs.Outcome("Running")
    return jobs.outcome(job, pods, imp.REPLAY_CONTAINER, _replay_report, ro.REPLAY_FAILED)


def _replay_report(data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The replay's report as status keeps it (None: not a `ReplayReport`)."""
    try:
        return ReplayReport.model_validate(dict(data)).model_dump()
    except ValidationError:
        return None


async def read(md: ModelDeployment, body: Mapping[str, Any]) -> ob.Reads:
    """Everything this tick's decision looks at, fetched; nothing is decided here."""
    namespace, name, st = str(md.metadata.namespace), str(md.metadata.name), md.status
    listed = (
        await kube.list_objects(API_VERSION, "ModelVersion", namespace)
        if md.spec.track is not None
        else []
    )
    selection = ob.select_target(md, listed)
    by_name = {str(v["metadata"]["name"]): v for v in listed}
    versions = {
        v: by_name[v] if v in by_name else await read_version(namespace, v)
        for v in ob.version_names(md, ob.target_of(md, selection))
    }
    pods = await kube.list_objects("v1", "Pod", namespace, labels=sv.selector(name))
    stable, canary = (
        await _serving_deployment(md, "stable"),
        await _serving_deployment(md, "canary"),
    )
    traffic = await traffic_state(md)
    replay = await replay_outcome(md)  # before the metrics: a replay seen done is in them
    # The canary analysis reads the pods' metrics only while a step's traffic is live.
    live = ob.live_step(st)
    scrapes, unscraped = await scrape_tracks(pods, st, md.spec.server.port) if live else ({}, {})
    return ob.Reads(
        versions, pods, stable, canary, traffic, scrapes, unscraped,
        _windows.baseline(md), ob.pending_action(body), selection, await evaluation_outcome(md),
        replay,
    )  # fmt: skip


async def _serving_deployment(md: ModelDeployment, track: sv.Track) -> dict[str, Any] | None:
    """The track's Deployment as the API server has it. A deployment never reconciled (no
    status.observedGeneration) has none, unless the watch brought one (made by a step
    whose status write did not land): at 5,000 new deployments these GETs were 3,360 404s.
    One the watch brings later with pods counted reconciles the owner again."""
    namespace = str(md.metadata.namespace)
    name = sv.deployment_name(str(md.metadata.name), track)
    if md.status.observed_generation is None and (namespace, name) not in _replica_counts:
        return None
    return await kube.get("apps/v1", "Deployment", name, namespace)


def policy_refusal(md: ModelDeployment, now: dt.datetime) -> ro.Decision | None:
    """The admin's policy refuses the spec as written: what serves keeps serving."""
    violations = pol.modeldeployment_violations(
        md.spec, policy.current(), ServerSettings.from_env().image
    )
    if not violations:
        return None
    return ro.refused(
        md.spec, md.status, now, md.metadata.generation, pol.REASON, pol.summary(violations)
    )


async def reconcile(
    namespace: str, name: str, logger: kopf.Logger, *, coalesce: bool = False
) -> None:
    """Read, decide, ensure the children, write status: one step of the ModelDeployment's
    life. A watch event's or loop's step (`coalesce`) is left to one that waits already
    (`handlers.serial`)."""
    await _serial.step(
        (namespace, name), lambda: _step(namespace, name, logger), f"ModelDeployment {name}",
        coalesce=coalesce,
    )  # fmt: skip


async def _step(namespace: str, name: str, logger: kopf.Logger) -> None:
    """One read → decide → ensure → write status (under the deployment's lock). The status
    is written only over the object as read (its resourceVersion), so a request a person
    wrote meanwhile (status.requestedAction) is never lost."""
    body = await kube.get(API_VERSION, "ModelDeployment", name, namespace)
    if body is None or body.get("metadata", {}).get("deletionTimestamp"):
        return
    md = await _parse(body, logger)
    if md is None:
        return
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    decision = policy_refusal(md, now)
    if decision is None:
        reads = await read(md, body)
        obs = ob.observe(md, reads, sv.url(md), now)
        decision = ro.decide(md.spec, md.status, now, obs)
        _windows.advance(md, decision.status, reads.scrapes)
        try:
            await ensure_children(md, decision.status, reads, obs, now, logger)
            await ensure_evaluation(md, decision.status, reads, logger)
            await ensure_replay(md, decision.status, reads, logger)
        except sv.UnsupportedArtifact as exc:  # a version no serving pod can read
            decision = ro.refused(
                md.spec, md.status, now, md.metadata.generation,
                ro.UNSUPPORTED_ARTIFACT, str(exc),
            )  # fmt: skip
    await write_status(body, md.status, decision, logger)
    await record_evaluation(md, md.status, decision.status)
