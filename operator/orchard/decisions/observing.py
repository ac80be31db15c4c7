"""What the ModelDeployment controller observed, from the objects it read: pure.

The controller reads (the ModelDeployment, its ModelVersions, pods, Deployments, the
HTTPRoute, each serving pod's metrics); `observe` turns that into the `Observations`
that `rollout.decide` takes. Pod counts, readiness, the autoscaler's replica count and
the analysis of the current step's window are worked out here, once, and tested by
tables; the controller only fetches.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchard.api.common import ROLLOUT_ACTION_ANNOTATION, parse_timestamp
from orchard.api.modeldeployment import (
    MODEL_VERSION_LABEL,
    TRACK_LABEL,
    ModelDeployment,
    ModelDeploymentStatus,
    RolloutAction,
)
from orchard.api.modelversion import ModelVersion
from orchard.contracts import SERVE_EXIT_REFUSED, SERVE_REFUSED_PREFIX

from . import analysis as an
from . import evaluation as ev
from . import jobs
from . import metrics_text as mt
from . import rollout as ro
from . import tracking as tk

Pod = Mapping[str, Any]


@dataclass(frozen=True)
class TrafficState:
    """Whether the traffic mode can be honoured now, and what the route carries."""

    ok: bool
    reason: str
    message: str = ""
    route: dict[str, Any] | None = None  # the HTTPRoute, in gatewayAPI mode
    route_weight: int | None = None  # the canary's weight on it now


def version_info(
    name: str | None, body: Mapping[str, Any] | None
) -> tuple[ModelVersion | None, ro.VersionInfo | None]:
    """The ModelVersion a name refers to, as read (None: no name, or no such object)."""
    if not name:
        return None, None
    if body is None:
        return None, ro.VersionInfo(name, found=False, phase=None)
    try:
        mv = ModelVersion.model_validate(dict(body))
    except ValueError as exc:
        return None, ro.VersionInfo(name, phase="Failed", message=f"invalid ModelVersion: {exc}")
    info = ro.VersionInfo(
        name, phase=mv.status.phase, metrics=dict(mv.spec.metrics), message=mv.status.message or ""
    )
    return mv, info


def pod_ready(pod: Pod) -> bool:
    """Ready and not on its way out (a terminating pod serves no new traffic)."""
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return bool(cond.get("status") == "True")
    return False


def ready_since(pod: Pod, now: dt.datetime) -> dt.datetime:
    """When a ready pod turned ready (its Ready condition's transition time)."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready" and cond.get("lastTransitionTime"):
            return parse_timestamp(str(cond["lastTransitionTime"]))
    return now


def pods_of(pods: Sequence[Pod], track: str, version: str | None) -> list[Pod]:
    """The pods of one track that run one version."""
    if version is None:
        return []
    return [
        p
        for p in pods
        if ((p.get("metadata") or {}).get("labels") or {}).get(TRACK_LABEL) == track
        and ((p.get("metadata") or {}).get("labels") or {}).get(MODEL_VERSION_LABEL) == version
    ]


MAX_REFUSAL = 512


def refused_artifact(pod_status: Mapping[str, Any]) -> bool:
    """A container of the pod ended (now or last time) with the server's exit code for a
    refused artifact (SERVE_EXIT_REFUSED)."""
    for container in pod_status.get("containerStatuses") or []:
        for state in (container.get("state") or {}, container.get("lastState") or {}):
            if (state.get("terminated") or {}).get("exitCode") == SERVE_EXIT_REFUSED:
                return True
    return False


def refusal(pods: Sequence[Pod], track: str, version: str | None) -> str:
    """Why a pod of one track and version would not serve: the line of its server that
    refused the artifact (exit SERVE_EXIT_REFUSED), from its container's last or current
    termination; empty when no pod refused."""
    for pod in pods_of(pods, track, version):
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            for state in (container.get("state") or {}, container.get("lastState") or {}):
                ended = state.get("terminated") or {}
                if ended.get("exitCode") != SERVE_EXIT_REFUSED:
                    continue
                text = str(ended.get("message") or "")
                line = next(
                    (ln for ln in text.splitlines() if ln.startswith(SERVE_REFUSED_PREFIX)), ""
                )
                said = line.removeprefix(SERVE_REFUSED_PREFIX).strip()
                why = f"pod {pod['metadata']['name']} refused the artifact: " + (
                    said or f"exit code {SERVE_EXIT_REFUSED}"
                )
                return why if len(why) <= MAX_REFUSAL else why[: MAX_REFUSAL - 3] + "..."
    return ""


def serving_pods(pods: Sequence[Pod], status: ModelDeploymentStatus) -> list[Pod]:
    """The pods whose metrics the analysis reads: both tracks' current versions."""
    return pods_of(pods, "stable", status.stable_version) + pods_of(
        pods, "canary", status.canary_version
    )


def stable_desired(md: ModelDeployment, stable_deployment: Mapping[str, Any] | None) -> int:
    """The stable pod count: the spec's, or with an autoscaler what it last asked for."""
    auto = md.spec.autoscaling
    if auto is None:
        return md.spec.replicas
    return int(((stable_deployment or {}).get("spec") or {}).get("replicas") or auto.min_replicas)


def live_step(status: ModelDeploymentStatus) -> bool:
    """A canary step's traffic is live: only then is there a window to analyse."""
    return (
        status.canary_version is not None
        and status.canary_version != status.stable_version
        and status.current_step is not None
    )


def window_key(status: ModelDeploymentStatus) -> tuple[str | None, str | None, bool]:
    """What identifies the current step's analysis window: a new step, or the moment a
    step's split takes effect (it may fall in the same second the step began), starts
    a new one."""
    started = status.step_started_at.isoformat() if status.step_started_at else None
    return status.canary_version, started, status.reason in ro.WAITING_REASONS


def analyse_window(
    md: ModelDeployment,
    pods: Sequence[Pod],
    scrapes: Mapping[str, mt.Scrape],
    baseline: Mapping[str, mt.Scrape],
    unscraped: Mapping[str, str],
) -> an.Result:
    """The verdict on the current step: each track's counters since the step began
    (`baseline`: each pod's scrape then; a pod without one counts from its start)."""
    st = md.status

    def track(name: str, version: str | None) -> an.TrackWindow:
        names = [str(p["metadata"]["name"]) for p in pods_of(pods, name, version)]
        deltas = [mt.delta(baseline.get(n), scrapes[n]) for n in names if n in scrapes]
        return an.track_window(mt.merge(deltas))

    result = an.evaluate(
        track("canary", st.canary_version),
        track("stable", st.stable_version),
        an.Settings.from_spec(md.spec.canary.analysis),
    )
    return an.unobserved(result, unscraped)


@dataclass(frozen=True)
class Reads:
    """What the controller fetched this tick, as it came from the API server and pods."""

    versions: Mapping[str, Mapping[str, Any] | None]  # ModelVersions by name (None: absent)
    pods: Sequence[Pod]
    stable_deployment: Mapping[str, Any] | None
    canary_deployment: Mapping[str, Any] | None
    traffic: TrafficState
    # While a step is live: each serving pod's metrics, why a ready pod's could not be
    # read, and each pod's metrics when the step's window began.
    scrapes: Mapping[str, mt.Scrape] = field(default_factory=dict)
    unscraped: Mapping[str, str] = field(default_factory=dict)
    baseline: Mapping[str, mt.Scrape] = field(default_factory=dict)
    action: RolloutAction | None = None  # a rollout-action annotation still to act on
    # With spec.track: what was selected from the namespace's ModelVersions.
    selection: tk.Selection | None = None
    # The evaluation Job's outcome for status.evaluation's pair, while it runs; the replay
    # Job's for status.replay (read before the pods' metrics, so that a replay seen done
    # is in them).
    evaluation: ev.Seen | None = None
    replay: jobs.Outcome[Any] | None = None


def select_target(
    md: ModelDeployment, model_versions: Sequence[Mapping[str, Any]]
) -> tk.Selection | None:
    """With spec.track: the version to move to, from the namespace's ModelVersions."""
    track, st = md.spec.track, md.status
    if track is None:
        return None
    versions = tk.registered(model_versions, track.model)
    return tk.select(track, versions, st.stable_version,
                     tk.refused_against(st.tracking, st.stable_version))  # fmt: skip


def target_of(md: ModelDeployment, selection: tk.Selection | None) -> str | None:
    """The version the deployment moves to: the spec's, or the one selected."""
    if md.spec.track is None:
        return md.spec.model_version
    return selection.target if selection is not None else None


def version_names(md: ModelDeployment, target: str | None = None) -> tuple[str, ...]:
    """The ModelVersions a tick reads: the stable one (or the first to serve) and the
    target."""
    target = target or md.spec.model_version
    stable = md.status.stable_version or target
    return tuple(dict.fromkeys(n for n in (stable, target) if n))


def replay_enabled(md: ModelDeployment) -> bool:
    """canary.analysis.replay, by default on for a tracking deployment."""
    replay = md.spec.canary.analysis.replay
    return replay if replay is not None else md.spec.track is not None


def replay_targets(md: ModelDeployment, pods: Sequence[Pod]) -> list[str]:
    """The ready pods of both tracks' current versions, as the replay addresses them."""
    st, port = md.status, md.spec.server.port
    serving = pods_of(pods, "stable", st.stable_version) + pods_of(
        pods, "canary", st.canary_version
    )
    ips = [(p.get("status") or {}).get("podIP") for p in serving if pod_ready(p)]
    return [f"http://{ip}:{port}" for ip in ips if ip]


def judging(md: ModelDeployment, task: str | None) -> ev.Judging:
    """How a candidate is judged against the stable version on the same rows: with
    track select best, it must improve by minImprovement; otherwise it must not drop by
    more than canary.analysis.maxMetricDrop."""
    track, analysis = md.spec.track, md.spec.canary.analysis
    chosen = (track.metric if track else None) or analysis.metric or tk.default_metric(task)
    if track is not None and track.select == "best":
        return ev.Judging(chosen, "improve", track.min_improvement)
    return ev.Judging(chosen, "no-drop", analysis.max_metric_drop)


def pending_action(body: Mapping[str, Any]) -> RolloutAction | None:
    """The rollout-action annotation's action, if it is still to be carried out."""
    meta = body.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(ROLLOUT_ACTION_ANNOTATION)
    if not value:
        return None
    try:
        status = ModelDeploymentStatus.model_validate(body.get("status") or {})
    except ValueError:
        return None
    return ro.annotation_action(
        value, ro.annotation_set_at(meta, ROLLOUT_ACTION_ANNOTATION), status
    )


def observe(md: ModelDeployment, reads: Reads, url: str, now: dt.datetime) -> ro.Observations:
    """Everything `rollout.decide` needs, from what the controller read: pod counts,
    the versions' state, and the verdict on the current step's window while one is live."""
    st, pods = md.status, reads.pods
    target = target_of(md, reads.selection)
    stable_name = st.stable_version or target
    _, stable = version_info(stable_name, reads.versions.get(stable_name or ""))
    candidate_mv, candidate = version_info(target, reads.versions.get(target or ""))
    task = candidate_mv.spec.task if candidate_mv is not None else None
    analysis = (
        analyse_window(md, pods, reads.scrapes, reads.baseline, reads.unscraped)
        if live_step(st)
        else None
    )
    stable_ready = sum(1 for p in pods_of(pods, "stable", st.stable_version) if pod_ready(p))
    canary_pods = [p for p in pods_of(pods, "canary", st.canary_version) if pod_ready(p)]
    return ro.Observations(
        generation=md.metadata.generation,
        stable_ready=stable_ready,
        stable_desired=stable_desired(md, reads.stable_deployment),
        canary_ready=len(canary_pods),
        stable_refused=refusal(pods, "stable", st.stable_version) if not stable_ready else "",
        candidate=candidate,
        stable=stable,
        analysis=analysis,
        traffic_ok=reads.traffic.ok,
        traffic_reason=reads.traffic.reason,
        traffic_message=reads.traffic.message,
        annotation_action=reads.action,
        route_weight=reads.traffic.route_weight,
        canary_ready_since=min((ready_since(p, now) for p in canary_pods), default=None),
        url=url,
        target=target,
        selection=reads.selection,
        judging=judging(md, task),
        evaluation=reads.evaluation,
        replay_enabled=replay_enabled(md),
        replay=reads.replay,
    )
