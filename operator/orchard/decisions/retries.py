"""How long to wait before trying again, and when to stop trying: pure.

Every retry Orchard makes is bounded by one of these, so nothing loops every few seconds
forever:

==================  =========================================================  ==========
what                delays                                                      gives up
==================  =========================================================  ==========
TRAINING_START      5, 10, 20, 40, 80 s (six tries)                             Failed, StartFailed
DELETION_GUARD      15 s, doubling, at most 10 min                              never (a guard)
LOOP_FAILURE        the loop's interval, doubling, at most 10 min               never (a safety net)
QUIET_POLL          20 s, doubling while no event of the object comes, at       never (a safety net)
                    most 320 s (the poll of a TrainingJob or ModelVersion
                    that waits)
==================  =========================================================  ==========

`retry` counts the tries that already failed (Kopf's `retry` kwarg: 0 on the first call).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_DELAY = 600.0  # ten minutes: the longest any retry waits


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: `first` seconds, doubling, at most `cap`; after `tries`
    tries in all (None: no end) there is no next one."""

    first: float
    cap: float = MAX_DELAY
    tries: int | None = None

    def delay(self, retry: int) -> float | None:
        """Seconds to wait after the try number `retry` (0-based) failed, or None when
        that was the last one allowed."""
        if self.tries is not None and retry + 1 >= self.tries:
            return None
        return min(self.first * 2.0 ** min(max(retry, 0), 60), self.cap)


TRAINING_START = Backoff(first=5.0, cap=80.0, tries=6)
DELETION_GUARD = Backoff(first=15.0)
# Watch events move a waiting object on; its poll only catches one that was missed, so it
# slows down while none comes: a thousand objects that wait cost little.
QUIET_POLL = Backoff(first=20.0, cap=320.0)


def loop_failure(interval: float, failures: int) -> float:
    """The wait after `failures` failed ticks in a row of a loop that runs every
    `interval` seconds: the interval, then doubling, at most ten minutes (never less
    than the interval itself)."""
    if failures <= 0:
        return interval
    return max(interval, min(interval * 2.0 ** min(failures - 1, 60), MAX_DELAY))


def gave_up_message(what: str, tries: int, error: str) -> str:
    """The status message when the last try failed."""
    return f"{what} failed {tries} times; the last error: {error}"[:1000]
