"""Faults: bounded retries (the delays, when they give up), per-object loops that start,
follow the newest tick, back off on failure and stop, the deletion guard's decisions,
children claimed by owner uid, and a training Job gone under way."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from typing import Any

import pytest

from orchard.api.modelversion import ModelVersionStatus
from orchard.api.trainingjob import TrainingJobStatus
from orchard.decisions import retries
from orchard.decisions.modelversion import (
    DELETION_BLOCKED,
    deletion_blocked,
    deletion_guarded,
    deployments_using,
)
from orchard.decisions.ownership import ownership
from orchard.decisions.training import missing_job
from orchard.handlers import loops as loops_module
from orchard.handlers.loops import Loops


def test_training_start_is_tried_six_times_then_given_up() -> None:
    delays = [retries.TRAINING_START.delay(r) for r in range(7)]
    assert delays == [5.0, 10.0, 20.0, 40.0, 80.0, None, None]


def test_the_deletion_guard_backs_off_to_ten_minutes_and_never_gives_up() -> None:
    delays = [retries.DELETION_GUARD.delay(r) for r in range(8)]
    assert delays == [15.0, 30.0, 60.0, 120.0, 240.0, 480.0, 600.0, 600.0]
    assert retries.DELETION_GUARD.delay(10_000) == 600.0


@pytest.mark.parametrize(
    ("interval", "failures", "delay"),
    [(10.0, 0, 10.0), (10.0, 1, 10.0), (10.0, 2, 20.0), (10.0, 7, 600.0), (900.0, 3, 900.0)],
)
def test_a_failing_loop_waits_longer_but_never_more_than_ten_minutes(
    interval: float, failures: int, delay: float
) -> None:
    assert retries.loop_failure(interval, failures) == delay


def md(name: str, version: str, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": {"modelVersion": version}, "status": {}}


def test_a_deployment_being_deleted_does_not_use_a_version() -> None:
    mds = [md("a", "iris-v1"), md("b", "iris-v1", deleting=True), md("c", "iris-v2")]
    assert deployments_using("iris-v1", mds) == ["a"]


@pytest.mark.parametrize(
    ("status", "annotations", "guarded"),
    [
        ({}, {}, False),
        ({"usedBy": []}, {}, False),
        ({"usedBy": ["web"]}, {}, True),
        ({"usedBy": ["web"]}, {"orchard.dev/allow-deletion": "true"}, False),
        ({"usedBy": ["web"]}, {"orchard.dev/allow-deletion": "yes"}, True),
    ],
)
def test_only_a_version_in_use_is_guarded(
    status: dict[str, Any], annotations: dict[str, str], guarded: bool
) -> None:
    assert deletion_guarded(status, annotations) is guarded


def test_the_guard_says_why_and_clears_once_nothing_uses_the_version() -> None:
    blocked = deletion_blocked(ModelVersionStatus(used_by=["web"]), ["web"], "in use", generation=1)
    condition = next(c for c in blocked.conditions if c.type == DELETION_BLOCKED)
    assert (condition.status, condition.reason, condition.message) == ("True", "InUse", "in use")
    free = deletion_blocked(blocked, [], "", generation=1)
    assert free.used_by == []
    assert not [c for c in free.conditions if c.type == DELETION_BLOCKED]


async def test_a_loop_runs_follows_the_newest_tick_and_stops() -> None:
    loops = Loops("test", retry_after=0.01)
    seen: list[str] = []

    def tick(label: str) -> Any:
        async def run() -> float:
            seen.append(label)
            return 0.01

        return run

    loops.follow(("ns", "a"), True, tick("first"))
    await asyncio.sleep(0.05)
    loops.follow(("ns", "a"), True, tick("second"))  # the same loop, the newest tick
    await asyncio.sleep(0.05)
    assert ("ns", "a") in loops
    loops.follow(("ns", "a"), False, tick("never"))
    await asyncio.sleep(0.03)
    count = len(seen)
    await asyncio.sleep(0.05)
    assert len(seen) == count and "never" not in seen
    assert seen[0] == "first" and seen[-1] == "second"
    assert ("ns", "a") not in loops


async def test_a_failing_tick_is_retried_and_a_tick_may_end_its_loop() -> None:
    loops = Loops("test", retry_after=0.01)
    calls = 0

    async def flaky() -> float | None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("the API server is away")
        return None  # done

    loops.follow(("ns", "b"), True, flaky)
    for _ in range(100):
        if ("ns", "b") not in loops:
            break
        await asyncio.sleep(0.01)
    assert calls == 3 and ("ns", "b") not in loops


async def test_stop_all_lets_the_tick_under_way_finish() -> None:
    loops = Loops("test", retry_after=0.01)
    finished = asyncio.Event()

    async def slow() -> float:
        await asyncio.sleep(0.05)
        finished.set()
        return 10.0

    loops.follow(("ns", "c"), True, slow)
    await asyncio.sleep(0.01)
    await loops.stop_all()
    assert finished.is_set() and ("ns", "c") not in loops


class _Cause:
    """Stands for the cause Kopf keeps in a handler's context, the object's body in it."""


async def test_a_loop_runs_in_the_operators_context_not_in_the_handlers_that_started_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(loops_module, "_root_context", None)
    operator_var: contextvars.ContextVar[str] = contextvars.ContextVar("operator")
    cause_var: contextvars.ContextVar[_Cause] = contextvars.ContextVar("cause")
    operator_var.set("credentials and event poster")
    loops_module.keep_root_context()
    loops = Loops("test", retry_after=0.01)
    seen: list[tuple[str | None, _Cause | None]] = []

    async def tick() -> float:
        seen.append((operator_var.get(None), cause_var.get(None)))
        return 0.01

    def handler(cause: _Cause) -> None:  # as Kopf runs it: in a copy, the cause set
        cause_var.set(cause)
        loops.follow(("ns", "d"), True, tick)

    cause = _Cause()
    held = weakref.ref(cause)
    contextvars.copy_context().run(handler, cause)
    del cause
    await asyncio.sleep(0.05)
    gc.collect()
    try:
        assert seen and set(seen) == {("credentials and event poster", None)}
        assert held() is None, "the running loop keeps the handler's cause alive"
    finally:
        await loops.stop_all()


# --- Children claimed by owner, a child gone ---------------------------------------------


def owned(kind: str, name: str, uid: str, api: str = "orchard.dev/v1alpha1") -> dict[str, Any]:
    ref = {"apiVersion": api, "kind": kind, "name": name, "uid": uid, "controller": True}
    return {"metadata": {"name": f"{name}-spec", "ownerReferences": [ref]}}


@pytest.mark.parametrize(
    ("obj", "verdict"),
    [
        (None, "absent"),
        (owned("TrainingJob", "iris", "uid-now"), "ours"),
        (owned("TrainingJob", "iris", "uid-before"), "stale"),
        (owned("TrainingJob", "penguins", "uid-other"), "foreign"),
        (owned("ModelDeployment", "iris", "uid-md"), "foreign"),
        (owned("TrainingJob", "iris", "uid-x", api="example.com/v1"), "foreign"),
        ({"metadata": {"name": "iris-spec"}}, "foreign"),  # made by hand
    ],
)
def test_a_child_found_by_name_is_claimed_by_owner_uid(
    obj: dict[str, Any] | None, verdict: str
) -> None:
    assert ownership(obj, "TrainingJob", "iris", "uid-now") == verdict


@pytest.mark.parametrize(
    ("phase", "reason", "outcome"),
    [
        (None, None, ("Pending", "JobMissing")),
        ("Pending", "JobMissing", ("Pending", "JobMissing")),
        ("Pending", "JobCreated", ("Failed", "JobDeleted")),
        ("Running", "Training", ("Failed", "JobDeleted")),
        ("Succeeded", "Trained", ("Failed", "JobDeleted")),  # its result went with it
    ],
)
def test_a_job_gone_after_it_was_seen_ends_the_run_at_once(
    phase: str | None, reason: str | None, outcome: tuple[str, str]
) -> None:
    seen = missing_job(TrainingJobStatus(phase=phase, reason=reason), "iris")
    assert (seen.phase, seen.reason) == outcome
    if seen.phase == "Failed":
        assert "iris was deleted" in seen.message


def test_the_poll_of_an_object_that_waits_slows_down_while_no_event_comes() -> None:
    delays = [retries.QUIET_POLL.delay(tick) for tick in range(7)]
    assert delays == [20.0, 40.0, 80.0, 160.0, 320.0, 320.0, 320.0]
