"""The one place that talks to the API server (lightkube's async client).

Objects go in and out as plain dicts (the JSON the API server speaks), so builders stay
pure dict factories and handlers need no Kubernetes model classes. A few generic verbs:
get, ensure (server-side apply of an owned child), patch status, post an event.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Event
from lightkube.types import PatchType

from .api import API_VERSION, GROUP, KINDS, VERSION
from .api.modeldeployment import GATEWAY_GROUP

FIELD_MANAGER = "orchard"
COMPONENT = "orchard-operator"

# Orchard's own kinds, known to lightkube as generic resources (with a status subresource).
ORCHARD_RESOURCES = {
    k.RESOURCE.kind: create_namespaced_resource(
        GROUP, VERSION, k.RESOURCE.kind, k.RESOURCE.plural, verbs=None
    )
    for k in KINDS
}

# Gateway API kinds Orchard reads or sets; registered so that `resource()` knows them.
GATEWAY_RESOURCES = (
    create_namespaced_resource(GATEWAY_GROUP, "v1", "HTTPRoute", "httproutes"),
    create_namespaced_resource(GATEWAY_GROUP, "v1beta1", "ReferenceGrant", "referencegrants"),
)

_client: AsyncClient | None = None


def load_config() -> KubeConfig:
    """In-cluster service account when running in a pod, else $KUBECONFIG or ~/.kube/config."""
    return KubeConfig.from_env()


def client() -> AsyncClient:
    """One shared async client per process (connections are pooled)."""
    global _client
    if _client is None:
        _client = AsyncClient(config=load_config(), field_manager=FIELD_MANAGER, trust_env=False)
    return _client


async def close() -> None:
    """Close the shared client (on operator cleanup)."""
    global _client
    if _client is not None:
        await _client.close()
        _client = None


def resource(api_version: str, kind: str) -> Any:
    """The lightkube resource class of an apiVersion and kind (core kinds or Orchard's)."""
    if api_version == API_VERSION and kind in ORCHARD_RESOURCES:
        return ORCHARD_RESOURCES[kind]
    return resource_registry.load(api_version, kind)


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    out: dict[str, Any] = obj.to_dict()
    return out


def is_not_found(err: ApiError) -> bool:
    return err.status.code == 404


async def get(api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """The object as a dict, or None if it does not exist."""
    try:
        obj = await client().get(resource(api_version, kind), name, namespace=namespace)
    except ApiError as err:
        if is_not_found(err):
            return None
        raise
    return _as_dict(obj)


def is_conflict(err: ApiError) -> bool:
    """409: the object already exists (create) or changed under us (update)."""
    return err.status.code == 409


async def create(obj: dict[str, Any]) -> dict[str, Any]:
    """Create an object; raises ApiError (409 when it exists). For children that must be
    made once and never re-applied (Jobs, immutable ConfigMaps, ModelVersions)."""
    instance: Any = resource(obj["apiVersion"], obj["kind"]).from_dict(obj)
    out = await client().create(instance)
    return _as_dict(out)


async def list_objects(
    api_version: str, kind: str, namespace: str, labels: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every object of a kind in a namespace, optionally matching labels; [] when the
    kind is not served (its CRD is not installed)."""
    selector: Any = dict(labels) if labels else None
    try:
        return [
            _as_dict(obj)
            async for obj in client().list(
                resource(api_version, kind), namespace=namespace, labels=selector
            )
        ]
    except ApiError as err:
        if is_not_found(err):
            return []
        raise


async def merge_patch(
    api_version: str, kind: str, name: str, namespace: str, patch: dict[str, Any]
) -> dict[str, Any]:
    """A JSON merge patch of an object's main resource (for example suspending a Job)."""
    out = await client().patch(
        resource(api_version, kind), name, patch, namespace=namespace, patch_type=PatchType.MERGE
    )
    return _as_dict(out)


async def delete(api_version: str, kind: str, name: str, namespace: str) -> bool:
    """Delete an object; False if it was not there."""
    try:
        await client().delete(resource(api_version, kind), name, namespace=namespace)
    except ApiError as err:
        if is_not_found(err):
            return False
        raise
    return True


def owner_reference(owner: dict[str, Any], *, controller: bool = True) -> dict[str, Any]:
    """An ownerReference to `owner`, so garbage collection removes the child with it."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def owned(child: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """A copy of `child` in the owner's namespace, carrying its ownerReference."""
    meta = dict(child.get("metadata", {}))
    meta.setdefault("namespace", owner["metadata"]["namespace"])
    ref = owner_reference(owner)
    others = [r for r in meta.get("ownerReferences", []) if r.get("uid") != ref["uid"]]
    meta["ownerReferences"] = [*others, ref]
    return {**child, "metadata": meta}


async def apply(obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
    """Server-side apply: create the object or bring the fields Orchard manages in step."""
    meta = obj["metadata"]
    res = resource(obj["apiVersion"], obj["kind"])
    out = await client().patch(
        res,
        meta["name"],
        obj,
        namespace=meta.get("namespace"),
        patch_type=PatchType.APPLY,
        field_manager=FIELD_MANAGER,
        force=force,
    )
    return _as_dict(out)


async def ensure_owned(child: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """Apply `child` as a child of `owner` (ownerReference set)."""
    return await apply(owned(child, owner))


async def patch_status(
    kind: str, name: str, namespace: str, status: dict[str, Any]
) -> dict[str, Any]:
    """Merge-patch the status subresource of one of Orchard's objects."""
    res = ORCHARD_RESOURCES[kind].Status
    out = await client().patch(
        res, name, {"status": status}, namespace=namespace, patch_type=PatchType.MERGE
    )
    return _as_dict(out)


def event_body(
    regarding: dict[str, Any],
    reason: str,
    message: str,
    *,
    type_: str = "Normal",
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """A core/v1 Event about `regarding`, as `kubectl describe` shows it."""
    when = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    meta = regarding["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": regarding["apiVersion"],
            "kind": regarding["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "reason": reason,
        "message": message[:1024],
        "type": type_,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "firstTimestamp": when,
        "lastTimestamp": when,
        "count": 1,
    }


async def post_event(
    regarding: dict[str, Any], reason: str, message: str, *, type_: str = "Normal"
) -> None:
    """Post an event (handlers may also use kopf.info / kopf.warning on their own body)."""
    body = event_body(regarding, reason, message, type_=type_)
    event = cast(Event, Event.from_dict(body))
    await client().create(event)
