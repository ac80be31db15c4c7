"""The rollout state machine of a ModelDeployment, as one pure function.

`decide(spec, status, now, obs)` takes what the resource asks for (the target version is
`spec.modelVersion`, or what `spec.track` selected, in `obs`), where it stands (its
status: all rollout state lives there, so a restarted operator resumes), the time, and
what the operator observed (ready pods, ModelVersions, the canary analysis, a manual
action); it returns the next status and the events to post. The children (Deployments,
Service, HTTPRoute) are then a pure function of spec and status (`orchard.builders.serving`).

Phases:
  Pending      the first version is not serving yet
  Stable       one version serves; no rollout
  Progressing  a canary is being checked (scored against the stable version on the same
               rows by an evaluation Job, then traffic steps, a quiet one judged on
               replayed rows) or promoted (the stable Deployment moves to the new
               version; while it does, `canaryVersion == stableVersion`)
  Paused       a step's pause is over but its analysis is inconclusive (too little
               traffic), or the traffic split cannot be made; waits for traffic or a person
  RolledBack   a failed analysis (or a person) aborted; the stable version serves alone
  Degraded     no stable pod is ready any more

`currentStep` is unset during the pre-traffic check, then the index of the step walked.
`stepStartedAt` is when the step's split took effect (the canary's pods were ready): a
step's pause and its analysis window both count from there. While the pods come up
(reason StepStarted or WaitingForCanary) it is when the step was entered, and a canary
not ready within CANARY_READY_TIMEOUT is rolled back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from orchard.api.common import ConditionStatus, parse_duration, parse_timestamp, set_condition
from orchard.api.improvement import EvaluationStatus, RefusedVersion, ReplayStatus
from orchard.api.modeldeployment import (
    ActionRecord,
    AnalysisResult,
    CanaryWeight,
    DeploymentPhase,
    HistoryEntry,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Rollback,
    RolloutAction,
    VersionSample,
)

from . import analysis as an
from . import evaluation as ev
from . import jobs
from . import tracking as tk
from . import traffic as tr

HISTORY_LIMIT = 10
# A canary whose pods are not ready this long after its step began is rolled back.
CANARY_READY_TIMEOUT = timedelta(seconds=180)
# An evaluation Job that has not reported this long after it was asked for has failed.
EVALUATION_TIMEOUT = timedelta(seconds=600)
# A replay Job likewise.
REPLAY_TIMEOUT = timedelta(seconds=300)

# Reasons (status.reason, conditions, events): the words a person or a script looks for.
DEPLOYING = "Deploying"
SERVING = "Serving"
STABLE = "Stable"
STABLE_UNAVAILABLE = "StableUnavailable"
NO_READY_PODS = "NoReadyPods"
ARTIFACT_REFUSED = "ArtifactRefused"  # a serving pod refused its artifact (its digests)
SCALED_TO_ZERO = "ScaledToZero"
WAITING_FOR_MODEL_VERSION = "WaitingForModelVersion"
MODEL_VERSION_FAILED = "ModelVersionFailed"
ROLLOUT_STARTED = "RolloutStarted"
ROLLOUT_RESTARTED = "RolloutRestarted"
ROLLOUT_CANCELLED = "RolloutCancelled"
METRIC_CHECK_PASSED = "MetricCheckPassed"
METRIC_DROP = "MetricDrop"
EVALUATING = ev.EVALUATING
EVALUATION_PASSED = "EvaluationPassed"
CHALLENGER_REFUSED = "ChallengerRefused"
TARGET_SELECTED = "TargetSelected"
REPLAYING = "Replaying"
REPLAY_FAILED = "ReplayFailed"
TOO_FEW_REQUESTS = "TooFewRequests"  # an inconclusive analysis's reason (decisions.analysis)
STEP_STARTED = "StepStarted"
WAITING_FOR_CANARY = "WaitingForCanary"
ANALYSING = "Analysing"
CANARY_NOT_READY = "CanaryNotReady"
PAUSED = "Paused"
ROLLOUT_PAUSED = "RolloutPaused"
TRAFFIC_SPLIT_UNAVAILABLE = "TrafficSplitUnavailable"
PROMOTING = "Promoting"
PROMOTED = "Promoted"
ROLLOUT_COMPLETE = "RolloutComplete"
ROLLED_BACK = "RolledBack"
MANUAL_ABORT = "ManualAbort"
ACTION_IGNORED = "ActionIgnored"
# The spec cannot be served as written (see `refused`).
UNSUPPORTED_ARTIFACT = "UnsupportedArtifact"
SCHEMA_MISMATCH = "SchemaMismatch"

# Reasons under which a step waits for its canary pods; stepStartedAt then is when the
# step was entered, and it moves to the moment the split took effect.
WAITING_REASONS = (STEP_STARTED, WAITING_FOR_CANARY)

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class VersionInfo:
    """What the operator read of one ModelVersion."""

    name: str
    found: bool = True
    phase: str | None = "Ready"
    metrics: dict[str, float] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True)
class Observations:
    """What the operator observed just before deciding."""

    generation: int | None = None
    # Ready pods of the stable Deployment that run status.stableVersion, and the replica
    # count it asks for (the spec's, or the autoscaler's).
    stable_ready: int = 0
    stable_desired: int = 0
    # Ready pods of the canary Deployment that run status.canaryVersion.
    canary_ready: int = 0
    # Why a pod of the stable version would not start: its server's own line refusing
    # the artifact (a digest that no longer matches); empty when none refused.
    stable_refused: str = ""
    candidate: VersionInfo | None = None  # the target version
    stable: VersionInfo | None = None  # status.stableVersion
    analysis: an.Result | None = None  # verdict on the canary's window this step
    traffic_ok: bool = True
    traffic_reason: str = ""
    traffic_message: str = ""
    annotation_action: RolloutAction | None = None  # see `annotation_action`
    # gatewayAPI: the canary weight the HTTPRoute carries now, and since when a canary
    # pod has been ready (its Ready condition's transition time)
    route_weight: int | None = None
    canary_ready_since: datetime | None = None
    url: str | None = None
    # The version to move to: spec.modelVersion, or what spec.track selected (then
    # `selection` says why; None: nothing to select yet). Unset: spec.modelVersion.
    target: str | None = None
    selection: tk.Selection | None = None
    # How the candidate is judged against the stable version, and the evaluation Job's
    # outcome for status.evaluation's pair (None: not read, or none asked for yet).
    judging: ev.Judging | None = None
    evaluation: ev.Seen | None = None
    # Whether a quiet step replays the candidate's evaluation rows against both tracks,
    # and the replay Job's outcome for status.replay while it runs.
    replay_enabled: bool = False
    replay: jobs.Outcome[Any] | None = None


@dataclass
class Decision:
    status: ModelDeploymentStatus
    events: list[Event] = field(default_factory=list)


# --- Traffic split ---------------------------------------------------------------------


def canary_replicas(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, total: int) -> int:
    """The canary pod count the current status asks for."""
    if status.canary_version is None:
        return 0
    if status.canary_version == status.stable_version:  # promoting: hold until stable is up
        return max(total, 1)
    desired = status.canary_weight.desired if status.canary_weight else 0
    return tr.for_mode(spec.traffic.mode).pods(total, desired)[1]


def stable_replicas(spec: ModelDeploymentSpec, status: ModelDeploymentStatus, total: int) -> int:
    """The stable pod count the current status asks for."""
    if status.canary_version is None or status.canary_version == status.stable_version:
        return total
    desired = status.canary_weight.desired if status.canary_weight else 0
    return tr.for_mode(spec.traffic.mode).pods(total, desired)[0]


# --- The state machine -------------------------------------------------------------------


def _sample(window: an.TrackWindow | None) -> VersionSample | None:
    if window is None:
        return None
    p95 = window.latency_p95()
    return VersionSample(
        requests=int(window.requests),
        error_rate=min(max(round(window.error_rate, 6), 0.0), 1.0),
        latency_p95_ms=None if p95 is None else round(p95 * 1000, 3),
    )


def analysis_status(result: an.Result, now: datetime) -> AnalysisResult:
    """The analysis block of status: the verdict and the measured values of both tracks."""
    return AnalysisResult(
        verdict=result.verdict,
        reason=f"{result.reason}: {result.message}",
        at=now,
        canary=_sample(result.canary),
        stable=_sample(result.stable),
        prediction_shift=None
        if result.prediction_shift is None
        else round(result.prediction_shift, 4),
    )


class _Machine:
    """One decision: the status being built and the events gathered."""

    def __init__(
        self,
        spec: ModelDeploymentSpec,
        status: ModelDeploymentStatus,
        now: datetime,
        obs: Observations,
    ) -> None:
        self.spec = spec
        self.split = tr.for_mode(spec.traffic.mode)
        self.st = status.model_copy(deep=True)
        self.now = now
        self.obs = obs
        self.events: list[Event] = []

    # helpers
    def event(self, type_: EventType, reason: str, message: str) -> None:
        self.events.append(Event(type_, reason, message))

    def cond(self, type_: str, status: ConditionStatus, reason: str, message: str = "") -> None:
        self.st.conditions = set_condition(
            self.st.conditions,
            type_,
            status,
            reason,
            message,
            generation=self.obs.generation,
            at=self.now,
        )

    def set_phase(self, phase: DeploymentPhase, reason: str, message: str) -> None:
        self.st.phase = phase
        self.st.reason = reason
        self.st.message = message

    def weight(self, desired: int) -> None:
        self.st.canary_weight = CanaryWeight(desired=desired, effective=0)
        self.st.canary_weight = CanaryWeight(desired=desired, effective=self.st_effective())

    def st_effective(self) -> int:
        """The canary's share of traffic after this tick, as the split makes it."""
        return self.split.effective(self.st, self.obs, self.now)

    def push_history(self, version: str) -> None:
        history = list(self.st.history)
        if history and history[-1].to is None:
            history[-1] = history[-1].model_copy(update={"to": self.now})
        history.append(HistoryEntry(version=version, from_=self.now))
        self.st.history = history[-HISTORY_LIMIT:]

    def end_rollout(self) -> None:
        self.st.canary_version = None
        self.st.current_step = None
        self.st.step_started_at = None
        self.st.canary_weight = CanaryWeight(desired=0, effective=0)

    def total(self) -> int:
        return self.obs.stable_desired if self.spec.autoscaling else self.spec.replicas

    def split_message(self, desired: int) -> str:
        return f"canary {self.st_effective()}% by {self.split.means} (asked {desired}%)"

    # the target
    def record_target(self, target: str | None) -> None:
        """status.targetVersion, and with spec.track what was selected and why."""
        st, selection = self.st, self.obs.selection
        if target is not None and target != st.target_version and selection is not None:
            self.event("Normal", TARGET_SELECTED, selection.message)
        st.target_version = target
        if self.spec.track is not None and selection is not None:
            st.tracking = tk.tracking_status(self.spec.track, selection, st.tracking)
        elif self.spec.track is None:
            st.tracking = None

    def nothing_to_serve(self) -> None:
        """Tracking a model that has no Ready version: wait, saying so."""
        text = self.obs.selection.message if self.obs.selection else "no version to serve"
        self.set_phase("Pending", WAITING_FOR_MODEL_VERSION, text)
        self.cond("Degraded", "False", WAITING_FOR_MODEL_VERSION, text)
        self.cond("Progressing", "False", WAITING_FOR_MODEL_VERSION, text)

    # transitions
    def start(self, version: str) -> None:
        if self.st.canary_version is not None:
            self.event(
                "Normal",
                ROLLOUT_RESTARTED,
                f"rollout of {self.st.canary_version} replaced by a rollout of {version}",
            )
        self.st.canary_version = version
        self.st.current_step = None
        self.st.rollout_started_at = self.now
        self.st.step_started_at = None
        self.st.analysis = None
        self.st.canary_weight = CanaryWeight(desired=0, effective=0)
        self.event(
            "Normal", ROLLOUT_STARTED, f"rolling out {version} over {self.st.stable_version}"
        )

    def target(self) -> str | None:
        return self.obs.target or self.spec.model_version

    def rollback(self, reason: str, message: str, metrics: dict[str, float]) -> None:
        canary = self.st.canary_version or self.target() or ""
        stable = self.st.stable_version or ""
        self.st.last_rollback = Rollback(
            from_=canary, to=stable, reason=reason, metrics=dict(metrics), at=self.now
        )
        self.end_rollout()
        text = f"rolled back {canary} to {stable}: {message}"
        self.set_phase("RolledBack", reason, text)
        self.cond("Degraded", "True", ROLLED_BACK, text)
        self.cond("Progressing", "False", ROLLED_BACK, text)
        self.event("Warning", ROLLED_BACK, text)

    def promote(self, manual: bool) -> None:
        version = self.st.canary_version or self.target() or ""
        old = self.st.stable_version
        self.st.stable_version = version
        self.st.canary_version = version  # promoting: canary pods serve until stable is up
        self.st.current_step = None
        self.st.step_started_at = None
        self.push_history(version)
        how = "by request" if manual else "after every step passed"
        text = f"promoting {version} over {old} {how}"
        self.set_phase("Progressing", PROMOTING, text)
        self.cond("Progressing", "True", PROMOTING, text)
        self.event("Normal", PROMOTED, text)

    def start_step(self, index: int) -> None:
        step = self.spec.canary.steps[index]
        self.st.current_step = index
        self.st.step_started_at = self.now  # moved again when the canary's pods are ready
        self.weight(step.weight)
        n = len(self.spec.canary.steps)
        text = f"step {index + 1}/{n}: {step.weight}% to {self.st.canary_version}"
        self.set_phase("Progressing", STEP_STARTED, text)
        self.cond("Progressing", "True", STEP_STARTED, text)
        self.event("Normal", STEP_STARTED, text)

    # the decision
    def run(self, action: tuple[RolloutAction, str] | None) -> None:
        st = self.st
        selected = self.target()
        self.record_target(selected)
        if selected is None:  # tracking a model with no Ready version yet
            self.nothing_to_serve()
            return
        target: str = selected

        never_served = (
            st.stable_version is not None
            and st.canary_version is None
            and target != st.stable_version
            and self.obs.stable_ready == 0
            and (st.phase == "Pending" or st.reason == MODEL_VERSION_FAILED)
        )
        if st.stable_version is None or never_served:  # first version: no canary
            if never_served and st.history and st.history[-1].version == st.stable_version:
                st.history = st.history[:-1]  # it never served
            st.stable_version = target
            self.push_history(target)
            self.set_phase("Pending", DEPLOYING, f"deploying {target}")
            self.event("Normal", DEPLOYING, f"deploying {target}")

        in_rollout = st.canary_version is not None
        promoting = in_rollout and st.canary_version == st.stable_version

        if action is not None:
            verb, source = action
            acted = self.manual(verb, source, in_rollout and not promoting, target)
            if acted:
                return

        if promoting:
            self.promoting()
        elif target == st.stable_version:
            if in_rollout:
                self.event(
                    "Normal",
                    ROLLOUT_CANCELLED,
                    f"spec names the stable version {target} again; "
                    f"the canary {st.canary_version} is removed",
                )
                self.end_rollout()
            self.settled()
        elif (
            not in_rollout
            and st.phase == "RolledBack"
            and st.last_rollback is not None
            and st.last_rollback.from_ == target
        ):
            self.rolled_back()
        else:
            if st.canary_version != target:
                self.start(target)
            self.rollout()

    def manual(self, verb: RolloutAction, source: str, in_rollout: bool, target: str) -> bool:
        """Carry out promote or abort once; return whether the decision is made."""
        st = self.st
        st.last_action = ActionRecord(action=verb, at=self.now, source=source)
        rolled_back = (
            st.phase == "RolledBack"
            and st.canary_version is None
            and st.last_rollback is not None
            and st.last_rollback.from_ == target
            and target != st.stable_version
        )
        if verb == "promote" and (in_rollout or rolled_back):
            if rolled_back:
                st.canary_version = target
            self.promote(manual=True)
            self.cond("Degraded", "False", PROMOTED, f"{target} promoted by request")
            return True
        if verb == "abort" and in_rollout:
            self.rollback(MANUAL_ABORT, f"aborted by request ({source})", {})
            return True
        self.event("Normal", ACTION_IGNORED, f"{verb} requested with no rollout to act on")
        return False

    def promoting(self) -> None:
        st, obs = self.st, self.obs
        want = max(obs.stable_desired, 1) if self.spec.replicas > 0 else 0
        if obs.stable_ready >= want:
            version = st.stable_version
            self.end_rollout()
            text = f"{version} is stable"
            self.set_phase("Stable", PROMOTED, text)
            self.cond("Progressing", "False", PROMOTED, text)
            self.cond("Degraded", "False", PROMOTED, text)
            self.event("Normal", ROLLOUT_COMPLETE, text)
        else:
            text = (
                f"stable Deployment moving to {st.stable_version}: {obs.stable_ready}/{want} ready"
            )
            self.set_phase("Progressing", PROMOTING, text)
            self.weight(st.canary_weight.desired if st.canary_weight else 0)

    def settled(self) -> None:
        """No rollout: the stable version serves (or should)."""
        st, obs = self.st, self.obs
        self.cond("Progressing", "False", STABLE, f"{st.stable_version} serves")
        if obs.stable_ready > 0 or self.spec.replicas == 0:
            self.set_phase("Stable", SERVING, f"{st.stable_version} serves")
            self.cond("Degraded", "False", SERVING, f"{st.stable_version} serves")
        elif st.phase in (None, "Pending", "Degraded") and self.first_version_unusable():
            return
        elif st.phase in (None, "Pending"):
            self.set_phase("Pending", DEPLOYING, f"waiting for {st.stable_version} to be ready")
            self.cond("Degraded", "False", DEPLOYING, f"waiting for {st.stable_version}")
        else:
            text = f"no ready pod serves {st.stable_version}"
            if self.obs.stable_refused:
                text += f": {self.obs.stable_refused}"
            if st.phase != "Degraded":
                self.event("Warning", STABLE_UNAVAILABLE, text)
            self.set_phase("Degraded", STABLE_UNAVAILABLE, text)
            self.cond("Degraded", "True", STABLE_UNAVAILABLE, text)

    def first_version_unusable(self) -> bool:
        """The version to serve first is missing or failed verification: say so."""
        info = self.obs.stable
        if info is None or (info.found and info.phase != "Failed"):
            return False
        if not info.found:
            text = f"ModelVersion {info.name} not found"
            self.set_phase("Pending", WAITING_FOR_MODEL_VERSION, text)
            self.cond("Degraded", "False", WAITING_FOR_MODEL_VERSION, text)
            return True
        text = f"ModelVersion {info.name} failed: {info.message or 'verification failed'}"
        if self.st.phase != "Degraded":
            self.event("Warning", MODEL_VERSION_FAILED, text)
        self.set_phase("Degraded", MODEL_VERSION_FAILED, text)
        self.cond("Degraded", "True", MODEL_VERSION_FAILED, text)
        return True

    def rolled_back(self) -> None:
        """Spec still names the version that was rolled back: keep serving the stable one."""
        st = self.st
        if st.phase != "RolledBack":
            self.set_phase("RolledBack", st.last_rollback.reason if st.last_rollback else "", "")

    # the canary
    def rollout(self) -> None:
        """Walk the canary: the split must be possible, the candidate's registered
        metrics pass, then each step brings its pods up, holds its pause and is judged."""
        if not self.obs.traffic_ok:
            self.traffic_unavailable()
        elif self.st.current_step is None:
            self.pre_traffic_check()
        else:
            self.walk_step()

    def traffic_unavailable(self) -> None:
        """The split cannot be made (no route, no consent): pause, moving no traffic."""
        st, obs = self.st, self.obs
        reason = obs.traffic_reason or TRAFFIC_SPLIT_UNAVAILABLE
        text = f"traffic split cannot be made: {obs.traffic_message}"
        if st.phase != "Paused" or st.reason != obs.traffic_reason:
            self.event("Warning", reason, text)
        self.set_phase("Paused", reason, text)
        self.cond("Progressing", "True", PAUSED, text)
        self.weight(st.canary_weight.desired if st.canary_weight else 0)

    def pre_traffic_check(self) -> None:
        """Before any traffic: the candidate is verified and its registered metric is
        not worse than the stable's by more than the spec allows."""
        cand, settings = self.obs.candidate, self.spec.canary.analysis
        if cand is None or not cand.found:
            self.wait_for_candidate(f"ModelVersion {self.st.canary_version} not found")
            return
        if cand.phase == "Failed":
            self.rollback(MODEL_VERSION_FAILED, cand.message or f"{cand.name} failed", {})
            return
        if cand.phase != "Ready":
            self.wait_for_candidate(
                f"ModelVersion {cand.name} is {cand.phase or 'not verified yet'}"
            )
            return
        if self.obs.judging is not None and not self.evaluated(cand.name):
            return
        stable_metrics = self.obs.stable.metrics if self.obs.stable is not None else {}
        check = an.registered_metric_check(
            cand.metrics, stable_metrics, settings.max_metric_drop, settings.metric
        )
        if check.verdict == "Fail":
            figures = {
                "candidate": check.candidate or 0.0,
                "stable": check.stable or 0.0,
                "drop": round(check.drop or 0.0, 6),
            }
            self.rollback(METRIC_DROP, check.message, figures)
            return
        self.event("Normal", METRIC_CHECK_PASSED, check.message)
        self.start_step(0)

    def evaluated(self, candidate: str) -> bool:
        """The champion / challenger gate (`orchard.decisions.evaluation`): ask for the
        evaluation, wait for it, judge it. True when the candidate is to be judged on its
        registered metrics instead (the evaluation could not be made, and status says why);
        otherwise the decision is made here (a step starts, or the candidate is refused)."""
        st, obs, judging = self.st, self.obs, self.obs.judging
        assert judging is not None
        baseline = st.stable_version or ""
        asked = st.evaluation
        if asked is None or (asked.candidate, asked.baseline) != (candidate, baseline):
            st.evaluation = EvaluationStatus(
                candidate=candidate, baseline=baseline, started_at=self.now
            )
            text = f"scoring {candidate} against {baseline} on the same rows ({judging.describe()})"
            self.set_phase("Progressing", EVALUATING, text)
            self.cond("Progressing", "True", EVALUATING, text)
            self.event("Normal", EVALUATING, text)
            return False
        if asked.phase == "Running":
            seen = obs.evaluation or ev.Seen("Running")
            started = asked.started_at or self.now
            if seen.phase == "Running" and self.now - started > EVALUATION_TIMEOUT:
                waited = int(EVALUATION_TIMEOUT.total_seconds())
                seen = ev.Seen(
                    "Failed", reason=ev.EVALUATION_FAILED, message=f"no result after {waited}s"
                )
            if seen.phase == "Running":
                text = f"scoring {candidate} against {baseline} on the same rows"
                self.set_phase("Progressing", EVALUATING, text)
                return False
            verdict = (
                ev.judge(seen.figures, judging.metric, judging.rule, judging.bound)
                if seen.figures is not None
                else None
            )
            st.evaluation = asked = ev.status_of(asked, seen, verdict, self.now)
            if verdict is None:
                self.event("Warning", ev.EVALUATION_FAILED,
                           f"evaluation of {candidate} failed ({seen.reason}: {seen.message}); "
                           "judging the registered metrics instead")  # fmt: skip
        if asked.verdict is None:
            return True  # it failed: the registered metrics judge
        if asked.verdict == "Pass":
            self.event("Normal", EVALUATION_PASSED, asked.message or "")
            self.start_step(0)
        elif self.spec.track is not None:
            self.refuse(asked.reason or ev.NOT_BETTER, asked.message or "")
        else:
            figures = {"candidate": asked.candidate_value or 0.0,
                       "stable": asked.baseline_value or 0.0,
                       "improvement": asked.improvement or 0.0}  # fmt: skip
            self.rollback(asked.reason or METRIC_DROP, asked.message or "", figures)
        return False

    def refuse(self, reason: str, message: str) -> None:
        """A tracked challenger that did not beat the stable version: it takes no
        traffic, is recorded as refused (never proposed again against this stable), and
        the stable version serves on; not a failure."""
        st = self.st
        candidate, stable = st.canary_version or "", st.stable_version or ""
        if st.tracking is not None:
            st.tracking = tk.with_refusal(
                st.tracking,
                RefusedVersion(version=candidate, against=stable, reason=reason,
                               message=message, at=self.now),
            )  # fmt: skip
        self.end_rollout()
        text = f"{candidate} not rolled out: {message}"
        self.set_phase("Stable", reason, text)
        self.cond("Progressing", "False", CHALLENGER_REFUSED, text)
        self.event("Normal", CHALLENGER_REFUSED, text)

    def wait_for_candidate(self, text: str) -> None:
        self.set_phase("Progressing", WAITING_FOR_MODEL_VERSION, text)
        self.cond("Progressing", "True", WAITING_FOR_MODEL_VERSION, text)

    def walk_step(self) -> None:
        """One tick of the current step: record the analysis (a failed one rolls back
        at once), wait for the canary's pods, then judge the step after its pause."""
        st = self.st
        index = min(st.current_step or 0, len(self.spec.canary.steps) - 1)
        result = self.obs.analysis
        if result is not None:
            st.analysis = analysis_status(result, self.now)
            if result.verdict == "Fail":
                self.rollback(result.reason, result.message, dict(result.metrics))
                return
        if st.step_started_at is None or st.reason in WAITING_REASONS:
            self.bring_up_canary(index)
        else:
            self.judge_step(index, result)

    def bring_up_canary(self, index: int) -> None:
        """The step's canary pods are coming up: the step's clock starts once they are
        ready and the split has taken effect; too long, and the canary is rolled back."""
        st, obs, steps = self.st, self.obs, self.spec.canary.steps
        step = steps[index]
        _, want = self.split.pods(self.total(), step.weight)
        self.weight(step.weight)
        if obs.canary_ready >= want and self.split.settled(self.st_effective(), step.weight):
            st.step_started_at = self.now
            self.weight(step.weight)
            text = (
                f"step {index + 1}/{len(steps)}: {self.st_effective()}% of traffic on "
                f"{st.canary_version} (asked {step.weight}%)"
            )
            self.set_phase("Progressing", ANALYSING, text)
            self.cond("Progressing", "True", ANALYSING, text)
            self.cond("TrafficSplit", "True", self.split.reason, text)
            return
        if st.step_started_at is None:
            st.step_started_at = self.now
        waited = self.now - st.step_started_at
        if waited > CANARY_READY_TIMEOUT:
            self.rollback(
                CANARY_NOT_READY,
                f"{obs.canary_ready}/{want} canary pods ready after {int(waited.total_seconds())}s",
                {"canaryReady": float(obs.canary_ready)},
            )
            return
        text = f"waiting for {st.canary_version} pods: {obs.canary_ready}/{want} ready"
        self.set_phase("Progressing", WAITING_FOR_CANARY, text)
        self.weight(step.weight)

    def judge_step(self, index: int, result: an.Result | None) -> None:
        """After the step's pause: a pass moves on (or promotes after the last step),
        an inconclusive window pauses the rollout until traffic or a person decides."""
        st, steps = self.st, self.spec.canary.steps
        step = steps[index]
        self.weight(step.weight)
        self.cond("TrafficSplit", "True", self.split.reason, self.split_message(step.weight))
        elapsed = (self.now - (st.step_started_at or self.now)).total_seconds()
        if elapsed < parse_duration(step.pause) and st.phase != "Paused":
            text = f"step {index + 1}/{len(steps)}: analysing, {int(elapsed)}s of {step.pause}"
            self.set_phase("Progressing", ANALYSING, text)
            return
        if result is None:  # decided without a fresh analysis (an event): hold the step
            return
        if self.replaying(index, result):
            return
        if result.verdict == "Pass":
            if index + 1 < len(steps):
                self.start_step(index + 1)
            else:
                self.promote(manual=False)
            return
        text = f"step {index + 1}/{len(steps)} paused: {result.message}"
        replay = st.replay
        if replay is not None and (replay.version, replay.step) == (st.canary_version, index):
            text += f" (after a replay that {replay.phase.lower()}: {replay.message or ''})"
        if st.phase != "Paused":
            self.event("Warning", ROLLOUT_PAUSED, text)
        self.set_phase("Paused", result.reason, text)
        self.cond("Progressing", "True", PAUSED, text)

    def replaying(self, index: int, result: an.Result) -> bool:
        """A quiet step with replay on: the candidate's evaluation rows are sent to the
        pods of both tracks (a Job) and the step is judged once the Job is over, on all
        of them. True while that is asked for or under way; False once it is over (the
        step is then judged, or pauses as without replay), or when there is none."""
        st, obs, steps = self.st, self.obs, self.spec.canary.steps
        if not obs.replay_enabled:
            return False
        version = st.canary_version or ""
        asked = st.replay
        step_began = st.step_started_at or self.now
        stale = (
            asked is None
            or (asked.version, asked.step) != (version, index)
            or (asked.started_at is not None and asked.started_at < step_began)
        )
        where = f"step {index + 1}/{len(steps)}"
        if stale and result.reason != TOO_FEW_REQUESTS:
            return False
        if stale:
            st.replay = ReplayStatus(version=version, step=index, started_at=self.now)
            text = f"{where}: {result.message}; replaying the rows of {version} to both tracks"
            self.set_phase("Progressing", REPLAYING, text)
            self.cond("Progressing", "True", REPLAYING, text)
            self.event("Normal", REPLAYING, text)
            return True
        assert asked is not None
        if asked.phase != "Running":
            return False
        seen = obs.replay or jobs.Outcome("Running")
        if seen.phase == "Running" and self.now - (asked.started_at or self.now) > REPLAY_TIMEOUT:
            waited = int(REPLAY_TIMEOUT.total_seconds())
            seen = jobs.Outcome(
                "Failed", reason=REPLAY_FAILED, message=f"no result after {waited}s"
            )
        if seen.phase == "Running":
            self.set_phase("Progressing", REPLAYING, f"{where}: replaying the rows of {version}")
            return True
        report = seen.report if isinstance(seen.report, dict) else {}
        rows = report.get("rows")
        st.replay = asked.model_copy(update={
            "phase": seen.phase,
            "rows": rows if isinstance(rows, int) and rows >= 0 else None,
            "reason": seen.reason or None,
            "message": seen.message or (f"{rows} rows sent to each pod" if rows else None),
        })  # fmt: skip
        if seen.phase == "Failed":
            self.event("Warning", REPLAY_FAILED, f"{where}: {seen.reason}: {seen.message}")
        return False

    def finish(self) -> None:
        st, obs = self.st, self.obs
        st.observed_generation = obs.generation
        if obs.url is not None:
            st.url = obs.url
        st.ready_replicas = obs.stable_ready + (obs.canary_ready if st.canary_version else 0)
        st.replicas = self.total() + canary_replicas(self.spec, st, self.total())
        if st.canary_weight is not None:
            st.canary_weight = CanaryWeight(
                desired=st.canary_weight.desired, effective=self.st_effective()
            )
        if obs.stable_ready > 0:
            self.cond("Ready", "True", SERVING, f"{obs.stable_ready} stable pods ready")
        elif self.spec.replicas == 0:
            self.cond("Ready", "True", SCALED_TO_ZERO, "spec.replicas is 0")
        elif obs.stable_refused:
            self.cond(
                "Ready",
                "False",
                ARTIFACT_REFUSED,
                f"no ready pod serves {st.stable_version}: {obs.stable_refused}",
            )
        else:
            self.cond("Ready", "False", NO_READY_PODS, f"no ready pod serves {st.stable_version}")
        if not obs.traffic_ok:
            self.cond("TrafficSplit", "False", obs.traffic_reason, obs.traffic_message)
        elif st.canary_version is None:
            self.cond(
                "TrafficSplit", "True", self.split.reason, "all traffic on the stable version"
            )


# --- Manual actions by annotation ------------------------------------------------------------


def annotation_set_at(metadata: Mapping[str, Any], key: str) -> datetime | None:
    """When the annotation `key` was last written, from the object's managedFields.

    The entry of the field manager that owns the annotation carries the time of its
    last write (a person's `kubectl annotate`, a GitOps tool's apply).
    """
    latest: datetime | None = None
    for entry in metadata.get("managedFields") or []:
        owned = ((entry.get("fieldsV1") or {}).get("f:metadata") or {}).get("f:annotations") or {}
        if f"f:{key}" not in owned or not entry.get("time"):
            continue
        at = parse_timestamp(str(entry["time"]))
        latest = at if latest is None or at > latest else latest
    return latest


def annotation_action(
    value: str | None, set_at: datetime | None, status: ModelDeploymentStatus
) -> RolloutAction | None:
    """The rollout-action annotation's action if it still has to be carried out.

    Acted on once: not when status.lastAction records an action carried out at or after
    the annotation was written (this one, or a later request that supersedes it), and
    not when it was written before the current rollout began (a leftover).
    """
    action = (value or "").strip().lower()
    if action not in ("promote", "abort"):
        return None
    last = status.last_action
    if last is not None and last.at is not None and set_at is not None and last.at >= set_at:
        return None  # carried out, or superseded by a later request
    if set_at is None and last is not None and (last.source, last.action) == ("annotation", action):
        return None
    started = status.rollout_started_at
    if set_at is not None and started is not None and set_at < started:
        return None
    return "promote" if action == "promote" else "abort"


def decide(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    now: datetime,
    obs: Observations,
) -> Decision:
    """The next status and the events, from the spec, the current status and observations.

    A manual action comes from `status.requestedAction` (consumed here) or from a
    changed rollout-action annotation (`obs.annotation_action`); each is acted on once
    and recorded in `status.lastAction`.
    """
    machine = _Machine(spec, status, now, obs)
    action: tuple[RolloutAction, str] | None = None
    if status.requested_action is not None:
        action = (status.requested_action, "status")
        machine.st.requested_action = None
    elif obs.annotation_action is not None:
        action = (obs.annotation_action, "annotation")
    machine.run(action)
    machine.finish()
    return Decision(machine.st, machine.events)


def refused(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    now: datetime,
    generation: int | None,
    reason: str,
    message: str,
) -> Decision:
    """The spec may not be served as written (the admin's policy refuses it): no child
    changes, what serves keeps serving, and status and one event say why."""
    machine = _Machine(spec, status, now, Observations(generation=generation))
    if status.reason != reason or status.message != message:
        machine.event("Warning", reason, message)
    machine.set_phase("Degraded", reason, message)
    machine.cond("Degraded", "True", reason, message)
    machine.cond("Ready", "False", reason, message)
    machine.st.observed_generation = generation
    return Decision(machine.st, machine.events)
