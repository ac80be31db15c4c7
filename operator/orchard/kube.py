"""The one place that talks to the API server (lightkube's async client, sending by
aiohttp: `AiohttpTransport`).

Objects go in and out as plain dicts (the JSON the API server speaks), so builders stay
pure dict factories and handlers need no Kubernetes model classes. A few generic verbs:
get, create, list, apply (server-side), merge patch, patch status, delete, post an event.

Errors: every refusal of the API server leaves this module as one of the `KubeError`
kinds below, so the controllers act on what was said, never on HTTP details:

=================  ==================================================================
NotFound           404: no such object (`get` and `delete` answer None / False instead)
Conflict           409: it exists (create), or changed since it was read (resourceVersion)
Invalid            400 or 422: the object as written is refused (validation, quantities)
Forbidden          403: the operator's role does not allow it
KindNotServed      the kind itself is not served (its CRD is not installed)
KubeError          any other refusal (5xx, 429), worth a retry
=================  ==================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator
from typing import Any, cast

import aiohttp
import httpx2
import prometheus_client
from lightkube import ALL_NS, ApiError, AsyncClient, KubeConfig
from lightkube.config.client_adapter import verify_cluster
from lightkube.core.resource_registry import resource_registry
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Event
from lightkube.types import CascadeType, PatchType

from .api import API_VERSION, GROUP, KINDS, VERSION
from .api.modeldeployment import GATEWAY_GROUP

FIELD_MANAGER = "orchard"
ALL_NAMESPACES = ALL_NS  # list_objects in every namespace
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


class KubeError(Exception):
    """A refusal of the API server; `code` is its HTTP status (0 when there was none)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class NotFound(KubeError):
    """404: no such object."""


class Conflict(KubeError):
    """409: the object exists, or changed since it was read."""


class Invalid(KubeError):
    """400 or 422: the API server refuses the object as written."""


class Forbidden(KubeError):
    """403: the operator's role does not allow it."""


class KindNotServed(KubeError):
    """The kind is not served by this cluster (its CRD is not installed)."""


_KINDS_BY_CODE: dict[int, type[KubeError]] = {
    404: NotFound,
    409: Conflict,
    400: Invalid,
    422: Invalid,
    403: Forbidden,
}


# Requests in flight at once; the rest wait their turn here. It matches the HTTP pool's
# kept-alive connections (httpx keeps 20), so that every request reuses one instead of
# opening (and closing) TLS connections, and the pool's own queue stays short: in a
# profile of a thousand objects starting at once, handing out its connections to
# hundreds of waiting requests took 14 % of the operator's CPU.
IN_FLIGHT = 20
_slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}


@contextlib.asynccontextmanager
async def _answers() -> AsyncIterator[None]:
    """One request to the API server: wait for a slot, and turn lightkube's errors into
    this module's vocabulary."""
    loop = asyncio.get_running_loop()
    if loop not in _slots:
        _slots.clear()  # one loop at a time (tests start a new one per test)
        _slots[loop] = asyncio.Semaphore(IN_FLIGHT)
    try:
        async with _slots[loop]:
            yield
    except ApiError as err:
        code = int(err.status.code or 0)
        raise _KINDS_BY_CODE.get(code, KubeError)(code, err.status.message or str(err)) from err
    except Exception as err:
        # A bare (non-JSON) 404 comes from the server's routing: the kind is not served.
        if getattr(getattr(err, "response", None), "status_code", None) == 404:
            raise KindNotServed(404, str(err)) from err
        raise


def load_config() -> KubeConfig:
    """In-cluster service account when running in a pod, else $KUBECONFIG or ~/.kube/config."""
    return KubeConfig.from_env()


API_REQUESTS = prometheus_client.Counter(
    "orchard_operator_api_requests",
    "Requests the controllers sent to the API server, by method, resource (pods, "
    "trainingjobs/status, ...) and HTTP code (0: no answer); Kopf's own watches and "
    "patches are not counted.",
    ["method", "resource", "code"],
)


def resource_of(path: str) -> str:
    """The resource a request's URL path names, with its subresource ("pods",
    "modelversions/status"; "other" for a path outside /api and /apis): few enough
    values to label a counter with."""
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"]:
        rest = parts[2:]  # /api/v1/...
    elif parts[:1] == ["apis"]:
        rest = parts[3:]  # /apis/<group>/<version>/...
    else:
        return "other"
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        rest = rest[2:]  # a namespaced resource
    if not rest:
        return "other"
    return f"{rest[0]}/{rest[2]}" if len(rest) > 2 else rest[0]


class AiohttpTransport(httpx2.AsyncBaseTransport):
    """lightkube's requests sent by aiohttp (Kopf's own HTTP client) instead of httpx's
    default transport: lightkube still builds every request (auth included) and reads
    every answer. Measured against this API server, a GET cost 0.67 ms of CPU through
    the default transport (httpcore on anyio) and 0.33 ms through this one, and the
    operator spends most of its time on such requests."""

    def __init__(self, ssl_context: ssl.SSLContext) -> None:
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        if self._session is None:  # made in the loop it serves
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl, limit=IN_FLIGHT),
                auto_decompress=False,  # httpx decodes what the headers say
            )
        limits = request.extensions.get("timeout") or {}
        timeout = aiohttp.ClientTimeout(
            sock_connect=limits.get("connect"), sock_read=limits.get("read")
        )
        resource = resource_of(request.url.path)
        try:
            async with self._session.request(
                request.method, str(request.url), headers=list(request.headers.multi_items()),
                data=await request.aread(), timeout=timeout, allow_redirects=False,
            ) as answer:  # fmt: skip
                content = await answer.read()
        except TimeoutError as err:
            API_REQUESTS.labels(request.method, resource, "0").inc()
            raise httpx2.ReadTimeout(f"no answer in time: {err}", request=request) from err
        except aiohttp.ClientError as err:
            API_REQUESTS.labels(request.method, resource, "0").inc()
            raise httpx2.ConnectError(str(err) or repr(err), request=request) from err
        API_REQUESTS.labels(request.method, resource, str(answer.status)).inc()
        return httpx2.Response(
            answer.status, headers=list(answer.raw_headers), content=content, request=request
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def client() -> AsyncClient:
    """One shared async client per process (connections are pooled)."""
    global _client
    if _client is None:
        config = load_config()
        single = config.get()
        if single is None or single.user is None:
            raise KubeError(0, "the kubeconfig names no cluster and user to use")
        tls = verify_cluster(single.cluster, single.user, single.abs_file, trust_env=False)
        _client = AsyncClient(
            config=config, field_manager=FIELD_MANAGER, trust_env=False,
            transport=AiohttpTransport(tls),
        )  # fmt: skip
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


async def get(api_version: str, kind: str, name: str, namespace: str) -> dict[str, Any] | None:
    """The object as a dict, or None if it does not exist."""
    try:
        async with _answers():
            obj = await client().get(resource(api_version, kind), name, namespace=namespace)
    except NotFound:
        return None
    return _as_dict(obj)


async def create(obj: dict[str, Any]) -> dict[str, Any]:
    """Create an object (Conflict when it exists). For children that must be made once
    and never re-applied (Jobs, immutable ConfigMaps, ModelVersions)."""
    instance: Any = resource(obj["apiVersion"], obj["kind"]).from_dict(obj)
    async with _answers():
        out = await client().create(instance)
    return _as_dict(out)


async def list_objects(
    api_version: str, kind: str, namespace: str, labels: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Every object of a kind in a namespace, optionally matching labels; [] when the
    kind is not served (its CRD is not installed)."""
    selector: Any = dict(labels) if labels else None
    try:
        async with _answers():
            return [
                _as_dict(obj)
                async for obj in client().list(
                    resource(api_version, kind), namespace=namespace, labels=selector
                )
            ]
    except (NotFound, KindNotServed):
        return []


async def merge_patch(
    api_version: str, kind: str, name: str, namespace: str, patch: dict[str, Any]
) -> dict[str, Any]:
    """A JSON merge patch of an object's main resource (for example suspending a Job);
    a `metadata.resourceVersion` in the patch makes it Conflict if the object changed."""
    async with _answers():
        out = await client().patch(
            resource(api_version, kind), name, patch, namespace=namespace,
            patch_type=PatchType.MERGE,
        )  # fmt: skip
    return _as_dict(out)


async def delete(
    api_version: str, kind: str, name: str, namespace: str, *, background: bool = False
) -> bool:
    """Delete an object; False if it was not there. With `background` its dependents go
    by garbage collection after it (a Job's pods; the API's default for a Job orphans
    them)."""
    cascade = CascadeType.BACKGROUND if background else None
    try:
        async with _answers():
            await client().delete(
                resource(api_version, kind), name, namespace=namespace, cascade=cascade
            )
    except NotFound:
        return False
    return True


async def apply(obj: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
    """Server-side apply: create the object or bring the fields Orchard manages in step."""
    meta = obj["metadata"]
    res = resource(obj["apiVersion"], obj["kind"])
    async with _answers():
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


async def patch_status(
    kind: str,
    name: str,
    namespace: str,
    status: dict[str, Any],
    *,
    resource_version: str | None = None,
) -> dict[str, Any]:
    """Merge-patch the status subresource of one of Orchard's objects. With the
    `resource_version` it was read at, Conflict if the object changed since (so a
    decision taken on a stale read is never written over a newer one)."""
    res = ORCHARD_RESOURCES[kind].Status
    patch: dict[str, Any] = {"status": status}
    if resource_version is not None:
        patch["metadata"] = {"resourceVersion": resource_version}
    async with _answers():
        out = await client().patch(
            res, name, patch, namespace=namespace, patch_type=PatchType.MERGE
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
    """Post an event: the one way Orchard's controllers tell a person what they decided."""
    body = event_body(regarding, reason, message, type_=type_)
    event = cast(Event, Event.from_dict(body))
    async with _answers():
        await client().create(event)
