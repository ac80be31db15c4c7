"""An in-memory stand-in for `orchard.kube`, for unit tests of the controllers' I/O layer.

The same verbs with the same signatures (`test_the_fake_has_the_real_verbs` keeps them in
step) and the same error vocabulary (`kube.NotFound`, `Conflict`, `KindNotServed`), over
objects kept as the dicts the API server would return. What it leaves out is named:
no admission or schema validation, server-side apply approximated by a merge of the
applied fields, no garbage collection, label selectors by equality only.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from orchard import kube

VERBS = ("get", "create", "list_objects", "merge_patch", "delete", "apply", "patch_status")
Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name


def merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch: objects merge, null removes, everything else replaces."""
    out = copy.deepcopy(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class FakeKube:
    """Objects by (apiVersion, kind, namespace, name), every write recorded in `writes`."""

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.writes: list[tuple[str, str, str]] = []  # (verb, kind, name)
        self.reads: list[tuple[str, str]] = []  # (kind, name) of every get
        self.not_served: set[str] = set()  # kinds whose CRD is "not installed"
        self._versions = itertools.count(1)
        self._uids = itertools.count(1)

    # --- test set-up and inspection ---------------------------------------------------

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeKube:
        for verb in VERBS:
            monkeypatch.setattr(kube, verb, getattr(self, verb))
        monkeypatch.setattr(kube, "post_event", self.post_event)
        return self

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Put an object in as if created, with a uid and a resourceVersion."""
        body = copy.deepcopy(obj)
        meta = body.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta.setdefault("generation", 1)
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[self._key(body)] = body
        return copy.deepcopy(body)

    def find(self, kind: str, name: str, namespace: str = "ml") -> dict[str, Any] | None:
        for (_, k, ns, n), body in self.objects.items():
            if (k, ns, n) == (kind, namespace, name):
                return body
        return None

    def reasons(self) -> list[str]:
        return [str(e["reason"]) for e in self.events]

    @staticmethod
    def _key(obj: dict[str, Any]) -> Key:
        meta = obj["metadata"]
        return obj["apiVersion"], obj["kind"], str(meta.get("namespace", "")), meta["name"]

    def _served(self, kind: str) -> None:
        if kind in self.not_served:
            raise kube.KindNotServed(404, f"the server does not serve {kind}")

    def _stored(self, api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any]:
        self._served(kind)
        body = self.objects.get((api_version, kind, namespace, name))
        if body is None:
            raise kube.NotFound(404, f'{kind} "{name}" not found')
        return body

    def _store(self, body: dict[str, Any], verb: str) -> dict[str, Any]:
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[self._key(body)] = body
        self.writes.append((verb, body["kind"], body["metadata"]["name"]))
        return copy.deepcopy(body)

    # --- the verbs of orchard.kube ----------------------------------------------------

    async def get(
        self, api_version: str, kind: str, name: str, namespace: str
    ) -> dict[str, Any] | None:
        self.reads.append((kind, name))
        try:
            return copy.deepcopy(self._stored(api_version, kind, name, namespace))
        except kube.NotFound:
            return None

    async def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._served(obj["kind"])
        if self._key(obj) in self.objects:
            raise kube.Conflict(409, f'{obj["kind"]} "{obj["metadata"]["name"]}" already exists')
        self.add(obj)
        return self._store(self.objects[self._key(obj)], "create")

    async def list_objects(
        self, api_version: str, kind: str, namespace: str, labels: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        if kind in self.not_served:
            return []
        wanted = (labels or {}).items()
        return [
            copy.deepcopy(body)
            for (av, k, ns, _), body in self.objects.items()
            if (av, k, ns) == (api_version, kind, namespace)
            and wanted <= ((body["metadata"].get("labels") or {}).items())
        ]

    async def merge_patch(
        self, api_version: str, kind: str, name: str, namespace: str, patch: dict[str, Any]
    ) -> dict[str, Any]:
        body = self._stored(api_version, kind, name, namespace)
        expected = (patch.get("metadata") or {}).get("resourceVersion")
        if expected is not None and expected != body["metadata"]["resourceVersion"]:
            raise kube.Conflict(409, f'{kind} "{name}" changed since it was read')
        changed = merge(body, patch)
        if "spec" in patch:
            changed["metadata"]["generation"] = int(body["metadata"].get("generation", 1)) + 1
        return self._store(changed, "merge_patch")

    async def delete(
        self, api_version: str, kind: str, name: str, namespace: str, *, background: bool = False
    ) -> bool:
        self._served(kind)
        if self.objects.pop((api_version, kind, namespace, name), None) is None:
            return False
        self.writes.append(("delete", kind, name))
        return True

    async def apply(self, obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        self._served(obj["kind"])
        existing = self.objects.get(self._key(obj))
        if existing is None:
            self.add(obj)
            return self._store(self.objects[self._key(obj)], "apply")
        return self._store(merge(existing, obj), "apply")

    async def patch_status(
        self,
        kind: str,
        name: str,
        namespace: str,
        status: dict[str, Any],
        *,
        resource_version: str | None = None,
    ) -> dict[str, Any]:
        body = self._stored(kube.API_VERSION, kind, name, namespace)
        if resource_version is not None and resource_version != body["metadata"]["resourceVersion"]:
            raise kube.Conflict(409, f'{kind} "{name}" changed since it was read')
        return self._store(merge(body, {"status": status}), "patch_status")

    async def post_event(
        self, regarding: dict[str, Any], reason: str, message: str, *, type_: str = "Normal"
    ) -> None:
        self.events.append(kube.event_body(regarding, reason, message, type_=type_))
