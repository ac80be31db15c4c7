"""The training queue: at most `limit` TrainingJobs train at once, the others wait in turn.

Bookkeeping only, no API call: the TrainingJob controller tells the queue what it sees
and asks it whether one may start. A TrainingJob holds a slot from its admission (its Job
is about to be created) until it ends (Succeeded or Failed) or is deleted; a run that
succeeded but is not registered yet no longer trains, so it holds none. Waiting ones are
admitted first come, first served: by creation time, then namespace and name, across
every namespace the operator watches.

A queued TrainingJob's status shows its place. Among the next `exact_places()` every
change is written; further back a place is rewritten only once it has halved, so that a
line of thousands costs each waiting one a few status writes, not one per start ahead of
it (one per start ahead came to 26,957 PATCHes for 500 at once; now 5,785).
The place shown further back is therefore an upper bound: the true one is the same or
nearer the front.

The queue lives in the operator's memory. A restart rebuilds it from the TrainingJobs'
statuses (`holds_slot`) before any is admitted, and a run admitted just before a crash
whose status did not say so yet is found by its Job.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field

from orchard.decisions.training import JOB_MISSING, QUEUED

Key = tuple[str, str]  # namespace, name
MAX_RUNNING_ENV = "ORCHARD_MAX_RUNNING_TRAININGS"
DEFAULT_MAX_RUNNING = 20
MIN_EXACT_PLACES = 10  # the places always shown exactly, whatever the limit
# The reasons a Pending TrainingJob has before its Job exists (decisions.training).
NOT_STARTED_REASONS = frozenset({None, "", JOB_MISSING, QUEUED})


def max_running_setting(env: Mapping[str, str]) -> int | None:
    """The limit from the operator's environment: a count, 0 for none (None), the
    default when unset; ValueError for anything else (the operator refuses to start)."""
    raw = (env.get(MAX_RUNNING_ENV) or "").strip()
    if not raw:
        return DEFAULT_MAX_RUNNING
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{MAX_RUNNING_ENV}={raw!r} is not a count (0 for no limit)")
    return value or None


def holds_slot(phase: str | None, reason: str | None) -> bool:
    """Whether a TrainingJob's status says that it trains: Running, or Pending with its
    Job made (any reason but the few a TrainingJob has before its Job exists)."""
    return phase == "Running" or (phase == "Pending" and reason not in NOT_STARTED_REASONS)


@dataclass
class TrainingQueue:
    """Who trains and who waits; `limit` None trains everything at once.

    The waiting line is kept sorted as it changes, so that what every queued TrainingJob's
    poll asks (its place, whether a slot is free) costs no sort of thousands of waiting."""

    limit: int | None = DEFAULT_MAX_RUNNING
    running: set[Key] = field(default_factory=set)
    waiting: dict[Key, str] = field(default_factory=dict)  # key -> creation timestamp
    _line: list[tuple[str, Key]] = field(default_factory=list, repr=False)  # sorted

    def hold(self, key: Key) -> None:
        """Count a TrainingJob as training (admitted, or found training)."""
        self._leave(key)
        self.running.add(key)

    def forget(self, key: Key) -> bool:
        """A TrainingJob ended or is gone; True when it freed a slot."""
        self._leave(key)
        if key in self.running:
            self.running.discard(key)
            return True
        return False

    def free_slots(self) -> int:
        if self.limit is None:
            return len(self.waiting)
        return max(self.limit - len(self.running), 0)

    def order(self) -> list[Key]:
        """The waiting ones, first to be admitted first."""
        return [key for _created, key in self._line]

    def admit(self, key: Key, created: str) -> bool:
        """May this TrainingJob start now? If so it holds a slot; if not it waits (once)."""
        if key in self.running:
            return True
        if key not in self.waiting:
            self.waiting[key] = created
            bisect.insort(self._line, (created, key))
        place = self.place(key)
        if place is not None and place <= self.free_slots():
            self.hold(key)
            return True
        return False

    def admit_next(self) -> list[Key]:
        """Admit as many waiting ones as there are free slots, in turn."""
        admitted = [key for _created, key in self._line[: self.free_slots()]]
        for key in admitted:
            self.hold(key)
        return admitted

    def place(self, key: Key) -> int | None:
        """1 for the next to start; None when not waiting."""
        if key not in self.waiting:
            return None
        return 1 + bisect.bisect_left(self._line, (self.waiting[key], key))

    def exact_places(self) -> int:
        """How far back every change of a place is written: the next two rounds of starts."""
        return max(2 * (self.limit or 0), MIN_EXACT_PLACES)

    def place_worth_writing(self, place: int, shown: int | None) -> bool:
        """Whether a status showing `shown` should be rewritten for `place`: any change
        among the next `exact_places()`; further back, once it halved or when it grew (an
        older TrainingJob joined ahead)."""
        if shown is None or place > shown:
            return True
        return place < shown and (place <= self.exact_places() or 2 * place <= shown)

    def _leave(self, key: Key) -> None:
        created = self.waiting.pop(key, None)
        if created is not None:
            del self._line[bisect.bisect_left(self._line, (created, key))]

    def queued_message(self, place: int) -> str:
        """What a TrainingJob at `place` (from `place`, computed once per step) reads."""
        message = (
            f"queued: {place} of {len(self.waiting)} waiting; at most {self.limit} "
            f"TrainingJobs train at once ({MAX_RUNNING_ENV})"
        )
        if place > self.exact_places():
            message += f"; a place beyond {self.exact_places()} is rewritten once it halves"
        return message
