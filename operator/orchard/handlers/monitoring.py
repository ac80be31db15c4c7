"""Monitoring controller: watch what each ModelDeployment's stable version serves.

Beside the rollout (which judges a canary only while one is under way), every served
ModelDeployment (its stable pods ready: `serving`) is evaluated every
`spec.monitoring.interval`, the shape of
`trainingjob.sync`: read the serving pods' own /metrics (stable's, and a canary's apart)
and the stored windows; decide
(`orchard.decisions.monitoring`: the window advanced, its drift against the training
baseline the pods state, live accuracy from the feedback the pods counted against the
version's registered metric); ensure the window is stored (a
ConfigMap the ModelDeployment owns, so an operator restart loses nothing); write
status.monitoring and the DriftDetected and AccuracyDegraded conditions, and post an event
on each transition. It holds the
ModelDeployment's lock, as the rollout does, and writes only those status keys.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kopf
import prometheus_client
from pydantic import ValidationError

from orchard import kube
from orchard.api.common import API_VERSION, GROUP, VERSION, parse_duration, status_patch, to_k8s
from orchard.api.modeldeployment import ModelDeployment, ModelDeploymentSpec
from orchard.builders import serving as sv
from orchard.builders.common import owned_by
from orchard.decisions import monitoring as mon
from orchard.decisions import observing as ob
from orchard.decisions.rollout import SERVING

from .canary_metrics import scrape_pods
from .loops import Loops
from .modeldeployment import lock

RBAC_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": ["modeldeployments"], "verbs": ["get"]},
    {"apiGroups": [GROUP], "resources": ["modeldeployments/status"], "verbs": ["patch"]},
    {"apiGroups": [GROUP], "resources": ["modelversions"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]

# A ConfigMap holds at most 1 MiB; a window larger than this keeps only its newest slices.
MAX_STORED_BYTES = 900_000

DRIFT_SCORE = prometheus_client.Gauge(
    "orchard_modeldeployment_drift_score",
    "Highest PSI of the stable version's inputs or predictions over the monitoring window.",
    ["namespace", "name"],
)
DRIFT_DETECTED = prometheus_client.Gauge(
    "orchard_modeldeployment_drift_detected",
    "1 when DriftDetected is True, 0 when False; absent while Unknown.",
    ["namespace", "name"],
)
LIVE_ACCURACY = prometheus_client.Gauge(
    "orchard_modeldeployment_live_accuracy",
    "The stable version's live accuracy (or mae / rmse) from feedback over the window.",
    ["namespace", "name", "metric"],
)
ACCURACY_DEGRADED = prometheus_client.Gauge(
    "orchard_modeldeployment_accuracy_degraded",
    "1 when AccuracyDegraded is True, 0 when False; absent while Unknown.",
    ["namespace", "name"],
)
MONITORING_SAMPLES = prometheus_client.Gauge(
    "orchard_modeldeployment_monitoring_samples",
    "Rows the stable version predicted in the monitoring window.",
    ["namespace", "name"],
)

# The windows of this process: the stored ConfigMap is read only when one is missing here.
_windows: dict[tuple[str, str], dict[str, mon.MonitoringWindow]] = {}
_monitors = Loops("monitoring", retry_after=60.0)


def serving(status: Mapping[str, Any], **_: Any) -> bool:
    """A stable version is served by ready pods (the Ready condition's reason Serving):
    there is something to watch. A deployment still waiting for its first pods, or
    scaled to zero, costs no request; the status write that makes its pods ready starts
    the loop."""
    if not status.get("stableVersion"):
        return False
    ready = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), None)
    return ready is not None and ready.get("status") == "True" and ready.get("reason") == SERVING


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def follow_monitoring(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str,
    spec: Mapping[str, Any], status: Mapping[str, Any], logger: kopf.Logger, **_: Any,
) -> None:  # fmt: skip
    """Every monitoring interval while a stable version serves, in a loop of
    `handlers.loops` (a Kopf daemon would hold a finalizer); the DELETED event forgets
    the window (its ConfigMap goes by garbage collection)."""
    key = (str(namespace), name)
    gone = event.get("type") == "DELETED"
    deleting = bool(body.get("metadata", {}).get("deletionTimestamp"))
    interval = monitoring_interval(spec)

    async def tick() -> float:
        await evaluate(key[0], key[1], logger)
        return interval

    _monitors.follow(key, not gone and not deleting and serving(status), tick)
    if gone:
        forget(key)


def monitoring_interval(spec: Mapping[str, Any]) -> float:
    """spec.monitoring.interval in seconds (a minute when it cannot be read)."""
    try:
        seconds = parse_duration(ModelDeploymentSpec.model_validate(dict(spec)).monitoring.interval)
    except (ValidationError, ValueError):
        seconds = 60.0
    return max(seconds, 1.0)


def forget(key: tuple[str, str]) -> None:
    """The window goes with the deployment (its ConfigMap by garbage collection)."""
    namespace, name = key
    _windows.pop(key, None)
    for gauge in (DRIFT_SCORE, DRIFT_DETECTED, ACCURACY_DEGRADED, MONITORING_SAMPLES):
        with contextlib.suppress(KeyError):  # never set for this deployment
            gauge.remove(namespace, name)
    for metric in ("accuracy", "mae", "rmse"):
        with contextlib.suppress(KeyError):
            LIVE_ACCURACY.remove(namespace, name, metric)


# --- One evaluation ------------------------------------------------------------------------


@dataclass(frozen=True)
class Reads:
    """What one evaluation looks at."""

    seen: dict[str, mon.TrackSeen]  # stable, and canary while one serves
    facts: dict[str, mon.VersionFacts]  # what each track's ModelVersion registered
    windows: dict[str, mon.MonitoringWindow]  # as last stored
    owned: bool  # whether the window's ConfigMap (if any) is this deployment's


async def _version_facts(namespace: str, version: str) -> mon.VersionFacts:
    mv = await kube.get(API_VERSION, "ModelVersion", version, namespace)
    spec = (mv or {}).get("spec") or {}
    metrics = {
        k: float(v)
        for k, v in (spec.get("metrics") or {}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    return mon.VersionFacts(task=spec.get("task"), metrics=metrics)


def collection_note(md: ModelDeployment) -> str | None:
    """Where the serving pods collect to; None when nothing is asked."""
    place = sv.collection_place(md)
    return None if place is None else place.uri


async def read(md: ModelDeployment) -> Reads:
    namespace, name, st = str(md.metadata.namespace), str(md.metadata.name), md.status
    pods = await kube.list_objects("v1", "Pod", namespace, labels=sv.selector(name))
    scrapes, _ = await scrape_pods(ob.serving_pods(pods, st), md.spec.server.port)
    seen: dict[str, mon.TrackSeen] = {}
    facts: dict[str, mon.VersionFacts] = {}
    for track, version in (("stable", st.stable_version), ("canary", st.canary_version)):
        if version is None:
            continue
        mine = {str(p["metadata"]["name"]) for p in ob.pods_of(pods, track, version)}
        seen[track] = mon.TrackSeen(version, {p: scrapes[p] for p in mine if p in scrapes}, mine)
        facts[track] = await _version_facts(namespace, version)
    stored = await kube.get("v1", "ConfigMap", sv.monitoring_window_name(name), namespace)
    owned = stored is None or owned_by(stored, md.metadata.uid)
    windows = _windows.get((namespace, name))
    if windows is None and stored is not None and owned:
        windows = mon.loads((stored.get("data") or {}).get(sv.MONITORING_WINDOW_KEY))
    return Reads(seen, facts, windows or {}, owned)


def _fitting(windows: dict[str, mon.MonitoringWindow]) -> str:
    """The windows' JSON, their oldest slices left out until it fits in a ConfigMap."""
    text = mon.dumps(windows)
    while len(text) > MAX_STORED_BYTES and any(w.slices for w in windows.values()):
        windows = {
            t: mon.MonitoringWindow(w.version, w.pods, w.slices[1:]) for t, w in windows.items()
        }
        text = mon.dumps(windows)
    return text


async def ensure_windows(
    md: ModelDeployment, reads: Reads, windows: dict[str, mon.MonitoringWindow]
) -> None:
    """Store the windows; never over a ConfigMap of the same name that is not ours."""
    if not reads.owned:
        return
    await kube.apply(sv.monitoring_window(md, _fitting(windows)))


def _export(namespace: str, name: str, decision: mon.MonitoringDecision) -> None:
    """The operator's gauges for alerting, per deployment."""
    status = decision.monitoring
    DRIFT_SCORE.labels(namespace, name).set(status.drift_score or 0.0)
    MONITORING_SAMPLES.labels(namespace, name).set(status.samples)
    accuracy = status.accuracy
    if accuracy is not None and accuracy.value is not None:
        LIVE_ACCURACY.labels(namespace, name, accuracy.metric).set(accuracy.value)
    for gauge, type_ in (
        (DRIFT_DETECTED, mon.DRIFT_DETECTED),
        (ACCURACY_DEGRADED, mon.ACCURACY_DEGRADED),
    ):
        verdict = next(c.status for c in decision.conditions if c.type == type_)
        if verdict == "Unknown":
            with contextlib.suppress(KeyError):  # not set yet
                gauge.remove(namespace, name)
        else:
            gauge.labels(namespace, name).set(1.0 if verdict == "True" else 0.0)


async def evaluate(namespace: str, name: str, logger: kopf.Logger) -> None:
    """Read, decide, store the window, write status: one evaluation of the stable version."""
    async with lock(namespace, name):
        body = await kube.get(API_VERSION, "ModelDeployment", name, namespace)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        try:
            md = ModelDeployment.model_validate(body)
        except ValidationError:
            return  # the rollout controller reports the schema mismatch
        old = to_k8s(md.status)
        settings, version = md.spec.monitoring, md.status.stable_version
        if not settings.enabled or version is None:
            new = dict(old, conditions=[to_k8s(c) for c in mon.switched_off(md.status.conditions)])
            new.pop("monitoring", None)
            patch = status_patch(old, new)
            if patch:
                await kube.patch_status("ModelDeployment", name, namespace, patch)
            _windows.pop((namespace, name), None)
            return
        reads = await read(md)
        stable = reads.seen["stable"]
        if not stable.scrapes:
            logger.info("monitoring: no stable pod of %s answered /metrics", version)
            return
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        span, interval = parse_duration(settings.window), parse_duration(settings.interval)
        windows = mon.advance_tracks(reads.windows, reads.seen, now, span, interval)
        canary = reads.seen.get("canary")
        canary_status = (
            mon.track_status(
                windows["canary"], next(iter(canary.scrapes.values())), len(canary.scrapes),
                settings, reads.facts["canary"],
            )
            if canary is not None and canary.scrapes
            else None
        )  # fmt: skip
        decision = mon.evaluate(
            windows["stable"], next(iter(stable.scrapes.values())), len(stable.scrapes),
            settings, md.status.conditions, md.metadata.generation, now, reads.facts["stable"],
            canary_status, collection_note(md),
        )  # fmt: skip
        await ensure_windows(md, reads, windows)
        _windows[(namespace, name)] = windows
        new = dict(old, monitoring=to_k8s(decision.monitoring))
        new["conditions"] = [to_k8s(c) for c in decision.conditions]
        patch = status_patch(old, new)
        if patch:
            await kube.patch_status("ModelDeployment", name, namespace, patch)
        _export(namespace, name, decision)
        for type_, reason, message in decision.events:
            logger.info("%s: %s", reason, message)
            try:
                await kube.post_event(dict(body), reason, message, type_=type_)
            except kube.KubeError as err:
                logger.warning("cannot post event %s: %s", reason, err)
        if not reads.owned:
            logger.warning(
                "ConfigMap %s is not this deployment's: the monitoring window is kept in "
                "memory only", sv.monitoring_window_name(name),
            )  # fmt: skip
