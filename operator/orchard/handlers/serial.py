"""One step at a time per object, and a step that waits covers every event before it.

Each controller runs its step (`trainingjob.sync`, `modelversion.sync`,
`modeldeployment.reconcile`) under the object's lock. A burst of watch events (a Job's
pods changing, a hundred versions turning Ready for the deployments that track them)
would queue one step per event behind the one running. But a step waiting for the lock
reads the object and its children only once it holds the lock, after every event that
arrived meanwhile, so one waiting step covers them all: a step asked for by a watch event
(`coalesce=True`) is dropped when another already waits, the way a controller's work
queue holds a key once. Steps asked for by a person or a handler that must act (create,
resume, a retry) always run.

A step writes status only over the object as it read it (its resourceVersion);
`until_written` takes the step again on the newer object when that write conflicts.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable

import kopf

from orchard import kube

Key = tuple[str, str]  # namespace, name
MAX_STATUS_ATTEMPTS = 5  # reads of an object that changed before its status was written


class Serial:
    """The locks of one controller's objects, and how many steps wait for each."""

    def __init__(self) -> None:
        self._locks: defaultdict[Key, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._waiting: Counter[Key] = Counter()

    def lock(self, key: Key) -> asyncio.Lock:
        """The object's lock, for work that is not the step itself (it never counts as a
        waiting step)."""
        return self._locks[key]

    def covered(self, key: Key) -> bool:
        """A step of this object waits for the lock: it will see what happened until now."""
        return self._waiting[key] > 0

    @contextlib.asynccontextmanager
    async def turn(self, key: Key) -> AsyncIterator[None]:
        """Hold the object's lock for one step, counted as waiting until it holds it."""
        self._waiting[key] += 1
        waiting = True
        try:
            async with self._locks[key]:
                self._done_waiting(key)
                waiting = False
                yield
        finally:
            if waiting:  # cancelled before its turn
                self._done_waiting(key)

    async def step(
        self, key: Key, step: Callable[[], Awaitable[None]], what: str, *, coalesce: bool
    ) -> None:
        """One step of the object under its lock, taken again on a conflicting status
        write (`until_written`); a watch event's (`coalesce`) is dropped when a step of
        the object already waits (it will read after the event)."""
        if coalesce and self.covered(key):
            return
        async with self.turn(key):
            await until_written(step, what)

    def forget(self, key: Key) -> None:
        """The object is gone (its DELETED event)."""
        lock = self._locks.get(key)
        if lock is not None and not lock.locked() and not self._waiting[key]:
            del self._locks[key]

    def _done_waiting(self, key: Key) -> None:
        self._waiting[key] -= 1
        if self._waiting[key] <= 0:
            del self._waiting[key]


def live_after_first(step: Callable[[bool], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A step whose first try may read what the watch brought (`handlers.watched`) and
    whose every try after a conflict reads the API server: `step(live)`."""
    tries = itertools.count()
    return lambda: step(next(tries) > 0)


async def until_written(step: Callable[[], Awaitable[None]], what: str) -> None:
    """Take `step` again while its status write conflicts (`kube.Conflict`: the object
    changed since the step read it, so it decides again on the newer one), at most
    MAX_STATUS_ATTEMPTS times; then a TemporaryError, which Kopf retries later."""
    for _attempt in range(MAX_STATUS_ATTEMPTS):
        try:
            await step()
            return
        except kube.Conflict:
            continue
    raise kopf.TemporaryError(f"{what} keeps changing; trying again", delay=5)
