"""The training queue's bookkeeping (`orchard.decisions.queue`)."""

from __future__ import annotations

import random

import pytest

from orchard.decisions.queue import (
    DEFAULT_MAX_RUNNING,
    TrainingQueue,
    holds_slot,
    max_running_setting,
)
from orchard.decisions.training import JOB_MISSING, QUEUED


def at(second: int) -> str:
    return f"2026-12-03T09:00:{second:02d}Z"


def test_admits_up_to_the_limit_then_queues_in_creation_order() -> None:
    queue = TrainingQueue(limit=2)
    assert queue.admit(("ml", "a"), at(1))
    assert queue.admit(("ml", "b"), at(2))
    # Created later but seen first: the creation time decides the turn, not the arrival.
    assert not queue.admit(("ml", "d"), at(4))
    assert not queue.admit(("ml", "c"), at(3))
    assert queue.order() == [("ml", "c"), ("ml", "d")]
    assert [queue.place(("ml", "c")), queue.place(("ml", "d"))] == [1, 2]
    assert queue.place(("ml", "a")) is None  # training, not waiting
    assert queue.queued_message(2) == (
        "queued: 2 of 2 waiting; at most 2 TrainingJobs train at once "
        "(ORCHARD_MAX_RUNNING_TRAININGS)"
    )


def test_a_freed_slot_goes_to_the_first_in_turn_and_only_once() -> None:
    queue = TrainingQueue(limit=1)
    assert queue.admit(("ml", "a"), at(1))
    for name, second in (("b", 2), ("c", 3)):
        assert not queue.admit(("ml", name), at(second))
    assert queue.admit_next() == []  # no slot free
    assert queue.forget(("ml", "a"))
    assert queue.admit_next() == [("ml", "b")]
    assert queue.admit_next() == []  # b holds the slot now
    assert queue.running == {("ml", "b")}
    assert queue.place(("ml", "c")) == 1


def test_a_later_one_cannot_jump_the_queue_when_a_slot_frees() -> None:
    """The create handler of a new TrainingJob can run before the start of the one that
    waited: the one that waited still goes first."""
    queue = TrainingQueue(limit=1)
    queue.hold(("ml", "a"))
    assert not queue.admit(("ml", "b"), at(2))
    queue.forget(("ml", "a"))
    assert not queue.admit(("ml", "z"), at(9))
    assert queue.admit(("ml", "b"), at(2))


def test_ties_in_creation_time_go_by_namespace_then_name() -> None:
    queue = TrainingQueue(limit=0)
    for key in (("b", "x"), ("a", "y"), ("a", "x")):
        queue.admit(key, at(5))
    assert queue.order() == [("a", "x"), ("a", "y"), ("b", "x")]


def test_forgetting_a_waiting_one_moves_the_others_up_without_freeing_a_slot() -> None:
    queue = TrainingQueue(limit=1)
    queue.hold(("ml", "a"))
    queue.admit(("ml", "b"), at(2))
    queue.admit(("ml", "c"), at(3))
    assert not queue.forget(("ml", "b"))
    assert queue.place(("ml", "c")) == 1
    assert queue.admit_next() == []


def test_no_limit_admits_everything() -> None:
    queue = TrainingQueue(limit=None)
    assert all(queue.admit(("ml", f"tj-{i}"), at(i)) for i in range(50))
    assert not queue.waiting


def test_the_kept_line_matches_the_creation_order_through_any_sequence_of_changes() -> None:
    """Thousands of waiting TrainingJobs poll their place: the line is kept sorted as it
    changes instead of sorted per question; it must agree with a sort from scratch."""
    rng = random.Random(7)
    queue = TrainingQueue(limit=5)
    created: dict[tuple[str, str], str] = {}
    for _ in range(3000):
        key = (rng.choice(["ml", "ops"]), f"tj-{rng.randrange(200)}")
        if rng.random() < 0.6:
            created.setdefault(key, at(rng.randrange(60)))
            queue.admit(key, created[key])
        elif rng.random() < 0.5:
            queue.forget(key)
            created.pop(key, None)
        else:
            queue.admit_next()
        expected = sorted(queue.waiting, key=lambda k: (queue.waiting[k], k))
        assert queue.order() == expected
        assert len(queue.running) <= 5 and not queue.running & set(queue.waiting)
        for place, waiting in enumerate(expected[:3], start=1):
            assert queue.place(waiting) == place


def test_a_place_is_rewritten_at_every_change_near_the_front_and_once_halved_further_back() -> None:
    queue = TrainingQueue(limit=20)
    assert queue.exact_places() == 40  # the next two rounds of starts
    assert queue.place_worth_writing(300, None)  # never shown
    assert not queue.place_worth_writing(40, 40)
    assert queue.place_worth_writing(39, 40)
    assert queue.place_worth_writing(1, 2)
    assert not queue.place_worth_writing(151, 300)
    assert queue.place_worth_writing(150, 300)
    assert queue.place_worth_writing(40, 79)  # into the exact places
    assert not queue.place_worth_writing(41, 79)
    assert queue.place_worth_writing(301, 300)  # an older one joined ahead: never less
    assert TrainingQueue(limit=1).exact_places() == 10


def test_a_line_of_thousands_costs_each_waiting_one_a_few_place_writes() -> None:
    """Each start ahead moves every waiting one up; the shown place follows every step
    only near the front, and stays at or above the true place all the way."""
    queue = TrainingQueue(limit=20)
    keys = [("ml", f"tj-{i:04d}") for i in range(3000)]
    for i, key in enumerate(keys):
        queue.admit(key, f"2026-12-03T09:{i // 60:02d}:{i % 60:02d}Z")
    last = keys[-1]
    shown: int | None = None
    writes = 0
    while last in queue.waiting:
        place = queue.place(last)
        assert place is not None and (shown is None or place <= shown)
        if queue.place_worth_writing(place, shown):
            shown, writes = place, writes + 1
        queue.forget(queue.order()[0])  # the first in turn starts and ends
    assert shown == 1
    assert writes <= 40 + 8  # every place among the first 40, then log2(2980 / 40)
    assert queue.queued_message(41).endswith("; a place beyond 40 is rewritten once it halves")


def test_admitting_twice_holds_one_slot() -> None:
    queue = TrainingQueue(limit=1)
    assert queue.admit(("ml", "a"), at(1))
    assert queue.admit(("ml", "a"), at(1))
    queue.hold(("ml", "a"))
    assert queue.running == {("ml", "a")}


@pytest.mark.parametrize(
    ("phase", "reason", "holds"),
    [
        (None, None, False),
        ("Pending", JOB_MISSING, False),
        ("Pending", QUEUED, False),
        ("Pending", "JobCreated", True),
        ("Pending", "Unschedulable", True),
        ("Running", "Training", True),
        ("Succeeded", "Trained", False),  # registering, no longer training
        ("Failed", "GateFailed", False),
    ],
)
def test_which_statuses_hold_a_slot(phase: str | None, reason: str | None, holds: bool) -> None:
    assert holds_slot(phase, reason) is holds


@pytest.mark.parametrize(
    ("value", "limit"), [("", DEFAULT_MAX_RUNNING), ("3", 3), (" 7 ", 7), ("0", None)]
)
def test_the_limit_setting(value: str, limit: int | None) -> None:
    assert max_running_setting({"ORCHARD_MAX_RUNNING_TRAININGS": value}) == limit
    assert max_running_setting({}) == DEFAULT_MAX_RUNNING


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_a_limit_that_is_no_count_stops_the_operator(value: str) -> None:
    with pytest.raises(ValueError, match="ORCHARD_MAX_RUNNING_TRAININGS"):
        max_running_setting({"ORCHARD_MAX_RUNNING_TRAININGS": value})
