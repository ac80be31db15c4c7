"""spec.track's selection rule and the champion / challenger verdict, as tables; and the
tracked rollout through the state machine: a challenger that does not beat the stable
version on the same rows is refused (no traffic, not a failure) and never proposed again
against it."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest

from orchard.api.improvement import RefusedVersion, Track, TrackingStatus
from orchard.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from orchard.contracts import EvaluationReport
from orchard.decisions import analysis as an
from orchard.decisions import evaluation as ev
from orchard.decisions import jobs
from orchard.decisions import rollout as ro
from orchard.decisions import tracking as tk

T0 = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)


def mv(number: int, accuracy: float | None = 0.9, phase: str = "Ready") -> tk.Registered:
    metrics = {} if accuracy is None else {"accuracy": accuracy}
    return tk.Registered(f"iris-v{number}", number, phase, "classification", metrics)


SELECTIONS = [
    # (name, select, versions, stable, refused, expected target, expected reason)
    ("nothing registered", "best", [], None, set(), None, tk.NO_READY_VERSION),
    ("only a failed version", "latest", [mv(1, phase="Failed")], None, set(), None,
     tk.NO_READY_VERSION),
    ("first: latest takes the newest Ready", "latest",
     [mv(1, 0.99), mv(2, 0.90), mv(3, 0.95, phase="Verifying")], None, set(), "iris-v2",
     tk.FIRST_VERSION),
    ("first: best takes the best registered", "best", [mv(1, 0.99), mv(2, 0.90)], None, set(),
     "iris-v1", tk.FIRST_VERSION),
    ("first: a tie goes to the newest", "best", [mv(1, 0.95), mv(2, 0.95)], None, set(),
     "iris-v2", tk.FIRST_VERSION),
    ("a version without the metric ranks last", "best", [mv(1, 0.5), mv(2, None)], None, set(),
     "iris-v1", tk.FIRST_VERSION),
    ("no newer version: the stable stays", "best", [mv(1), mv(2)], "iris-v2", set(), "iris-v2",
     tk.SERVING),
    ("an older, better version is no challenger", "best", [mv(1, 0.99), mv(2, 0.9)], "iris-v2",
     set(), "iris-v2", tk.SERVING),
    ("newer: best challenger by registered metric", "best",
     [mv(1), mv(2, 0.97), mv(3, 0.93)], "iris-v1", set(), "iris-v2", tk.CHALLENGER),
    ("newer: latest challenger is the newest", "latest",
     [mv(1), mv(2, 0.97), mv(3, 0.93)], "iris-v1", set(), "iris-v3", tk.CHALLENGER),
    ("a version that failed verification is never a challenger", "latest",
     [mv(1), mv(2), mv(3, phase="Failed")], "iris-v1", set(), "iris-v2", tk.CHALLENGER),
    ("a refused challenger is not proposed again", "latest", [mv(1), mv(2)], "iris-v1",
     {"iris-v2"}, "iris-v1", tk.SERVING),
]  # fmt: skip


@pytest.mark.parametrize("case", SELECTIONS, ids=[c[0] for c in SELECTIONS])
def test_selection(case: tuple[Any, ...]) -> None:
    _, rule, versions, stable, refused, target, reason = case
    selection = tk.select(Track(model="iris", select=rule), versions, stable, refused)
    assert (selection.target, selection.reason) == (target, reason), selection.message


def test_refusals_count_only_against_the_version_they_were_judged_against() -> None:
    tracking = TrackingStatus(
        model="iris",
        refused=[RefusedVersion(version="iris-v2", against="iris-v1", reason="NotBetter")],
    )
    assert tk.refused_against(tracking, "iris-v1") == {"iris-v2"}
    assert tk.refused_against(tracking, "iris-v3") == set()
    again = tk.with_refusal(
        tracking, RefusedVersion(version="iris-v2", against="iris-v1", reason="NotBetter")
    )
    assert len(again.refused) == 1


def test_registered_reads_only_the_tracked_model() -> None:
    bodies = [
        {"metadata": {"name": "iris-v1"}, "spec": {"model": "iris", "version": 1,
         "task": "classification", "metrics": {"accuracy": 0.9, "flag": True}},
         "status": {"phase": "Ready"}},
        {"metadata": {"name": "wine-v1"}, "spec": {"model": "wine", "version": 1}},
    ]  # fmt: skip
    [only] = tk.registered(bodies, "iris")
    assert (only.name, only.phase, dict(only.metrics)) == ("iris-v1", "Ready", {"accuracy": 0.9})


def scored(candidate: dict[str, float], baseline: dict[str, float], rows: int) -> EvaluationReport:
    """What `orchard evaluate` reports: both versions' metrics on the same rows."""
    return EvaluationReport(rows=rows, dataset_digest="sha256:" + "0" * 64, metric="accuracy",
                            candidate=candidate, baseline=baseline)  # fmt: skip


FIGURES = scored(candidate={"accuracy": 0.96, "rmse": 1.0},
                     baseline={"accuracy": 0.95, "rmse": 1.25}, rows=200)  # fmt: skip
VERDICTS = [
    ("improve: +0.01 meets 0.01", "accuracy", "improve", 0.01, True, ev.BETTER),
    ("improve: +0.01 misses 0.02", "accuracy", "improve", 0.02, False, ev.NOT_BETTER),
    ("no-drop: better passes", "accuracy", "no-drop", 0.0, True, ev.WITHIN_LIMIT),
    ("errors are relative: rmse 1.25 -> 1.0 is 20% better", "rmse", "improve", 0.2, True,
     ev.BETTER),
    ("an unmeasured metric never passes", "f1_macro", "no-drop", 1.0, False, ev.METRIC_MISSING),
]  # fmt: skip


@pytest.mark.parametrize("case", VERDICTS, ids=[c[0] for c in VERDICTS])
def test_verdict(case: tuple[Any, ...]) -> None:
    _, metric, rule, bound, passed, reason = case
    verdict = ev.judge(FIGURES, metric, rule, bound)
    assert (verdict.passed, verdict.reason) == (passed, reason), verdict.message
    if reason != ev.METRIC_MISSING:
        assert "on the same 200 rows" in verdict.message


def test_a_worse_candidate_fails_no_drop_beyond_the_bound() -> None:
    worse = scored(candidate={"accuracy": 0.90}, baseline={"accuracy": 0.95}, rows=10)
    assert not ev.judge(worse, "accuracy", "no-drop", 0.02).passed
    assert ev.judge(worse, "accuracy", "no-drop", 0.05).passed


def _terminated(message: str, code: int = 0) -> dict[str, Any]:
    return {"status": {"containerStatuses": [{"name": "evaluate", "state": {
        "terminated": {"exitCode": code, "message": message}}}]}}  # fmt: skip


def test_the_job_outcome_comes_from_the_evaluators_report() -> None:
    report = (
        '{"rows": 12, "heldoutRows": 2, "productionRows": 10, "datasetDigest": "sha256:ab",'
        ' "metric": "accuracy", "candidate": {"accuracy": 1.0}, "baseline": {}}'
    )
    seen = ev.job_outcome({}, [_terminated(report)])
    assert seen.phase == "Succeeded" and seen.figures is not None
    assert (seen.figures.rows, seen.figures.production_rows) == (12, 10)
    failed = ev.job_outcome({}, [_terminated('{"error": {"reason": "NoEvaluationRows"}}', 1)])
    assert (failed.phase, failed.reason) == ("Failed", "NoEvaluationRows")
    assert ev.job_outcome({}, []).phase == "Running"
    garbage = ev.job_outcome({}, [_terminated("Traceback ...", 1)])
    assert (garbage.phase, garbage.reason) == ("Failed", ev.EVALUATION_FAILED)


# --- the tracked rollout ---------------------------------------------------------------------

V1 = ro.VersionInfo("iris-v1", metrics={"accuracy": 0.96})
V2 = ro.VersionInfo("iris-v2", metrics={"accuracy": 0.99})
TRACK = {"track": {"model": "iris", "select": "best", "minImprovement": 0.01}}
STABLE = {"phase": "Stable", "stableVersion": "iris-v1", "targetVersion": "iris-v1",
          "history": [{"version": "iris-v1", "from": "2026-12-02T11:00:00Z"}]}  # fmt: skip
CHALLENGE = tk.Selection("iris-v2", tk.CHALLENGER, "iris-v2 challenges iris-v1")
OBS = ro.Observations(
    generation=1,
    stable_ready=2,
    stable_desired=2,
    candidate=V2,
    stable=V1,
    target="iris-v2",
    selection=CHALLENGE,
    judging=ev.Judging("accuracy", "improve", 0.01),
)


def decide(status: dict[str, Any], obs: ro.Observations) -> ro.Decision:
    spec = ModelDeploymentSpec.model_validate(TRACK)
    return ro.decide(spec, ModelDeploymentStatus.model_validate(status), T0, obs)


def test_a_challenger_is_evaluated_before_any_traffic_and_refused_when_not_better() -> None:
    first = decide(STABLE, OBS)
    st = first.status
    assert (st.phase, st.reason, st.target_version) == ("Progressing", ev.EVALUATING, "iris-v2")
    assert st.evaluation is not None and st.evaluation.phase == "Running"
    assert st.tracking is not None and st.tracking.reason == tk.CHALLENGER
    assert [e.reason for e in first.events] == ["TargetSelected", "RolloutStarted", "Evaluating"]
    assert ro.canary_replicas(ModelDeploymentSpec.model_validate(TRACK), st, 2) == 0

    equal = scored(candidate={"accuracy": 0.95}, baseline={"accuracy": 0.95}, rows=150)
    after = decide(st.model_dump(by_alias=True),
                   replace(OBS, evaluation=ev.Seen("Succeeded", equal)))  # fmt: skip
    st = after.status
    assert (st.phase, st.reason, st.canary_version) == ("Stable", ev.NOT_BETTER, None)
    assert st.stable_version == "iris-v1" and st.last_rollback is None
    assert st.tracking is not None and [r.version for r in st.tracking.refused] == ["iris-v2"]
    assert st.evaluation is not None and st.evaluation.verdict == "Fail"
    assert "ChallengerRefused" in [e.reason for e in after.events]
    assert all(c.status != "True" for c in st.conditions if c.type == "Degraded")


def test_a_better_challenger_takes_its_first_step() -> None:
    st = decide(STABLE, OBS).status
    better = scored(candidate={"accuracy": 0.99}, baseline={"accuracy": 0.90}, rows=150)
    after = decide(st.model_dump(by_alias=True),
                   replace(OBS, evaluation=ev.Seen("Succeeded", better)))  # fmt: skip
    assert (after.status.phase, after.status.current_step) == ("Progressing", 0)
    assert after.status.evaluation is not None and after.status.evaluation.verdict == "Pass"


def test_an_evaluation_that_never_reports_times_out_to_the_registered_metrics() -> None:
    st = decide(STABLE, OBS).status
    late = replace(OBS, evaluation=ev.Seen("Running"))
    spec = ModelDeploymentSpec.model_validate(TRACK)
    later = T0.replace(minute=11)
    after = ro.decide(spec, st, later, late)
    assert after.status.evaluation is not None and after.status.evaluation.phase == "Failed"
    assert after.status.current_step == 0  # registered 0.99 against 0.96: no drop


def test_tracking_with_nothing_ready_waits_saying_why() -> None:
    none = tk.Selection(None, tk.NO_READY_VERSION, "no Ready ModelVersion of model iris yet")
    decision = decide({}, ro.Observations(generation=1, target=None, selection=none))
    st = decision.status
    assert (st.phase, st.reason, st.stable_version) == ("Pending", "WaitingForModelVersion", None)
    assert "no Ready ModelVersion of model iris" in (st.message or "")


def test_exactly_one_of_model_version_and_track() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ModelDeploymentSpec.model_validate({**TRACK, "modelVersion": "iris-v1"})
    with pytest.raises(ValueError, match="exactly one"):
        ModelDeploymentSpec.model_validate({})


# --- a quiet canary step replays the evaluation rows -------------------------------------

QUIET = an.Result("Inconclusive", "TooFewRequests", "canary served 0 requests",
                  an.TrackWindow(requests=0), an.TrackWindow(requests=0))  # fmt: skip
PASSED = an.Result("Pass", "WithinLimits", "ok", an.TrackWindow(requests=60),
                   an.TrackWindow(requests=60))  # fmt: skip
AT_STEP = {**STABLE, "phase": "Progressing", "reason": "Analysing", "canaryVersion": "iris-v2",
           "targetVersion": "iris-v2", "currentStep": 0, "stepStartedAt": "2026-12-02T11:59:00Z",
           "rolloutStartedAt": "2026-12-02T11:58:00Z",
           "canaryWeight": {"desired": 25, "effective": 50},
           "evaluation": {"candidate": "iris-v2", "baseline": "iris-v1", "phase": "Succeeded",
                          "verdict": "Pass"}}  # fmt: skip
STEP_OBS = replace(OBS, canary_ready=1, replay_enabled=True)


def test_a_quiet_step_replays_the_rows_and_is_judged_on_them() -> None:
    asked = decide(AT_STEP, replace(STEP_OBS, analysis=QUIET))
    st = asked.status
    assert (st.phase, st.reason) == ("Progressing", ro.REPLAYING), st.message
    assert st.replay is not None and (st.replay.version, st.replay.step) == ("iris-v2", 0)
    assert "Replaying" in [e.reason for e in asked.events]

    running = decide(st.model_dump(by_alias=True),
                     replace(STEP_OBS, analysis=QUIET, replay=jobs.Outcome("Running")))  # fmt: skip
    assert (running.status.phase, running.status.reason) == ("Progressing", ro.REPLAYING)
    assert not running.events
    # the replayed rows already make a pass: the step is judged on all of them, once it ends
    early = decide(
        running.status.model_dump(by_alias=True),
        replace(STEP_OBS, analysis=PASSED, replay=jobs.Outcome("Running")),
    )
    assert (early.status.reason, early.status.current_step) == (ro.REPLAYING, 0)

    done = jobs.Outcome("Succeeded", {"rows": 38})
    judged = decide(running.status.model_dump(by_alias=True),
                    replace(STEP_OBS, analysis=PASSED, replay=done))  # fmt: skip
    assert (judged.status.phase, judged.status.current_step) == ("Progressing", 1)
    assert judged.status.replay is not None and judged.status.replay.phase == "Succeeded"
    assert judged.status.replay.rows == 38
    assert "StepStarted" in [e.reason for e in judged.events]


def test_a_replay_that_does_not_bring_enough_requests_pauses_as_before() -> None:
    st = decide(AT_STEP, replace(STEP_OBS, analysis=QUIET)).status
    done = jobs.Outcome("Succeeded", {"rows": 3})
    paused = decide(st.model_dump(by_alias=True), replace(STEP_OBS, analysis=QUIET, replay=done))
    assert (paused.status.phase, paused.status.reason) == ("Paused", "TooFewRequests")
    assert paused.status.replay is not None and paused.status.replay.phase == "Succeeded"
    assert "after a replay that succeeded" in (paused.status.message or "")
    again = decide(paused.status.model_dump(by_alias=True), replace(STEP_OBS, analysis=QUIET))
    assert again.status.phase == "Paused" and not again.events  # one replay per step


def test_a_failed_replay_pauses_and_says_why() -> None:
    st = decide(AT_STEP, replace(STEP_OBS, analysis=QUIET)).status
    failed = jobs.Outcome("Failed", reason="NoReplayRows", message="no held-out rows")
    paused = decide(st.model_dump(by_alias=True),
                    replace(STEP_OBS, analysis=QUIET, replay=failed))  # fmt: skip
    assert paused.status.phase == "Paused"
    assert "ReplayFailed" in [e.reason for e in paused.events]


def test_with_replay_off_a_quiet_step_pauses_at_once() -> None:
    paused = decide(AT_STEP, replace(STEP_OBS, analysis=QUIET, replay_enabled=False))
    assert (paused.status.phase, paused.status.reason) == ("Paused", "TooFewRequests")
    assert paused.status.replay is None
