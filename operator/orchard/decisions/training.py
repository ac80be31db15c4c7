"""What a TrainingJob's batch/v1 Job and its pods say about the training run.

Everything here is pure: the handlers pass in the Job and pod dicts as the API server
returned them and write back what these functions decide. The trainer reports through
each pod's termination message (docs/artifact-format.md), so the outcome, the metrics
and the artifact are all read from the pods, never from the artifact store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from orchard.api.common import Condition, parse_timestamp, set_condition
from orchard.api.trainingjob import (
    DEFAULT_ARTIFACTS_ENV,
    TRAINER_CONTAINER,
    ArtifactRef,
    Artifacts,
    PrimaryMetric,
    Search,
    TrainingJobSpec,
    TrainingJobStatus,
    TrainingPhase,
    Trial,
)
from orchard.artifacts.redact import redact_text, redact_uri
from orchard.contracts import ReportedError, TrainerReport

# The completion index of a pod of an Indexed Job.
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
MAX_TRIALS_IN_STATUS = 50
MAX_MESSAGE = 1024

# Waiting reasons of a container whose image cannot be had: the pod would wait forever.
IMAGE_PROBLEMS = frozenset(
    {"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"}
)
# Waiting reasons that say what holds a pod back but may clear by themselves (a Secret
# created later): shown, never terminal.
CONFIG_PROBLEMS = frozenset({"CreateContainerConfigError", "CreateContainerError"})

# Reasons Orchard itself gives (the trainer's own are in orchard.trainer.errors).
JOB_CREATED = "JobCreated"
TRAINING = "Training"
TRAINED = "Trained"
REGISTERED = "Registered"
OUT_OF_MEMORY = "OutOfMemory"
DEADLINE_EXCEEDED = "DeadlineExceeded"
IMAGE_PROBLEM = "ImageProblem"
NO_RESULT = "NoResult"
TRAINING_ERROR = "TrainingError"
BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
JOB_MISSING = "JobMissing"
JOB_DELETED = "JobDeleted"
QUEUED = "Queued"  # waiting for a slot (decisions.queue)
START_FAILED = "StartFailed"
SPEC_CONFLICT = "SpecConflict"
JOB_CONFLICT = "JobConflict"
GATE_FAILED = "GateFailed"
UNSCHEDULABLE = "Unschedulable"
NO_ARTIFACT_STORE = "NoArtifactStore"
NO_ARTIFACT_STORE_MESSAGE = (
    "no artifact store: the spec has no artifacts.uri and the operator no default "
    f"({DEFAULT_ARTIFACTS_ENV}); set spec.artifacts.uri (pvc://<claim>/<prefix> or "
    "s3://<bucket>/<prefix>) in a new TrainingJob, or ask the admin for a default store"
)


def clip(text: str, limit: int = MAX_MESSAGE) -> str:
    """A message short enough for status and events."""
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_time(value: Any) -> datetime | None:
    """An optional status timestamp as a datetime: None when it is missing or unreadable."""
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    try:
        return parse_timestamp(str(value))
    except ValueError:
        return None


# --- Where the run writes --------------------------------------------------------


def artifact_store(spec: TrainingJobSpec, default: Artifacts | None) -> Artifacts | None:
    """The store a run writes to: the spec's own, else the operator's default; None when
    there is neither, and the TrainingJob fails (NO_ARTIFACT_STORE) before a Job exists."""
    return spec.artifacts if spec.artifacts is not None else default


# --- The trainer's termination message ------------------------------------------


@dataclass(frozen=True)
class TrainerFailure:
    """Why a run failed or waits: a CamelCase reason and a message for people."""

    reason: str
    message: str


def _as_result(data: dict[str, Any]) -> TrainerReport | TrainerFailure | None:
    """A report as `orchard.contracts` declares it (None: not one), its dataset URI and a
    failure's message redacted again, whatever the trainer's image did."""
    error = data.get("error")
    try:
        if isinstance(error, dict):
            failed = ReportedError.model_validate(error)
            return TrainerFailure(
                reason=failed.reason or TRAINING_ERROR,
                message=clip(redact_text(failed.message)),
            )
        report = TrainerReport.model_validate(data)
    except ValidationError:
        return None
    dataset = {k: redact_uri(v) if k == "uri" else v for k, v in report.dataset.items()}
    return report.model_copy(update={"dataset": dataset})


def termination_objects(text: str | None) -> Iterator[dict[str, Any]]:
    """The JSON objects a termination message may be: the whole message (the process's
    one report), else with FallbackToLogsOnError the tail of its log, last line first."""
    if not text or not text.strip():
        return
    for candidate in [text, *reversed(text.strip().splitlines())]:
        candidate = candidate.strip()
        if not candidate.startswith("{"):
            continue
        try:
            data = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(data, dict):
            yield data


def parse_termination_message(text: str | None) -> TrainerReport | TrainerFailure | None:
    """The trainer's report in a termination message (`termination_objects`)."""
    for data in termination_objects(text):
        if (parsed := _as_result(data)) is not None:
            return parsed
    return None


# --- One pod ----------------------------------------------------------------------

PodPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class PodReport:
    """What one trainer pod says: its trial index, where it stands and why."""

    name: str
    index: int
    phase: PodPhase
    created: str = ""
    finished: str = ""
    result: TrainerReport | None = None
    failure: TrainerFailure | None = None
    waiting: TrainerFailure | None = None


def _trainer_status(pod: Mapping[str, Any]) -> Mapping[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    for status in statuses:
        if status.get("name") == TRAINER_CONTAINER:
            return dict(status)
    return dict(statuses[0]) if statuses else {}


def pod_index(pod: Mapping[str, Any]) -> int:
    """The completion index of a pod of an Indexed Job (0 for a plain Job)."""
    meta = pod.get("metadata", {})
    raw = (meta.get("annotations") or {}).get(COMPLETION_INDEX_ANNOTATION) or (
        meta.get("labels") or {}
    ).get(COMPLETION_INDEX_ANNOTATION)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


def pod_report(pod: Mapping[str, Any]) -> PodReport:
    """Read one trainer pod: its phase and the trainer's report, or why it waits."""
    meta = pod.get("metadata", {})
    status = pod.get("status", {})
    container = _trainer_status(pod)
    state = container.get("state") or {}
    terminated = state.get("terminated")
    waiting = state.get("waiting")
    raw_phase = status.get("phase", "Pending")
    phase: PodPhase = (
        raw_phase if raw_phase in ("Pending", "Running", "Succeeded", "Failed") else ("Pending")
    )
    base = {
        "name": meta.get("name", ""),
        "index": pod_index(pod),
        "created": meta.get("creationTimestamp", ""),
    }
    if terminated:
        base["finished"] = terminated.get("finishedAt") or ""
        parsed = parse_termination_message(terminated.get("message"))
        exit_code = terminated.get("exitCode", 0)
        if exit_code == 0 and isinstance(parsed, TrainerReport):
            return PodReport(**base, phase="Succeeded", result=parsed)
        if exit_code == 0 and phase == "Succeeded":
            return PodReport(
                **base,
                phase="Succeeded",
                failure=TrainerFailure(NO_RESULT, "the trainer exited 0 but reported no result"),
            )
        return PodReport(**base, phase="Failed", failure=_failure(terminated, parsed))
    if phase == "Failed":
        # Evicted, deadline, or killed before the container ran.
        reason = status.get("reason") or TRAINING_ERROR
        if reason == DEADLINE_EXCEEDED:
            return PodReport(
                **base, phase="Failed", failure=TrainerFailure(DEADLINE_EXCEEDED, "pod deadline")
            )
        return PodReport(
            **base,
            phase="Failed",
            failure=TrainerFailure(str(reason), clip(status.get("message") or str(reason))),
        )
    if waiting and waiting.get("reason") in IMAGE_PROBLEMS | CONFIG_PROBLEMS:
        reason = str(waiting["reason"])
        kind = IMAGE_PROBLEM if reason in IMAGE_PROBLEMS else reason
        detail = clip(waiting.get("message") or reason)
        image = container.get("image") or ""
        message = f"{reason}: {detail}" if not image else f"{reason} for image {image}: {detail}"
        return PodReport(**base, phase="Pending", waiting=TrainerFailure(kind, clip(message)))
    if phase == "Pending":
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return PodReport(
                    **base,
                    phase="Pending",
                    waiting=TrainerFailure(
                        str(cond.get("reason") or UNSCHEDULABLE),
                        clip(cond.get("message") or "the pod cannot be scheduled"),
                    ),
                )
    return PodReport(**base, phase=phase)


def _failure(
    terminated: Mapping[str, Any], parsed: TrainerReport | TrainerFailure | None
) -> TrainerFailure:
    if terminated.get("reason") == "OOMKilled":
        return TrainerFailure(
            OUT_OF_MEMORY,
            "the trainer was killed for using more memory than its limit "
            "(raise spec.resources.limits.memory)",
        )
    if isinstance(parsed, TrainerFailure):
        return parsed
    exit_code = terminated.get("exitCode")
    tail = clip(redact_text(terminated.get("message") or ""), 512)
    message = f"the trainer exited with code {exit_code}"
    if terminated.get("reason") and terminated.get("reason") not in ("Error", "Completed"):
        message += f" ({terminated['reason']})"
    return TrainerFailure(TRAINING_ERROR, f"{message}: {tail}" if tail else message)


def latest_by_index(reports: Iterable[PodReport]) -> dict[int, PodReport]:
    """One report per trial: a succeeded pod if there is one, else the newest pod."""
    out: dict[int, PodReport] = {}
    for report in sorted(reports, key=lambda r: (r.created, r.name)):
        current = out.get(report.index)
        if current is not None and current.phase == "Succeeded" and current.result is not None:
            continue
        out[report.index] = report
    return out


# --- The whole run ----------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """Where a training run stands, decided from its Job and pods."""

    phase: TrainingPhase
    reason: str
    message: str
    start_time: datetime | None = None
    completion_time: datetime | None = None
    result: TrainerReport | None = None
    best_trial: int | None = None
    trials: list[Trial] = field(default_factory=list)
    # True when the Job is still running pods the outcome no longer needs (a pod that
    # can never pull its image): the handler suspends the Job.
    stop_job: bool = False

    @property
    def terminal(self) -> bool:
        return self.phase in ("Succeeded", "Failed")


def _job_condition(job: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for cond in job.get("status", {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def objective_value(result: TrainerReport, metric: str) -> float | None:
    """The trial's value of the objective metric, if it reported one."""
    return result.metrics.get(metric)


def best_trial(
    results: Mapping[int, TrainerReport], metric: str, direction: str = "maximize"
) -> int | None:
    """The index of the best trial by the objective; ties go to the lowest index.

    Trials that did not report the metric are never best.
    """
    scored = [(i, r.metrics[metric]) for i, r in results.items() if metric in r.metrics]
    if not scored:
        return None
    sign = -1.0 if direction == "maximize" else 1.0
    return min(scored, key=lambda item: (sign * item[1], item[0]))[0]


def trials_for_status(
    reports: Mapping[int, PodReport],
    search: Search,
    limit: int = MAX_TRIALS_IN_STATUS,
) -> list[Trial]:
    """The trials as status shows them, in index order, at most `limit`.

    When there are more, the best-scoring finished trials are kept (running and
    failed trials are dropped first), so the winner is always listed.
    """
    trials: list[tuple[float, Trial]] = []
    sign = 1.0 if search.objective.direction == "maximize" else -1.0
    for index, report in reports.items():
        result = report.result
        params = result.params if result else {}
        metrics = result.metrics if result else {}
        value = metrics.get(search.objective.metric)
        rank = sign * value if value is not None else -math.inf
        trials.append(
            (rank, Trial(index=index, params=params, metrics=metrics, phase=report.phase))
        )
    if len(trials) > limit:
        trials = sorted(trials, key=lambda t: (-t[0], t[1].index))[:limit]
    return [t for _, t in sorted(trials, key=lambda t: t[1].index)]


def missing_job(previous: TrainingJobStatus, job_name: str) -> Outcome:
    """No training Job: not made yet (nothing but JobMissing was ever written), or gone
    after it was seen (deleted by hand, or with its pods): then the run is over at once,
    with the reason, never a JobMissing that lasts until the operator restarts."""
    if previous.reason in (None, JOB_MISSING, QUEUED) and previous.phase in (None, "Pending"):
        return Outcome("Pending", JOB_MISSING, "the training Job does not exist yet")
    return Outcome(
        "Failed",
        JOB_DELETED,
        f"the training Job {job_name} was deleted before its result was registered; "
        "create the TrainingJob again to train again",
    )


def training_outcome(
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    search: Search | None = None,
    *,
    deadline_seconds: int | None = None,
) -> Outcome:
    """Decide phase, reason and result of a training run from its Job and pods."""
    if job is None:
        return Outcome("Pending", JOB_MISSING, "the training Job does not exist yet")
    status = job.get("status", {})
    start = parse_time(status.get("startTime"))
    reports = latest_by_index(pod_report(p) for p in pods)
    trials = trials_for_status(reports, search) if search else []
    results = {i: r.result for i, r in reports.items() if r.result is not None}
    total = int(job.get("spec", {}).get("completions") or 1)

    complete = _job_condition(job, "Complete")
    failed = _job_condition(job, "Failed")
    if complete or (failed and failed.get("reason") == "FailedIndexes" and results):
        end = parse_time(status.get("completionTime")) or parse_time(
            (complete or failed or {}).get("lastTransitionTime")
        )
        return _finished(results, reports, search, trials, start, end, total)
    if not failed and all(i in results for i in range(total)):
        # Every completion index has a pod that exited 0 with its result: the Job is
        # bound to complete, and the operator need not wait the seconds its controller
        # takes to say so.
        finished = [t for r in reports.values() if (t := parse_time(r.finished))]
        end = max(finished) if finished else None
        return _finished(results, reports, search, trials, start, end, total)
    if failed:
        end = parse_time(failed.get("lastTransitionTime"))
        reason, message = _job_failure(failed, reports, deadline_seconds)
        return Outcome("Failed", reason, message, start, end, trials=trials)

    # Still going: a pod that can never start decides the run.
    for report in sorted(reports.values(), key=lambda r: r.index):
        if report.waiting and report.waiting.reason == IMAGE_PROBLEM:
            return Outcome(
                "Failed",
                IMAGE_PROBLEM,
                report.waiting.message,
                start,
                None,
                trials=trials,
                stop_job=True,
            )
    running = [r for r in reports.values() if r.phase == "Running"]
    done = len([r for r in reports.values() if r.phase in ("Succeeded", "Failed")])
    active = int(status.get("active") or 0)
    if running or int(status.get("ready") or 0) > 0 or (search and done):
        if search:
            message = f"{done} of {total} trials done, {len(running)} running"
        elif running:
            message = f"pod {running[0].name} is training"
        else:
            message = "the trainer is running"
        return Outcome("Running", TRAINING, message, start, trials=trials)
    for report in sorted(reports.values(), key=lambda r: r.index):
        if report.waiting:
            return Outcome(
                "Pending", report.waiting.reason, report.waiting.message, start, trials=trials
            )
    message = "waiting for the trainer pod to start" if active else "waiting for the Job to start"
    return Outcome("Pending", JOB_CREATED, message, start, trials=trials)


def _finished(
    results: Mapping[int, TrainerReport],
    reports: Mapping[int, PodReport],
    search: Search | None,
    trials: list[Trial],
    start: datetime | None,
    end: datetime | None,
    total: int,
) -> Outcome:
    if not results:
        return Outcome(
            "Failed",
            NO_RESULT,
            "the Job completed but no trainer pod reported a result (were its pods deleted?)",
            start,
            end,
            trials=trials,
        )
    if search is None:
        index = min(results)
        result = results[index]
        return Outcome("Succeeded", TRAINED, _metrics_line(result), start, end, result=result)
    best = best_trial(results, search.objective.metric, search.objective.direction)
    if best is None:
        return Outcome(
            "Failed",
            NO_RESULT,
            f"no trial reported the objective metric {search.objective.metric!r}",
            start,
            end,
            trials=trials,
        )
    failed = len([r for r in reports.values() if r.phase == "Failed"])
    message = (
        f"{len(results)} of {total} trials succeeded"
        + (f" ({failed} failed)" if failed else "")
        + f"; best trial {best}: {search.objective.metric}="
        + f"{results[best].metrics[search.objective.metric]:.4g}"
    )
    return Outcome(
        "Succeeded",
        TRAINED,
        message,
        start,
        end,
        result=results[best],
        best_trial=best,
        trials=trials,
    )


def _metrics_line(result: TrainerReport) -> str:
    shown = ", ".join(f"{k}={v:.4g}" for k, v in list(result.metrics.items())[:4])
    return f"trained: {shown}" if shown else "trained"


def _job_failure(
    failed: Mapping[str, Any], reports: Mapping[int, PodReport], deadline_seconds: int | None
) -> tuple[str, str]:
    if failed.get("reason") == DEADLINE_EXCEEDED:
        limit = f" of {deadline_seconds}s" if deadline_seconds else ""
        return (
            DEADLINE_EXCEEDED,
            f"training ran past its deadline{limit} (spec.activeDeadlineSeconds)",
        )
    failures = [r for r in sorted(reports.values(), key=lambda r: r.index) if r.failure]
    if failures:
        first = failures[0]
        assert first.failure is not None
        message = first.failure.message
        if first.failure.reason == GATE_FAILED:
            message += "; nothing was registered"
        if len(reports) > 1:
            message = f"trial {first.index}: {message}"
        return first.failure.reason, clip(message)
    return (
        str(failed.get("reason") or BACKOFF_LIMIT_EXCEEDED),
        clip(str(failed.get("message") or "the training Job failed")),
    )


# --- Status -----------------------------------------------------------------------


def primary_metric(spec: TrainingJobSpec, metrics: Mapping[str, float]) -> PrimaryMetric | None:
    """The metric `kubectl get tj` shows: the search objective, else the gate's, else
    the task's usual one (accuracy, r2), else the first reported."""
    preferred = [
        spec.search.objective.metric if spec.search else None,
        spec.gate.metric if spec.gate else None,
        "accuracy" if spec.estimator.task == "classification" else "r2",
    ]
    for name in [p for p in preferred if p] + list(metrics):
        if name in metrics:
            return PrimaryMetric(name=name, value=metrics[name])
    return None


def training_status(
    previous: TrainingJobStatus,
    outcome: Outcome,
    spec: TrainingJobSpec,
    *,
    generation: int | None,
    job_name: str,
    model_version: str | None = None,
    queue_position: int | None = None,
    at: datetime | None = None,
) -> TrainingJobStatus:
    """The new status from the outcome: phase, conditions (Ready, Complete, Failed),
    times, metrics, trials, the place in the queue while queued and, once registered,
    the ModelVersion's name."""
    conditions: list[Condition] = list(previous.conditions)
    metrics = outcome.result.metrics if outcome.result else {}
    reason, message = outcome.reason, outcome.message
    if outcome.phase == "Succeeded":
        if model_version:
            reason, message = REGISTERED, f"registered as ModelVersion {model_version}; {message}"
            conditions = set_condition(
                conditions, "Ready", "True", reason, message, generation=generation, at=at
            )
        else:
            conditions = set_condition(
                conditions,
                "Ready",
                "False",
                TRAINED,
                "trained; registering the ModelVersion",
                generation=generation,
                at=at,
            )
        conditions = set_condition(
            conditions, "Complete", "True", TRAINED, outcome.message, generation=generation, at=at
        )
        conditions = set_condition(
            conditions, "Failed", "False", TRAINED, "", generation=generation, at=at
        )
    elif outcome.phase == "Failed":
        conditions = set_condition(
            conditions, "Ready", "False", reason, message, generation=generation, at=at
        )
        conditions = set_condition(
            conditions, "Failed", "True", reason, message, generation=generation, at=at
        )
        conditions = set_condition(
            conditions, "Complete", "False", reason, "", generation=generation, at=at
        )
    else:
        conditions = set_condition(
            conditions, "Ready", "False", reason, message, generation=generation, at=at
        )
    artifact = (
        ArtifactRef(uri=outcome.result.artifact_uri, digest=outcome.result.digest)
        if outcome.result
        else previous.artifact
    )
    return TrainingJobStatus(
        phase=outcome.phase,
        observed_generation=generation,
        conditions=conditions,
        job_name=job_name,
        start_time=outcome.start_time or previous.start_time,
        completion_time=outcome.completion_time,
        metrics=metrics or previous.metrics,
        primary_metric=primary_metric(spec, metrics) or previous.primary_metric,
        model_version=model_version or previous.model_version,
        artifact=artifact,
        reason=reason,
        message=message,
        trials=outcome.trials or previous.trials,
        best_trial=outcome.best_trial if outcome.best_trial is not None else previous.best_trial,
        queue_position=queue_position,
    )


# --- Registration -----------------------------------------------------------------


def registered_version(
    versions: Iterable[Mapping[str, Any]], trainingjob_uid: str, uid_label: str
) -> str | None:
    """The name of the ModelVersion this TrainingJob already registered, if any."""
    for mv in versions:
        labels = mv.get("metadata", {}).get("labels") or {}
        if labels.get(uid_label) == trainingjob_uid:
            return str(mv["metadata"]["name"])
    return None


def next_version(versions: Iterable[Mapping[str, Any]], model: str) -> int:
    """The next version number of a model: one more than the highest registered."""
    numbers = [
        int(mv.get("spec", {}).get("version") or 0)
        for mv in versions
        if mv.get("spec", {}).get("model") == model
    ]
    return max(numbers, default=0) + 1
