"""Children made once and claimed by owner uid, not by name (`decisions.ownership`).

A 409 on create is no proof that the object is ours: one left by an earlier owner of the
same kind and name (deleted, its children not yet collected) is replaced, with its own
dependents going after it; anybody else's is a `ChildConflict`, which the controller
reports as a Failed reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from orchard import kube
from orchard.builders.common import JOB_UID_LABEL
from orchard.decisions.jobs import pods_may_exist
from orchard.decisions.ownership import ownership

ATTEMPTS = 3  # creates of one child before its stale namesake is assumed still going


class ChildConflict(Exception):
    """A child's name is taken by an object this owner does not own."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


async def ensure_child(
    owner_kind: str, owner_name: str, owner_uid: str | None, obj: dict[str, Any], conflict: str
) -> dict[str, Any]:
    """Create `obj` unless one of ours exists; replace a stale namesake; ChildConflict
    (with reason `conflict`) for anyone else's. A stale one still there after its
    deletion is a plain KubeError: the caller's bounded retry comes back to it. Returns
    the child as created or found."""
    kind, name = obj["kind"], obj["metadata"]["name"]
    namespace = obj["metadata"]["namespace"]
    for _attempt in range(ATTEMPTS):
        try:
            return await kube.create(obj)
        except kube.Conflict:
            found = await kube.get(obj["apiVersion"], kind, name, namespace)
        verdict = ownership(found, owner_kind, owner_name, owner_uid)
        if verdict == "ours" and found is not None:
            return found
        if verdict == "foreign":
            raise ChildConflict(
                conflict,
                f"a {kind} named {name} exists and does not belong to this {owner_kind}; "
                f"delete it, or name the {owner_kind} otherwise",
            )
        if verdict == "stale":
            await kube.delete(obj["apiVersion"], kind, name, namespace, background=True)
    raise kube.KubeError(409, f"{kind} {name} is still there after its deletion; retrying")


async def job_pods(job: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A Job's pods, by its uid; not asked for while it can have none (`pods_may_exist`):
    a thousand Jobs that wait to start cost no LIST each time their owner is read."""
    if not pods_may_exist(job):
        return []
    meta = job["metadata"]
    return await kube.list_objects(
        "v1", "Pod", meta["namespace"], labels={JOB_UID_LABEL: meta["uid"]}
    )
