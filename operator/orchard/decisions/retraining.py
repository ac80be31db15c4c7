"""When a ModelDeployment trains a new version by itself (`spec.retrain`): pure.

`decide` takes the retrain spec, `status.retraining`, what monitoring says of the stable
version, the deployment's last retraining TrainingJob as read, and the time; it returns
the next `status.retraining`, whether to start a retraining (and on which trigger), and
the events. The rules:

- at most one retraining at a time: while its TrainingJob runs, nothing starts, and its
  end (the version it registered, or why it failed) is reported once;
- nothing starts while a rollout is under way, nor within `cooldown` of the last start,
  whatever the trigger: a failing retraining, or one whose result is refused, is
  reported once and waits, never a storm;
- triggers, in this order: `request` (the retrain-request annotation was written after
  the last retraining started), `drift` (DriftDetected True), `accuracy`
  (AccuracyDegraded True), `labels` (the monitoring window holds `newLabels` labelled
  rows), `schedule` (its time came). A condition counts only when it is about the
  version serving now. A scheduled time that comes while something blocks it waits
  until it can run (several missed times run once). A request is a person asking: it
  does not wait for the cooldown, but does wait for a running retraining or rollout, and
  any retraining started after it was written answers it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from orchard.api import cron
from orchard.api.common import Condition, get_condition, parse_duration
from orchard.api.improvement import Retrain, RetrainingStatus, RetrainTrigger, TriggerType

STARTED = "RetrainStarted"
SUCCEEDED = "RetrainSucceeded"
FAILED = "RetrainFailed"
MISSING = "TrainingJobMissing"

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class TrainingSeen:
    """The deployment's last retraining TrainingJob, as read (None fields: not yet)."""

    found: bool = True
    phase: str | None = None
    model_version: str | None = None
    reason: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Monitored:
    """What monitoring says of the version serving now."""

    stable_version: str | None = None
    watched_version: str | None = None  # status.monitoring.version
    conditions: list[Condition] = field(default_factory=list)
    labels: int = 0  # labelled rows in the monitoring window
    in_rollout: bool = False
    requested_at: datetime | None = None  # when the retrain-request annotation was written


@dataclass
class Decision:
    status: RetrainingStatus
    start: TriggerType | None = None
    events: list[tuple[EventType, str, str]] = field(default_factory=list)


Events = list[tuple[EventType, str, str]]


def _finished(st: RetrainingStatus, seen: TrainingSeen | None, events: Events) -> None:
    """The running retraining's end, recorded and told once."""
    if st.phase != "Running" or st.training_job is None:
        return
    if seen is None or not seen.found:
        st.phase, st.reason = "Failed", MISSING
        st.message = f"TrainingJob {st.training_job} is gone"
        events.append(("Warning", FAILED, st.message))
    elif seen.phase == "Failed":
        st.phase, st.reason = "Failed", seen.reason or "TrainingFailed"
        st.message = seen.message or ""
        events.append(("Warning", FAILED, f"{st.training_job} failed: {st.reason}: {st.message}"))
    elif seen.phase == "Succeeded" and seen.model_version:
        st.phase, st.reason, st.model_version = "Succeeded", "Registered", seen.model_version
        st.message = f"{st.training_job} registered {seen.model_version}"
        events.append(("Normal", SUCCEEDED, st.message))


def requested(mon: Monitored, st: RetrainingStatus) -> bool:
    """A request not yet answered by a retraining started at or after it."""
    if mon.requested_at is None:
        return False
    return st.started_at is None or st.started_at < mon.requested_at


def _fired(
    retrain: Retrain, mon: Monitored, due: bool, asked: bool
) -> tuple[TriggerType, str] | None:
    """The first trigger that fires now, with what was seen."""
    if asked:
        return "request", f"requested at {mon.requested_at:%Y-%m-%dT%H:%M:%SZ}"
    triggers = retrain.triggers
    current = mon.watched_version is not None and mon.watched_version == mon.stable_version
    by_condition: tuple[tuple[bool, str, TriggerType], ...] = (
        (triggers.drift, "DriftDetected", "drift"),
        (triggers.accuracy, "AccuracyDegraded", "accuracy"),
    )
    for wanted, type_, kind in by_condition:
        cond = get_condition(mon.conditions, type_)
        if wanted and current and cond is not None and cond.status == "True":
            return kind, f"{type_}: {cond.message}"
    if triggers.new_labels is not None and current and mon.labels >= triggers.new_labels:
        return "labels", f"{mon.labels} labelled rows in the monitoring window"
    if due:
        return "schedule", f"schedule {triggers.schedule}"
    return None


def decide(
    retrain: Retrain,
    status: RetrainingStatus | None,
    mon: Monitored,
    seen: TrainingSeen | None,
    now: datetime,
) -> Decision:
    """The next status.retraining, and whether to start one (see the module docstring)."""
    st = (status or RetrainingStatus()).model_copy(deep=True)
    events: Events = []
    _finished(st, seen, events)
    schedule = retrain.triggers.schedule
    if schedule is None:
        st.next_scheduled = None
    elif st.next_scheduled is None:
        st.next_scheduled = cron.parse(schedule).next_after(now)
    due = st.next_scheduled is not None and now >= st.next_scheduled
    cooling = st.started_at is not None and now - st.started_at < timedelta(
        seconds=parse_duration(retrain.cooldown)
    )
    asked = requested(mon, st)
    if st.phase == "Running" or mon.in_rollout or (cooling and not asked):
        return Decision(st, None, events)
    fired = _fired(retrain, mon, due, asked)
    if fired is None:
        return Decision(st, None, events)
    kind, seen_text = fired
    if schedule is not None and due:
        st.next_scheduled = cron.parse(schedule).next_after(now)
    st.count += 1
    st.last_trigger = RetrainTrigger(type=kind, message=seen_text[:512], at=now)
    st.training_job = None  # the handler names it
    st.phase, st.reason, st.model_version = "Running", "Started", None
    st.message = f"retraining on {kind}: {seen_text}"[:1024]
    st.started_at = now
    events.append(("Normal", STARTED, st.message))
    return Decision(st, kind, events)
