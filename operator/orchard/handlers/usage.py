"""Which ModelDeployments use which ModelVersions, kept in memory from the watch.

Every ModelDeployment event passes through `Usage.see`, which records the versions the
deployment uses (`decisions.modelversion.versions_used`) and the model it tracks, and
answers which versions just gained or lost a user. Those versions' `status.usedBy` is
then brought in step (`sync_used_by`), and a ModelVersion that changes reaches the
deployments that use or track it, without listing every deployment of the namespace:
that list, once per deployment, grew with the square of the deployments.

The index is as fresh as the watch: the last event of each deployment decides, so the
usedBy written after it is right even when several deployments change at once (each
version's update runs under its own lock and reads the index when it holds it). Until
the first listing of the deployments has arrived after a start, it knows fewer users
than there are; the deletion guard (`modelversion.guard_deletion`) reads the
deployments again anyway.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from orchard import kube
from orchard.api.common import API_VERSION
from orchard.decisions.modelversion import versions_used

from .serial import Serial
from .watched import Latest

Key = tuple[str, str]  # namespace, name


@dataclass(frozen=True)
class Uses:
    """What one ModelDeployment uses: versions by name, and the model it tracks."""

    versions: frozenset[str] = frozenset()
    model: str | None = None


def uses_of(deployment: Mapping[str, Any] | None) -> Uses:
    """What a ModelDeployment as last seen uses (None: it is gone)."""
    if deployment is None:
        return Uses()
    versions = versions_used(deployment)
    if (deployment.get("metadata") or {}).get("deletionTimestamp"):
        return Uses(versions)  # being deleted: it tracks nothing either
    track = (deployment.get("spec") or {}).get("track") or {}
    return Uses(versions, str(track["model"]) if track.get("model") else None)


class Usage:
    """The index: each deployment's `Uses`, and the reverse by version and by model."""

    def __init__(self) -> None:
        self._uses: dict[Key, Uses] = {}
        self._by_version: defaultdict[Key, set[str]] = defaultdict(set)
        self._by_model: defaultdict[Key, set[str]] = defaultdict(set)

    def see(self, namespace: str, name: str, deployment: Mapping[str, Any] | None) -> set[str]:
        """Record a deployment's newest event (None: it is gone); return the versions
        whose users changed."""
        key = (namespace, name)
        old, new = self._uses.get(key, Uses()), uses_of(deployment)
        if new == Uses():
            self._uses.pop(key, None)
        else:
            self._uses[key] = new
        for version in old.versions - new.versions:
            _discard(self._by_version, (namespace, version), name)
        for version in new.versions - old.versions:
            self._by_version[(namespace, version)].add(name)
        if old.model != new.model:
            if old.model is not None:
                _discard(self._by_model, (namespace, old.model), name)
            if new.model is not None:
                self._by_model[(namespace, new.model)].add(name)
        return set(old.versions ^ new.versions)

    def users(self, namespace: str, version: str) -> list[str]:
        """The deployments that use a version, sorted."""
        return sorted(self._by_version.get((namespace, version), ()))

    def trackers(self, namespace: str, model: str) -> list[str]:
        """The deployments that track a model (`spec.track`), sorted."""
        return sorted(self._by_model.get((namespace, model), ()))


def _discard(index: defaultdict[Key, set[str]], key: Key, name: str) -> None:
    names = index.get(key)
    if names is not None:
        names.discard(name)
        if not names:
            del index[key]


usage = Usage()
_versions = Serial()
# The ModelVersions as their watch events last showed them (`modeldeployment.
# model_version_changed` hands each over): what the deployments' steps and the usedBy
# updates read instead of a GET each; one no event has brought (or none for
# `watched.MAX_AGE`) is read live.
versions_seen = Latest()


def see_version(event_type: str | None, body: Mapping[str, Any]) -> None:
    """A ModelVersion's watch event: its body, kept for the next read (`read_version`)."""
    versions_seen.see(event_type, body)


async def read_version(namespace: str, name: str) -> dict[str, Any] | None:
    """A ModelVersion as the watch last brought it, else as the API server has it."""
    seen = versions_seen.get((namespace, name))
    if seen is not None:
        return seen
    return await kube.get(API_VERSION, "ModelVersion", name, namespace)


async def sync_used_by(namespace: str, version: str) -> None:
    """Bring one ModelVersion's status.usedBy in step with the index (no write when it
    already is, nothing when the version does not exist)."""
    key = (namespace, version)
    try:
        async with _versions.lock(key):
            body = await read_version(namespace, version)
            users = usage.users(namespace, version)
            if body is not None and sorted(_used_by(body)) != users:
                written = await kube.patch_status(
                    "ModelVersion", version, namespace, {"usedBy": users}
                )
                see_version("MODIFIED", written)
    finally:
        _versions.forget(key)  # the lock goes unless another update waits for it


def _used_by(body: Mapping[str, Any]) -> list[str]:
    return list((body.get("status") or {}).get("usedBy") or [])
