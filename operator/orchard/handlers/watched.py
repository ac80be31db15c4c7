"""The newest body of each object a controller reads on every step, as its watch events
brought it, so that a step reads memory instead of sending a GET.

Kopf already streams these objects into the operator (the controllers' event handlers
receive every one); each handler hands its body to a `Latest`, and the step reads it
there. What no event has brought yet (just made, or at start) is read with a GET, as is
whatever a step reads after its status write conflicted: a body kept here may be a moment
older than the API server's, so a step that decides on one writes status only over that
resourceVersion (`handlers.serial.until_written` takes it again, read live, on a 409).

A body no event has brought for `MAX_AGE` is read live again. Kopf opens each watch
stream again from the last resourceVersion it saw, so it misses no event, except when the
API server no longer has that version (410 Gone, after a compaction): then it lists again
and hands over every object it finds, but says nothing of one deleted meanwhile. Such a
Job would be kept, and its owner would wait for it for ever; this way the owner's poll
finds it gone within minutes. Bodies that old are dropped too (a Job whose TrainingJob
has finished is read by nobody), so what is kept is what changed in the last minutes.

At 5,000 objects, the ModelVersions' own steps sent 4.7 GETs of the version and 4.7 of
its verification Job per version, a third of the operator's requests. A step's own status
write returns the newest body, which it keeps too.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from typing import Any

from orchard.api.common import GROUP

Key = tuple[str, str]  # namespace, name
Trim = Callable[[Mapping[str, Any]], dict[str, Any]]
MAX_AGE = 300.0  # seconds a body is read from here after its last event
DIFF_BASE_KEY = "last-handled-configuration"  # Kopf's copy of the spec (`handlers.main`)


def without_bookkeeping(body: Mapping[str, Any]) -> dict[str, Any]:
    """The body as it came, copied, without what only the API server and Kopf read: its
    managedFields and Kopf's copy of the spec (`last-handled-configuration`), most of a
    small object's bytes."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    if "annotations" in meta:
        diff_base = f"{GROUP}/{DIFF_BASE_KEY}"
        meta["annotations"] = {k: v for k, v in meta["annotations"].items() if k != diff_base}
    return copy.deepcopy({**dict(body), "metadata": meta})


def job_without_template(body: Mapping[str, Any]) -> dict[str, Any]:
    """What a controller reads of a child Job: who it is, who owns it, its counts and its
    status; not its pod template, most of the bytes, which a thousand Jobs would keep in
    memory."""
    meta = body.get("metadata") or {}
    kept = ("name", "namespace", "uid", "resourceVersion", "labels", "ownerReferences")
    spec = {k: v for k, v in (body.get("spec") or {}).items() if k != "template"}
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": copy.deepcopy({k: meta[k] for k in kept if k in meta}),
        "spec": copy.deepcopy(spec),
        "status": copy.deepcopy(dict(body.get("status") or {})),
    }


class Latest:
    """Bodies by (namespace, name), each as its last watch event showed it, cut to what
    the controller reads (`trim`), and only while the controller still reads it."""

    def __init__(
        self, trim: Trim = without_bookkeeping, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._trim = trim
        self._clock = clock
        self._bodies: dict[Key, tuple[float, dict[str, Any]]] = {}
        self._swept = clock()

    def see(self, event_type: str | None, body: Mapping[str, Any], *, wanted: bool = True) -> None:
        """Keep an event's body; its DELETED event, or one the controller no longer
        needs (`wanted` False: a verdict reached), drops it."""
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        now = self._clock()
        if event_type == "DELETED" or not wanted:
            self._bodies.pop(key, None)
        else:
            self._bodies[key] = (now, self._trim(body))
        if now - self._swept > MAX_AGE:  # at most once per MAX_AGE: drop what none reads
            self._swept = now
            self._bodies = {k: seen for k, seen in self._bodies.items() if now - seen[0] <= MAX_AGE}

    def get(self, key: Key) -> dict[str, Any] | None:
        """The newest body seen, or None when no event has brought it, or none for
        `MAX_AGE` (read it live)."""
        seen = self._bodies.get(key)
        if seen is None or self._clock() - seen[0] > MAX_AGE:
            return None
        return seen[1]

    def __len__(self) -> int:
        return len(self._bodies)
