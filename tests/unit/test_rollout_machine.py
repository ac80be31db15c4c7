"""The rollout state machine, table-driven over every transition."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from orchard.api.common import get_condition, to_k8s
from orchard.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from orchard.decisions import analysis as an
from orchard.decisions import rollout as ro
from orchard.decisions import traffic as tr

T0 = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)

SPEC: dict[str, Any] = {
    "modelVersion": "iris-v2",
    "replicas": 2,
    "canary": {
        "steps": [{"weight": 25, "pause": "10s"}, {"weight": 50, "pause": "10s"}],
        "analysis": {"minRequests": 20, "maxMetricDrop": 0.05},
    },
}


def spec(**over: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate({**SPEC, **over})


def status(**fields: Any) -> ModelDeploymentStatus:
    return ModelDeploymentStatus.model_validate(fields)


STABLE = {
    "phase": "Stable",
    "stableVersion": "iris-v1",
    "history": [{"version": "iris-v1", "from": "2026-11-27T11:00:00Z"}],
}
ROLLED_BACK = {
    **STABLE,
    "phase": "RolledBack",
    "lastRollback": {"from": "iris-v2", "to": "iris-v1", "reason": "ErrorRate"},
}


def at_step(step: int, *, started: int = -20, phase: str = "Progressing",
            reason: str = "Analysing", weight: int = 25) -> dict[str, Any]:  # fmt: skip
    """A status mid-rollout at a step whose split took effect `started` seconds ago."""
    return {
        **STABLE,
        "phase": phase,
        "reason": reason,
        "canaryVersion": "iris-v2",
        "currentStep": step,
        "stepStartedAt": (T0 + timedelta(seconds=started)).isoformat(),
        "rolloutStartedAt": (T0 - timedelta(seconds=60)).isoformat(),
        "canaryWeight": {"desired": weight, "effective": 33},
    }


V1 = ro.VersionInfo("iris-v1", metrics={"accuracy": 0.96})
V2 = ro.VersionInfo("iris-v2", metrics={"accuracy": 0.97})
BASE_OBS = ro.Observations(
    generation=3, stable_ready=2, stable_desired=2, canary_ready=1, candidate=V2, stable=V1
)


def verdict(v: an.Verdict, reason: str = "R") -> an.Result:
    canary = an.TrackWindow(
        requests=40 if v != "Inconclusive" else 3, errors=10 if v == "Fail" else 0
    )
    return an.Result(v, reason, f"{v} because {reason}", canary, an.TrackWindow(requests=100),
                     metrics={"canaryErrorRate": canary.error_rate})  # fmt: skip


PASS, FAIL, INCONCLUSIVE = (
    verdict("Pass", "WithinLimits"),
    verdict("Fail", "ErrorRate"),
    verdict("Inconclusive", "TooFewRequests"),
)


@dataclass
class Case:
    name: str
    before: dict[str, Any]
    obs: ro.Observations = BASE_OBS
    spec: dict[str, Any] = field(default_factory=dict)
    # expectations
    phase: str | None = None
    stable: str | None = None
    canary: str | None = "unset"  # "unset": must be None
    step: int | None = None
    desired: int | None = None
    reason: str | None = None
    events: tuple[str, ...] = ()
    rollback_reason: str | None = None


CASES = [
    Case("first version deploys without a canary", {},
         obs=replace(BASE_OBS, stable_ready=0, candidate=V2, stable=None), phase="Pending",
         stable="iris-v2", events=("Deploying",)),
    Case("first version ready is stable", {"phase": "Pending", "stableVersion": "iris-v2"},
         phase="Stable", stable="iris-v2"),
    Case("same version as stable is a no-op", {**STABLE}, spec={"modelVersion": "iris-v1"},
         phase="Stable", stable="iris-v1"),
    Case("new version passes the metric check and enters step 1", {**STABLE},
         obs=replace(BASE_OBS, canary_ready=0), phase="Progressing", stable="iris-v1",
         canary="iris-v2", step=0, desired=25, reason="StepStarted",
         events=("RolloutStarted", "MetricCheckPassed", "StepStarted")),
    Case("new version not registered yet waits", {**STABLE},
         obs=replace(BASE_OBS, candidate=ro.VersionInfo("iris-v2", found=False)),
         phase="Progressing", canary="iris-v2", reason="WaitingForModelVersion",
         events=("RolloutStarted",)),
    Case("new version still verifying waits", {**STABLE},
         obs=replace(BASE_OBS, candidate=ro.VersionInfo("iris-v2", phase="Verifying")),
         phase="Progressing", canary="iris-v2", reason="WaitingForModelVersion",
         events=("RolloutStarted",)),
    Case("new version that failed verification is rolled back", {**STABLE},
         obs=replace(BASE_OBS, candidate=ro.VersionInfo("iris-v2", phase="Failed")),
         phase="RolledBack", stable="iris-v1", rollback_reason="ModelVersionFailed",
         events=("RolloutStarted", "RolledBack")),
    Case("registered metric drop rolls back before any traffic", {**STABLE},
         obs=replace(BASE_OBS, candidate=ro.VersionInfo("iris-v2", metrics={"accuracy": 0.7})),
         phase="RolledBack", stable="iris-v1", rollback_reason="MetricDrop", desired=0,
         events=("RolloutStarted", "RolledBack")),
    Case("step waits for canary pods", at_step(0, started=-5, reason="StepStarted"),
         obs=replace(BASE_OBS, canary_ready=0), phase="Progressing", canary="iris-v2", step=0,
         reason="WaitingForCanary"),
    Case("canary pods ready: the split takes effect", at_step(0, started=-5, reason="StepStarted"),
         phase="Progressing", canary="iris-v2", step=0, reason="Analysing"),
    Case("canary never ready is rolled back", at_step(0, started=-400, reason="WaitingForCanary"),
         obs=replace(BASE_OBS, canary_ready=0), phase="RolledBack",
         rollback_reason="CanaryNotReady", events=("RolledBack",)),
    Case("analysis fail during the pause rolls back at once", at_step(0, started=-2),
         obs=replace(BASE_OBS, analysis=FAIL), phase="RolledBack", stable="iris-v1", desired=0,
         rollback_reason="ErrorRate", events=("RolledBack",)),
    Case("pass before the pause is over holds the step", at_step(0, started=-2),
         obs=replace(BASE_OBS, analysis=PASS), phase="Progressing", canary="iris-v2", step=0,
         desired=25, reason="Analysing"),
    Case("pause over and pass: next step", at_step(0), obs=replace(BASE_OBS, analysis=PASS),
         phase="Progressing", canary="iris-v2", step=1, desired=50, reason="StepStarted",
         events=("StepStarted",)),
    Case("last step passed: promote", at_step(1, weight=50), obs=replace(BASE_OBS, analysis=PASS),
         phase="Progressing", stable="iris-v2", canary="iris-v2", reason="Promoting",
         events=("Promoted",)),
    Case("promoting waits for the stable Deployment",
         {**at_step(1), "stableVersion": "iris-v2", "currentStep": None, "reason": "Promoting"},
         obs=replace(BASE_OBS, stable_ready=1), phase="Progressing", stable="iris-v2",
         canary="iris-v2", reason="Promoting"),
    Case("promoted version ready: stable, canary scaled away",
         {**at_step(1), "stableVersion": "iris-v2", "currentStep": None, "reason": "Promoting"},
         phase="Stable", stable="iris-v2", desired=0, events=("RolloutComplete",)),
    Case("pause over, too little traffic: paused, not passed", at_step(0),
         obs=replace(BASE_OBS, analysis=INCONCLUSIVE), phase="Paused", canary="iris-v2", step=0,
         reason="TooFewRequests", events=("RolloutPaused",)),
    Case("paused and still inconclusive stays paused quietly",
         at_step(0, phase="Paused", reason="TooFewRequests"),
         obs=replace(BASE_OBS, analysis=INCONCLUSIVE), phase="Paused", canary="iris-v2", step=0),
    Case("paused, traffic arrives and passes: next step",
         at_step(0, phase="Paused", reason="TooFewRequests"), obs=replace(BASE_OBS, analysis=PASS),
         phase="Progressing", canary="iris-v2", step=1, desired=50, events=("StepStarted",)),
    Case("paused, traffic arrives and fails: rollback",
         at_step(0, phase="Paused", reason="TooFewRequests"), obs=replace(BASE_OBS, analysis=FAIL),
         phase="RolledBack", rollback_reason="ErrorRate", events=("RolledBack",)),
    Case("manual promote by status patch", {**at_step(0, started=-1), "requestedAction": "promote"},
         phase="Progressing", stable="iris-v2", canary="iris-v2", reason="Promoting",
         events=("Promoted",)),
    Case("manual abort by annotation", at_step(1, weight=50),
         obs=replace(BASE_OBS, annotation_action="abort"), phase="RolledBack",
         rollback_reason="ManualAbort", events=("RolledBack",)),
    Case("manual action without a rollout is ignored", {**STABLE, "requestedAction": "abort"},
         spec={"modelVersion": "iris-v1"}, phase="Stable", stable="iris-v1",
         events=("ActionIgnored",)),
    Case("rolled back version stays rolled back",
         ROLLED_BACK,
         phase="RolledBack", stable="iris-v1"),
    Case("rolled back, a new version starts a new rollout",
         ROLLED_BACK,
         spec={"modelVersion": "iris-v3"},
         obs=replace(BASE_OBS, candidate=ro.VersionInfo("iris-v3", metrics={"accuracy": 0.96})),
         phase="Progressing", canary="iris-v3", step=0,
         events=("RolloutStarted", "MetricCheckPassed", "StepStarted")),
    Case("rolled back, spec back to stable: stable again",
         ROLLED_BACK,
         spec={"modelVersion": "iris-v1"}, phase="Stable", stable="iris-v1"),
    Case("rolled back version promoted by a person",
         {**ROLLED_BACK, "requestedAction": "promote"},
         phase="Progressing", stable="iris-v2", canary="iris-v2", reason="Promoting",
         events=("Promoted",)),
    Case("a newer version mid-rollout restarts with the newest", at_step(1, weight=50),
         spec={"modelVersion": "iris-v3"},
         obs=replace(BASE_OBS, candidate=ro.VersionInfo("iris-v3", metrics={"accuracy": 0.97})),
         phase="Progressing", canary="iris-v3", step=0, desired=25,
         events=("RolloutRestarted", "RolloutStarted", "MetricCheckPassed", "StepStarted")),
    Case("spec back to stable mid-rollout cancels it", at_step(0), spec={"modelVersion": "iris-v1"},
         phase="Stable", stable="iris-v1", desired=0, events=("RolloutCancelled",)),
    Case("traffic split impossible pauses with a reason", at_step(0),
         obs=replace(BASE_OBS, traffic_ok=False, traffic_reason="HTTPRouteNotFound",
                     traffic_message="httproute web not found"),
         phase="Paused", canary="iris-v2", reason="HTTPRouteNotFound",
         events=("HTTPRouteNotFound",)),
    Case("first version not registered: pending, saying why", {"phase": "Pending",
         "stableVersion": "iris-v2"}, spec={}, obs=replace(BASE_OBS, stable_ready=0,
         stable=ro.VersionInfo("iris-v2", found=False)), phase="Pending",
         reason="WaitingForModelVersion"),
    Case("first version failed verification: degraded", {"phase": "Pending",
         "stableVersion": "iris-v2"}, obs=replace(BASE_OBS, stable_ready=0,
         stable=ro.VersionInfo("iris-v2", phase="Failed", message="digest mismatch")),
         phase="Degraded", reason="ModelVersionFailed", events=("ModelVersionFailed",)),
    Case("a first version that never served is replaced without a canary",
         {"phase": "Degraded", "reason": "ModelVersionFailed", "stableVersion": "iris-v1",
          "history": [{"version": "iris-v1", "from": "2026-11-27T11:00:00Z"}]},
         obs=replace(BASE_OBS, stable_ready=0), phase="Pending", stable="iris-v2",
         events=("Deploying",)),
    Case("stable pods all gone: degraded", {**STABLE}, spec={"modelVersion": "iris-v1"},
         obs=replace(BASE_OBS, stable_ready=0), phase="Degraded", reason="StableUnavailable",
         events=("StableUnavailable",)),
    Case("stable pods refusing the artifact: degraded, saying why", {**STABLE},
         spec={"modelVersion": "iris-v1"},
         obs=replace(BASE_OBS, stable_ready=0, stable_refused="pod p refused the artifact: x"),
         phase="Degraded", reason="StableUnavailable", events=("StableUnavailable",)),
]  # fmt: skip


def test_a_refused_artifact_is_the_ready_conditions_reason() -> None:
    refused = replace(BASE_OBS, stable_ready=0, stable_refused="pod p refused the artifact: x")
    st = ro.decide(spec(modelVersion="iris-v1"), status(**STABLE), T0, refused).status
    ready = get_condition(st.conditions, "Ready")
    assert ready is not None
    assert (ready.status, ready.reason) == ("False", "ArtifactRefused")
    assert ready.message == "no ready pod serves iris-v1: pod p refused the artifact: x"
    assert st.message == ready.message
    st = ro.decide(spec(modelVersion="iris-v1"), status(**STABLE), T0,
                   replace(BASE_OBS, stable_ready=0)).status  # fmt: skip
    ready = get_condition(st.conditions, "Ready")
    assert ready is not None and ready.reason == "NoReadyPods"


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_transition(case: Case) -> None:
    decision = ro.decide(spec(**case.spec), status(**case.before), T0, case.obs)
    st = decision.status
    assert st.phase == case.phase, st.message
    if case.stable is not None:
        assert st.stable_version == case.stable
    assert st.canary_version == (None if case.canary == "unset" else case.canary)
    if case.step is not None:
        assert st.current_step == case.step
    if case.desired is not None:
        assert st.canary_weight is not None and st.canary_weight.desired == case.desired
    if case.reason is not None:
        assert st.reason == case.reason
    assert tuple(e.reason for e in decision.events) == case.events
    if case.rollback_reason is not None:
        assert st.last_rollback is not None
        assert st.last_rollback.reason == case.rollback_reason
        assert st.last_rollback.from_ == "iris-v2" and st.last_rollback.to == "iris-v1"
        assert st.last_rollback.at == T0
        assert ro.canary_replicas(spec(), st, 2) == 0  # canary scaled away
        degraded = get_condition(st.conditions, "Degraded")
        assert degraded is not None and degraded.status == "True"
        assert any(e.type == "Warning" for e in decision.events)
    assert st.observed_generation == 3
    assert st.requested_action is None


def test_rollback_records_the_failed_figures() -> None:
    st = ro.decide(spec(), status(**at_step(0)), T0, replace(BASE_OBS, analysis=FAIL)).status
    assert st.last_rollback is not None
    assert st.last_rollback.metrics == {"canaryErrorRate": 0.25}
    assert st.analysis is not None and st.analysis.verdict == "Fail"
    assert st.analysis.canary is not None and st.analysis.canary.requests == 40


def test_manual_action_is_recorded_once() -> None:
    before = status(**{**at_step(0), "requestedAction": "abort"})
    first = ro.decide(spec(), before, T0, BASE_OBS).status
    assert first.last_action is not None
    assert (first.last_action.action, first.last_action.source) == ("abort", "status")
    assert first.requested_action is None
    # deciding again from the new status does nothing more
    again = ro.decide(spec(), first, T0 + timedelta(seconds=5), BASE_OBS)
    assert again.events == [] and again.status.last_rollback == first.last_rollback


def test_walks_every_step_to_promotion_and_resumes_from_status_alone() -> None:
    """A whole good rollout; between decisions the status goes through its JSON form,
    as it does through the API server, so a restarted operator decides the same."""
    sp = spec()
    st = status(**STABLE)
    now = T0
    seen: list[tuple[str | None, int | None, str | None]] = []
    for _ in range(30):
        obs = replace(BASE_OBS, analysis=PASS, canary_ready=2 if st.current_step == 1 else 1)
        if st.canary_version == st.stable_version == "iris-v2":
            obs = replace(obs, stable_ready=2)
        st = ro.decide(sp, st, now, obs).status
        st = ModelDeploymentStatus.model_validate(to_k8s(st))  # the round trip
        seen.append((st.phase, st.current_step, st.reason))
        if st.phase == "Stable" and st.stable_version == "iris-v2":
            break
        now += timedelta(seconds=5)
    assert st.phase == "Stable" and st.stable_version == "iris-v2" and st.canary_version is None
    assert [h.version for h in st.history] == ["iris-v1", "iris-v2"]
    assert st.history[0].to is not None and st.history[1].to is None
    steps = [s for _, s, _ in seen if s is not None]
    assert 0 in steps and 1 in steps
    assert (now - T0).total_seconds() >= 20  # two 10 s pauses were held


def test_history_is_bounded() -> None:
    history = [{"version": f"iris-v{i}", "from": "2026-11-27T10:00:00Z"} for i in range(10)]
    before = status(**{**at_step(1, weight=50), "history": history})
    st = ro.decide(spec(), before, T0, replace(BASE_OBS, analysis=PASS)).status
    assert len(st.history) == ro.HISTORY_LIMIT
    assert st.history[-1].version == "iris-v2" and st.history[0].version == "iris-v1"


def test_effective_weight_is_reported_beside_desired() -> None:
    st = ro.decide(spec(), status(**at_step(0, started=-2)), T0, BASE_OBS).status
    assert st.canary_weight is not None
    assert (st.canary_weight.desired, st.canary_weight.effective) == (25, 33)  # 1 of 3 pods
    split = get_condition(st.conditions, "TrafficSplit")
    assert split is not None and split.status == "True" and split.reason == "ReplicaRatio"


def test_traffic_split_false_condition_says_why() -> None:
    obs = replace(BASE_OBS, traffic_ok=False, traffic_reason="GatewayAPIUnavailable",
                  traffic_message="the HTTPRoute kind is not served")  # fmt: skip
    st = ro.decide(spec(), status(**at_step(0)), T0, obs).status
    cond = get_condition(st.conditions, "TrafficSplit")
    assert cond is not None and cond.status == "False"
    assert cond.reason == "GatewayAPIUnavailable"


@pytest.mark.parametrize(
    ("total", "weight", "mode", "split"),
    [
        (2, 0, "replicas", (2, 0)),
        (2, 25, "replicas", (2, 1)),  # 1/3 effective: reported as such
        (2, 50, "replicas", (2, 2)),
        (4, 20, "replicas", (4, 1)),
        (2, 90, "replicas", (2, 6)),  # capped at 3x the stable
        (2, 100, "replicas", (0, 2)),
        (1, 10, "replicas", (1, 1)),
        (0, 50, "replicas", (0, 0)),
        (4, 10, "gatewayAPI", (4, 1)),
        (4, 50, "gatewayAPI", (4, 2)),
    ],
)
def test_replica_split(total: int, weight: int, mode: str, split: tuple[int, int]) -> None:
    assert tr.for_mode(mode).pods(total, weight) == split


@pytest.mark.parametrize(
    ("stable", "canary", "effective"), [(2, 0, 0), (2, 1, 33), (2, 2, 50), (0, 2, 100), (3, 1, 25)]
)
def test_pod_share(stable: int, canary: int, effective: int) -> None:
    assert tr.pod_share(stable, canary) == effective


def _managed(time: str, key: str = "orchard.dev/rollout-action") -> dict[str, Any]:
    return {
        "manager": "kubectl-annotate",
        "operation": "Update",
        "time": time,
        "fieldsV1": {"f:metadata": {"f:annotations": {f"f:{key}": {}}}},
    }


def test_annotation_set_at_reads_managed_fields() -> None:
    meta = {
        "managedFields": [
            _managed("2026-11-27T11:59:00Z", key="other"),
            _managed("2026-11-27T11:59:30Z"),
            {"manager": "orchard", "time": "2026-11-27T12:00:00Z", "fieldsV1": {"f:spec": {}}},
        ]
    }
    assert ro.annotation_set_at(meta, "orchard.dev/rollout-action") == T0 - timedelta(seconds=30)
    assert ro.annotation_set_at({}, "orchard.dev/rollout-action") is None


@pytest.mark.parametrize(
    ("value", "set_after_start", "last", "expected"),
    [
        ("promote", 5, None, "promote"),
        (" Abort ", 5, None, "abort"),
        ("resume", 5, None, None),  # not an action
        ("promote", -5, None, None),  # written before this rollout began: a leftover
        ("promote", 5, {"action": "promote", "source": "annotation", "at": 10}, None),  # done
        ("abort", 5, {"action": "promote", "source": "status", "at": 10}, None),  # superseded
        ("abort", 20, {"action": "promote", "source": "status", "at": 10}, "abort"),  # newer
    ],
)
def test_annotation_action_is_acted_on_once(
    value: str, set_after_start: int, last: dict[str, Any] | None, expected: str | None
) -> None:
    started = T0 - timedelta(seconds=60)
    fields: dict[str, Any] = {**at_step(0), "rolloutStartedAt": started.isoformat()}
    if last is not None:
        fields["lastAction"] = {**last, "at": (started + timedelta(seconds=last["at"])).isoformat()}
    set_at = started + timedelta(seconds=set_after_start)
    assert ro.annotation_action(value, set_at, status(**fields)) == expected


@pytest.mark.parametrize(
    ("fields", "current", "ready_for", "expected"),
    [
        ({**STABLE}, 0, 60, 0),  # no rollout
        ({**at_step(0), "currentStep": None}, 0, 60, 0),  # before the first step
        (at_step(0, weight=25), 0, None, 0),  # no canary pod ready
        (at_step(0, weight=25), 0, 1, 0),  # ready a moment ago: its endpoint settles first
        (at_step(0, weight=25), 0, 3, 25),
        (at_step(1, weight=50), 25, 0, 50),  # the Service already has endpoints
        ({**at_step(1), "stableVersion": "iris-v2", "currentStep": None}, 50, 60, 0),  # promoting
    ],
)
def test_route_weight(
    fields: dict[str, Any], current: int | None, ready_for: int | None, expected: int
) -> None:
    since = None if ready_for is None else T0 - timedelta(seconds=ready_for)
    assert tr.route_weight(status(**fields), current, T0, since) == expected


def test_gateway_step_takes_effect_when_the_route_carries_it() -> None:
    gw = spec(traffic={"mode": "gatewayAPI", "httpRoute": {"name": "web"}})
    waiting = status(**at_step(0, started=-1, reason="StepStarted"))
    fresh = replace(BASE_OBS, canary_ready=1, route_weight=0, canary_ready_since=T0)
    st = ro.decide(gw, waiting, T0, fresh).status
    assert st.reason == "WaitingForCanary" and st.canary_weight is not None
    assert (st.canary_weight.desired, st.canary_weight.effective) == (25, 0)
    settled = replace(fresh, canary_ready_since=T0 - timedelta(seconds=5))
    st = ro.decide(gw, waiting, T0, settled).status
    assert st.reason == "Analysing" and st.step_started_at == T0
    assert st.canary_weight is not None and st.canary_weight.effective == 25


def test_a_version_that_never_served_leaves_no_history() -> None:
    before = status(
        phase="Pending",
        stableVersion="iris-v1",
        history=[{"version": "iris-v1", "from": "2026-11-27T11:00:00Z"}],
    )
    st = ro.decide(spec(), before, T0, replace(BASE_OBS, stable_ready=0)).status
    assert [h.version for h in st.history] == ["iris-v2"]
    assert st.canary_version is None
