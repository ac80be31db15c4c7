"""Per-object loops that hold no finalizer.

Kopf's timers and daemons put a finalizer on every object they run for and take it off
only once the task has stopped, so with the operator gone (uninstalled, crashed, scaled to
zero) such an object, its namespace and its CRD stay Terminating. What Orchard runs
periodically is a safety net or a measurement that may stop at any moment, so it runs in
plain asyncio tasks instead, started and stopped by watch events:

- `Loops.follow` is called by a controller's `on.event` handler on every event of an
  object: it starts the loop when the object wants one and none runs, hands a running
  loop the newest tick (the newest spec), and asks it to stop when the object no longer
  wants one, is being deleted, or is gone (the DELETED event);
- a tick returns the seconds until the next one, or None to end the loop;
- a failed tick is logged and the next one waits longer (`decisions.retries.loop_failure`:
  the interval doubling, at most ten minutes);
- a loop asked to stop finishes the tick under way (a reconcile is never cut in half);
  `stop_all` stops them all when the operator stops;
- a loop's task runs in the operator's own context (`keep_root_context`, from the startup
  handler), not in the event handler's that started it: there Kopf keeps the event's
  cause, the whole object included, which the loop would hold for as long as it runs.

A missed DELETED event costs nothing lasting: the next tick finds the object gone and
ends the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from orchard.decisions import retries

Key = tuple[str, str]  # namespace, name
Tick = Callable[[], Awaitable[float | None]]

log = logging.getLogger("orchard.loops")
STOP_TIMEOUT = 5.0  # how long stop_all lets a tick under way finish


@dataclass
class _Loop:
    tick: Tick
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Loops:
    """The loops of one controller's periodic work, one per object at most."""

    def __init__(self, what: str, retry_after: float) -> None:
        self.what = what
        self.retry_after = retry_after  # the first wait after a failed tick
        self._loops: dict[Key, _Loop] = {}
        _ALL.append(self)

    def __contains__(self, key: Key) -> bool:
        return key in self._loops

    def follow(self, key: Key, wanted: bool, tick: Tick, initial_delay: float = 0.0) -> None:
        """Start, refresh or stop the loop of one object, as its newest event says."""
        loop = self._loops.get(key)
        if not wanted:
            self.stop(key)
            return
        if loop is not None:
            loop.tick = tick
            return
        loop = _Loop(tick)
        self._loops[key] = loop
        loop.task = asyncio.create_task(
            self._run(key, loop, initial_delay),
            name=f"orchard {self.what} {key[0]}/{key[1]}",
            context=None if _root_context is None else _root_context.copy(),
        )

    def stop(self, key: Key) -> None:
        """Ask the loop of one object to stop after the tick under way, if any."""
        loop = self._loops.pop(key, None)
        if loop is not None:
            loop.stopped.set()

    async def stop_all(self) -> None:
        loops = list(self._loops.values())
        self._loops.clear()
        for loop in loops:
            loop.stopped.set()
        tasks = [loop.task for loop in loops if loop.task is not None]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, key: Key, loop: _Loop, delay: float) -> None:
        failures = 0
        interval = self.retry_after
        try:
            while not await _wait(loop.stopped, delay):
                try:
                    nxt = await loop.tick()
                    failures = 0
                except Exception as exc:  # keep going; the next tick retries, later
                    failures += 1
                    delay = retries.loop_failure(interval, failures)
                    log.warning(
                        "%s of %s/%s failed (%d in a row), next in %.0f s: %s",
                        self.what, key[0], key[1], failures, delay, exc,
                    )  # fmt: skip
                    continue
                if nxt is None:
                    return
                interval = delay = nxt
        finally:
            if self._loops.get(key) is loop:
                del self._loops[key]


async def _wait(stopped: asyncio.Event, seconds: float) -> bool:
    """Sleep `seconds` unless asked to stop first; True when asked to stop."""
    if stopped.is_set():
        return True
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stopped.wait(), timeout=max(seconds, 0.0))
    return stopped.is_set()


_ALL: list[Loops] = []
_root_context: contextvars.Context | None = None


def keep_root_context() -> None:
    """Remember the startup handler's context (Kopf's own: its API credentials and event
    poster, and no object's cause) for the loops' tasks; called once at startup."""
    global _root_context
    _root_context = contextvars.copy_context()


async def stop_all() -> None:
    """Stop every loop of every controller (on operator cleanup)."""
    for loops in _ALL:
        await loops.stop_all()
