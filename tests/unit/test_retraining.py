"""spec.retrain: cron schedules, and when a retraining starts (triggers, one at a time,
cooldown, a blocked schedule that waits), as tables of pure decisions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from orchard.api import cron
from orchard.api.common import Condition
from orchard.api.improvement import Retrain, RetrainingStatus
from orchard.decisions import retraining as rt

T0 = datetime(2026, 12, 2, 12, 0, 30, tzinfo=UTC)  # a Wednesday


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("* * * * *", T0, datetime(2026, 12, 2, 12, 1, tzinfo=UTC)),
        ("*/15 * * * *", T0, datetime(2026, 12, 2, 12, 15, tzinfo=UTC)),
        ("0 3 * * *", T0, datetime(2026, 12, 3, 3, 0, tzinfo=UTC)),
        ("30 12 * * *", T0.replace(minute=30, second=0), datetime(2026, 12, 3, 12, 30, tzinfo=UTC)),
        (
            "0 9 * * 1-5",
            datetime(2026, 12, 5, 10, tzinfo=UTC),
            datetime(2026, 12, 7, 9, tzinfo=UTC),
        ),
        ("0 0 * * 0", T0, datetime(2026, 12, 6, 0, 0, tzinfo=UTC)),  # Sunday as 0
        ("0 0 * * 7", T0, datetime(2026, 12, 6, 0, 0, tzinfo=UTC)),  # and as 7
        ("0 0 1 * 1", T0, datetime(2026, 12, 7, 0, 0, tzinfo=UTC)),  # day-of-month or Monday
        ("0 0 29 2 *", T0, datetime(2028, 2, 29, 0, 0, tzinfo=UTC)),
        ("5,35 */6 * 12 *", T0, datetime(2026, 12, 2, 12, 5, tzinfo=UTC)),
    ],
)
def test_next_time_of_a_schedule(expression: str, after: datetime, expected: datetime) -> None:
    assert cron.parse(expression).next_after(after) == expected


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("* * * *", "five fields"),
        ("60 * * * *", "minute"),
        ("* 24 * * *", "hour"),
        ("* * 0 * *", "day-of-month"),
        ("*/0 * * * *", "step"),
        ("a * * * *", "minute"),
        ("0 0 31 2 *", "never fires"),
    ],
)
def test_a_bad_schedule_is_refused_naming_the_field(expression: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        cron.parse(expression)


def retrain(**triggers: Any) -> Retrain:
    return Retrain.model_validate(
        {"template": {"trainingJobRef": {"name": "base"}}, "cooldown": "10m",
         "triggers": {"drift": True, "accuracy": True, **triggers}}
    )  # fmt: skip


def cond(type_: str, status: str, message: str = "") -> Condition:
    return Condition(type=type_, status=status, reason="R", message=message)  # type: ignore[arg-type]


ASKED = rt.Monitored("iris-v1", "iris-v1", requested_at=T0 - timedelta(seconds=30))
DRIFTED = rt.Monitored("iris-v1", "iris-v1", [cond("DriftDetected", "True", "petal_length")])
QUIET = rt.Monitored("iris-v1", "iris-v1", [cond("DriftDetected", "False")])


def status(**fields: Any) -> RetrainingStatus:
    return RetrainingStatus.model_validate(fields)


RUNNING = {"count": 1, "trainingJob": "iris-retrain-1", "phase": "Running",
           "startedAt": "2026-12-02T11:00:00Z"}  # fmt: skip
CASES: list[tuple[str, Retrain, RetrainingStatus | None, rt.Monitored, rt.TrainingSeen | None,
                  str | None, tuple[str, ...]]] = [
    ("drift starts the first retraining", retrain(), None, DRIFTED, None, "drift",
     (rt.STARTED,)),
    ("no trigger, nothing starts", retrain(), None, QUIET, None, None, ()),
    ("drift seen by the monitoring of another version does not count", retrain(), None,
     rt.Monitored("iris-v2", "iris-v1", DRIFTED.conditions), None, None, ()),
    ("a trigger turned off does not start", retrain(drift=False), None, DRIFTED, None, None, ()),
    ("accuracy starts it", retrain(), None,
     rt.Monitored("iris-v1", "iris-v1", [cond("AccuracyDegraded", "True", "0.7 < 0.9")]), None,
     "accuracy", (rt.STARTED,)),
    ("enough labels start it", retrain(newLabels=100), None,
     rt.Monitored("iris-v1", "iris-v1", labels=150), None, "labels", (rt.STARTED,)),
    ("one at a time: a running retraining blocks a trigger", retrain(), status(**RUNNING),
     DRIFTED, rt.TrainingSeen(phase="Running"), None, ()),
    ("its end is reported once, then the cooldown holds", retrain(), status(
        **{**RUNNING, "startedAt": "2026-12-02T11:55:00Z"}), DRIFTED,
     rt.TrainingSeen(phase="Failed", reason="DataCheckFailed", message="too few rows"), None,
     (rt.FAILED,)),
    ("after the cooldown a persisting trigger starts the next", retrain(), status(
        count=1, trainingJob="iris-retrain-1", phase="Failed", startedAt="2026-12-02T11:00:00Z"),
     DRIFTED, rt.TrainingSeen(phase="Failed"), "drift", (rt.STARTED,)),
    ("a registered version is reported", retrain(), status(**RUNNING), QUIET,
     rt.TrainingSeen(phase="Succeeded", model_version="iris-v2"), None, (rt.SUCCEEDED,)),
    ("a TrainingJob deleted under way is a failure", retrain(), status(**RUNNING), QUIET,
     rt.TrainingSeen(found=False), None, (rt.FAILED,)),
    ("no retraining while a rollout is under way", retrain(), None,
     rt.Monitored("iris-v1", "iris-v1", DRIFTED.conditions, in_rollout=True), None, None, ()),
    ("a request starts one, with no trigger firing", retrain(), None, ASKED, None, "request",
     (rt.STARTED,)),
    ("a request goes first, drift or not", retrain(), None,
     rt.Monitored("iris-v1", "iris-v1", DRIFTED.conditions, requested_at=T0), None, "request",
     (rt.STARTED,)),
    ("a request does not wait for the cooldown", retrain(), status(
        count=1, trainingJob="iris-retrain-1", phase="Failed", startedAt="2026-12-02T11:55:00Z"),
     ASKED, rt.TrainingSeen(phase="Failed"), "request", (rt.STARTED,)),
    ("a request waits for the retraining under way", retrain(), status(**RUNNING), ASKED,
     rt.TrainingSeen(phase="Running"), None, ()),
    ("a request waits for the rollout under way", retrain(), None,
     rt.Monitored("iris-v1", "iris-v1", requested_at=T0, in_rollout=True), None, None, ()),
    ("a request answered by a retraining started after it is done", retrain(), status(
        count=1, trainingJob="iris-retrain-1", phase="Succeeded", startedAt="2026-12-02T11:59:00Z"),
     rt.Monitored("iris-v1", "iris-v1", requested_at=T0 - timedelta(minutes=2)),
     rt.TrainingSeen(phase="Succeeded", model_version="iris-v2"), None, ()),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_when_a_retraining_starts(case: tuple[Any, ...]) -> None:
    _, spec, before, mon, seen, start, events = case
    decision = rt.decide(spec, before, mon, seen, T0)
    assert decision.start == start
    assert tuple(e[1] for e in decision.events) == events
    if start is not None:
        st = decision.status
        assert st.phase == "Running" and st.started_at == T0
        assert st.last_trigger is not None and st.last_trigger.type == start
        assert st.count == (before.count if before else 0) + 1


def test_a_schedule_fires_at_its_time_and_waits_while_blocked() -> None:
    spec = retrain(drift=False, accuracy=False, schedule="0 13 * * *")
    first = rt.decide(spec, None, QUIET, None, T0)
    assert first.start is None
    assert first.status.next_scheduled == datetime(2026, 12, 2, 13, 0, tzinfo=UTC)

    at_one = T0.replace(hour=13, minute=0, second=20)
    blocked = rt.Monitored("iris-v1", "iris-v1", in_rollout=True)
    waiting = rt.decide(spec, first.status, blocked, None, at_one)
    assert waiting.start is None and waiting.status.next_scheduled == first.status.next_scheduled

    later = at_one + timedelta(minutes=5)
    fired = rt.decide(spec, waiting.status, QUIET, None, later)
    assert fired.start == "schedule"
    assert fired.status.next_scheduled == datetime(2026, 12, 3, 13, 0, tzinfo=UTC)
    assert rt.decide(spec, fired.status, QUIET, rt.TrainingSeen(phase="Running"),
                     later + timedelta(minutes=1)).start is None  # fmt: skip


def test_a_retrain_spec_refuses_a_schedule_that_cannot_fire() -> None:
    with pytest.raises(ValueError, match="day-of-month"):
        retrain(schedule="0 0 32 * *")


def test_a_request_is_when_the_annotation_was_written() -> None:
    """The handler reads the request's time from managedFields (the manager's last write
    of the annotation), and nothing when the annotation is absent."""
    import yaml

    from orchard.api import RETRAIN_REQUEST_ANNOTATION, ModelDeployment
    from orchard.handlers.retraining import monitored

    sample = Path(__file__).resolve().parents[2] / "manifests/samples/modeldeployment-tracking.yaml"
    body = yaml.safe_load(sample.read_text())
    body["metadata"] |= {"namespace": "ml", "uid": "u-1"}
    md = ModelDeployment.model_validate(body)
    written = {"manager": "argocd-server", "operation": "Update", "time": "2026-12-02T12:00:10Z",
               "fieldsV1": {"f:metadata": {"f:annotations": {
                   f"f:{RETRAIN_REQUEST_ANNOTATION}": {}}}}}  # fmt: skip
    meta = {"annotations": {RETRAIN_REQUEST_ANNOTATION: "3"}, "managedFields": [written]}
    assert monitored(md, meta).requested_at == datetime(2026, 12, 2, 12, 0, 10, tzinfo=UTC)
    assert monitored(md, {"managedFields": [written]}).requested_at is None
