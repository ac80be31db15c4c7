"""ModelDeployment controller: serve a version; roll the next one out as an analysed canary.

Every trigger runs the same `reconcile`: read the object, its pods and ModelVersions,
scrape the serving pods' own /metrics while a canary step is live, `decide` (pure, in
`orchard.decisions.rollout`), apply the children the new status asks for, write the
status, post the events. All rollout state lives in status, so a restarted operator
resumes where it was. Triggers:

- create / update / resume of the ModelDeployment;
- a change of the `orchard.dev/rollout-action` annotation (promote | abort), acted on once;
- a daemon, only while the phase is Pending, Progressing or Paused, every analysis
  interval (it stops by itself when the rollout ends);
- events of the Deployments it owns (pods becoming ready, or going away).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import kopf
from pydantic import ValidationError

from orchard import kube
from orchard.api.common import (
    API_VERSION,
    GROUP,
    ROLLOUT_ACTION_ANNOTATION,
    VERSION,
    parse_duration,
    to_k8s,
)
from orchard.api.modeldeployment import (
    GATEWAY_GROUP,
    HTTPROUTE_API_VERSION,
    MODELDEPLOYMENT_LABEL,
    REFERENCEGRANT_API_VERSION,
    Analysis,
    ModelDeployment,
    ModelDeploymentStatus,
    RolloutAction,
)
from orchard.api.modelversion import ModelVersion
from orchard.builders import serving as sv
from orchard.decisions import analysis as an
from orchard.decisions import metrics_text as mt
from orchard.decisions import observing as ob
from orchard.decisions import policy as pol
from orchard.decisions import rollout as ro
from orchard.decisions import traffic as tr
from orchard.decisions.modelversion import deployments_using
from orchard.handlers import policy

RBAC_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": [GROUP],
        "resources": ["modeldeployments"],
        "verbs": ["get", "list", "watch", "patch"],
    },
    {"apiGroups": [GROUP], "resources": ["modeldeployments/status"], "verbs": ["get", "patch"]},
    # blockOwnerDeletion on the children's ownerReferences needs this.
    {"apiGroups": [GROUP], "resources": ["modeldeployments/finalizers"], "verbs": ["update"]},
    {"apiGroups": [GROUP], "resources": ["modelversions"], "verbs": ["get", "list"]},
    {"apiGroups": [GROUP], "resources": ["modelversions/status"], "verbs": ["get", "patch"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "patch"],
    },
    {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "patch"]},  # apply
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    {
        "apiGroups": ["autoscaling"],
        "resources": ["horizontalpodautoscalers"],
        "verbs": ["get", "create", "patch", "delete"],
    },
    {"apiGroups": [GATEWAY_GROUP], "resources": ["httproutes"], "verbs": ["get", "patch"]},
    {"apiGroups": [GATEWAY_GROUP], "resources": ["referencegrants"], "verbs": ["list"]},
]

IN_PROGRESS = ("Pending", "Progressing", "Paused")
SCRAPE_TIMEOUT = 2.0
MAX_SCRAPE_BYTES = 4 * 1024 * 1024  # a serving pod's /metrics is tens of KB

_locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)


@dataclass
class Window:
    """The scrapes the current analysis window counts from, per pod."""

    key: tuple[str | None, str | None]
    baseline: dict[str, mt.Scrape] = field(default_factory=dict)


# Per ModelDeployment: the baseline of its current step's window. Lost on restart: the
# window then counts from each pod's start (canary pods start with the rollout).
_windows: dict[tuple[str, str], Window] = {}


def in_progress(status: Mapping[str, Any], **_: Any) -> bool:
    """Only these need polling: a first version coming up, or a rollout under way."""
    return status.get("phase") in (None, *IN_PROGRESS)


UNSUPPORTED_ARTIFACT = "UnsupportedArtifact"
SCHEMA_MISMATCH = "SchemaMismatch"


async def _parse(body: dict[str, Any], logger: kopf.Logger) -> ModelDeployment | None:
    """The typed object, or None once status and an event say why it cannot be read
    (the API server validates the same schema, so this is an operator/CRD skew)."""
    try:
        return ModelDeployment.model_validate(body)
    except ValidationError as exc:
        message = f"ModelDeployment does not match the operator's schema: {exc}"[:1000]
    meta = body["metadata"]
    if (body.get("status") or {}).get("reason") != SCHEMA_MISMATCH:
        update = {"phase": "Degraded", "reason": SCHEMA_MISMATCH, "message": message}
        await kube.patch_status("ModelDeployment", meta["name"], meta["namespace"], update)
        await kube.post_event(body, SCHEMA_MISMATCH, message, type_="Warning")
    logger.error(message)
    return None


# --- Triggers --------------------------------------------------------------------------


@kopf.on.startup()
def watch_only_serving_deployments(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Filter the Deployment watch on the server: only the serving Deployments Orchard
    made stream into the operator, never every Deployment of the cluster."""
    settings.watching.label_selectors["apps", "deployments"] = MODELDEPLOYMENT_LABEL


@kopf.on.resume(GROUP, VERSION, "modeldeployments")
@kopf.on.create(GROUP, VERSION, "modeldeployments")
@kopf.on.update(GROUP, VERSION, "modeldeployments", field="spec")
async def changed(namespace: str | None, name: str, logger: kopf.Logger, **_: Any) -> None:
    await reconcile(str(namespace), name, logger)


def wants_action(body: kopf.Body, **_: Any) -> bool:
    """A manual action is waiting: status.requestedAction, or an unhandled annotation."""
    return bool((body.get("status") or {}).get("requestedAction")) or (
        _pending_action(body) is not None
    )


@kopf.on.event(GROUP, VERSION, "modeldeployments", when=wants_action)
async def manual_action(namespace: str | None, name: str, logger: kopf.Logger, **_: Any) -> None:
    """A person asked to promote or abort (status patch or annotation): act on it once.

    Kopf's own change tracking ignores annotations under Orchard's prefix and status,
    so this watches events; `wants_action` lets through only what is still to be done.
    """
    try:
        await reconcile(str(namespace), name, logger)
    except Exception as exc:  # events are not retried; the daemon or the next event will
        logger.warning("acting on a manual action failed: %s", exc)


def _pending_action(body: Mapping[str, Any]) -> RolloutAction | None:
    meta = body.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(ROLLOUT_ACTION_ANNOTATION)
    if not value:
        return None
    try:
        status = ModelDeploymentStatus.model_validate(body.get("status") or {})
    except ValidationError:
        return None
    return ro.annotation_action(
        value, ro.annotation_set_at(meta, ROLLOUT_ACTION_ANNOTATION), status
    )


@kopf.daemon(GROUP, VERSION, "modeldeployments", when=in_progress, cancellation_timeout=5.0)
async def analyse(
    stopped: kopf.DaemonStopped,
    namespace: str | None,
    name: str,
    spec: Mapping[str, Any],
    logger: kopf.Logger,
    **_: Any,
) -> None:
    """While a rollout is under way: analyse and decide every analysis interval."""
    analysis = Analysis.model_validate(dict((spec.get("canary") or {}).get("analysis") or {}))
    interval = parse_duration(analysis.interval)
    while not stopped:
        try:
            await reconcile(str(namespace), name, logger)
        except Exception as exc:  # keep analysing; the next tick retries
            logger.warning("reconcile failed: %s", exc)
        await stopped.wait(max(interval, 1.0))


@kopf.on.event("apps", "v1", "deployments", labels={MODELDEPLOYMENT_LABEL: kopf.PRESENT})
async def deployment_changed(
    body: kopf.Body, namespace: str | None, logger: kopf.Logger, **_: Any
) -> None:
    """A serving Deployment changed (pods ready or gone): bring the owner in step."""
    owner = body.get("metadata", {}).get("labels", {}).get(MODELDEPLOYMENT_LABEL)
    if owner and namespace:
        try:
            await reconcile(str(namespace), owner, logger)
        except Exception as exc:  # events are not retried; the next one or the daemon will
            logger.warning("reconcile of %s failed: %s", owner, exc)


@kopf.on.delete(GROUP, VERSION, "modeldeployments", optional=True)
async def deleted(namespace: str | None, name: str, status: Mapping[str, Any], **_: Any) -> None:
    """Children go by garbage collection; the versions it used lose it from usedBy."""
    _windows.pop((str(namespace), name), None)
    _locks.pop((str(namespace), name), None)
    versions = {status.get("stableVersion"), status.get("canaryVersion")}
    await update_used_by(str(namespace), {v for v in versions if v}, exclude=name)


# --- Reading -------------------------------------------------------------------------------


async def _version(
    name: str | None, namespace: str
) -> tuple[ModelVersion | None, ro.VersionInfo | None]:
    body = await kube.get(API_VERSION, "ModelVersion", name, namespace) if name else None
    return ob.version_info(name, body)


async def _scrape(client: httpx.AsyncClient, pod: Mapping[str, Any], port: int) -> mt.Scrape | str:
    """A pod's metrics, or why they cannot be had. The text is bounded and parsed on a
    thread: whatever a pod serves, the operator's event loop never stalls on it."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return "no pod IP"
    try:
        async with client.stream("GET", f"http://{ip}:{port}/metrics") as resp:
            resp.raise_for_status()
            chunks, size = [], 0
            async for chunk in resp.aiter_bytes():
                size += len(chunk)
                if size > MAX_SCRAPE_BYTES:
                    return f"metrics larger than {MAX_SCRAPE_BYTES} bytes"
                chunks.append(chunk)
        return await asyncio.to_thread(mt.parse_scrape, b"".join(chunks).decode("utf-8", "replace"))
    except httpx.HTTPStatusError as err:
        return f"/metrics answered {err.response.status_code}"
    except httpx.HTTPError as err:
        return f"/metrics unreachable: {type(err).__name__}"
    except mt.MetricsTextError as err:
        return f"/metrics unreadable: {err}"[:200]


async def scrape_tracks(
    pods: list[dict[str, Any]], status: ModelDeploymentStatus, port: int
) -> tuple[dict[str, mt.Scrape], dict[str, str]]:
    """Each serving pod's metrics by pod name, and why a ready pod's could not be read
    (a pod that is not ready serves no traffic, so its silence is no loss)."""
    wanted = [
        p
        for p in ob.serving_pods(pods, status)
        if not p.get("metadata", {}).get("deletionTimestamp")
    ]
    async with httpx.AsyncClient(timeout=SCRAPE_TIMEOUT, trust_env=False) as client:
        results = await asyncio.gather(*(_scrape(client, p, port) for p in wanted))
    scrapes: dict[str, mt.Scrape] = {}
    failures: dict[str, str] = {}
    for pod, got in zip(wanted, results, strict=True):
        name = str(pod["metadata"]["name"])
        if isinstance(got, str):
            if ob.pod_ready(pod):
                failures[name] = got
        else:
            scrapes[name] = got
    return scrapes, failures


async def traffic_state(md: ModelDeployment) -> ob.TrafficState:
    """Whether the traffic mode can be honoured, and the HTTPRoute with its weight.

    A route in another namespace needs that namespace's consent (a ReferenceGrant), and
    a route needs a rule handed to this deployment (see `sv.http_route_owned_rules`).
    """
    if md.spec.traffic.mode != "gatewayAPI":
        return ob.TrafficState(True, "ReplicaRatio")
    ref = md.spec.traffic.http_route
    assert ref is not None
    own_namespace = str(md.metadata.namespace)
    namespace = ref.namespace or own_namespace
    where = f"HTTPRoute {namespace}/{ref.name}"
    unavailable = ob.TrafficState(
        False,
        "GatewayAPIUnavailable",
        f"the cluster does not serve {HTTPROUTE_API_VERSION} HTTPRoutes (Gateway API not "
        "installed); traffic cannot be split by weights",
    )
    try:
        if namespace != own_namespace:
            grants = await kube.list_objects(
                REFERENCEGRANT_API_VERSION, "ReferenceGrant", namespace
            )
            if not sv.reference_granted(grants, md, ref.name):
                return ob.TrafficState(
                    False,
                    "ReferenceNotPermitted",
                    f"{where} is in another namespace and no ReferenceGrant there lets "
                    f"ModelDeployments of namespace {own_namespace} set it",
                )
        route = await kube.get(HTTPROUTE_API_VERSION, "HTTPRoute", ref.name, namespace)
    except kube.KindNotServed:
        return unavailable
    if route is None:
        return ob.TrafficState(
            False, "HTTPRouteNotFound", f"{where} not found; traffic cannot be split by weights"
        )
    weights = sv.http_route_weights(route, md)
    weight = weights[1] if weights else None
    accepted, reason = sv.http_route_accepted(route)
    if not accepted:
        return ob.TrafficState(
            False, f"HTTPRoute{reason}", f"{where} is not accepted by a Gateway ({reason})",
            route, weight,
        )  # fmt: skip
    if not sv.http_route_owned_rules(route, md):
        name = str(md.metadata.name)
        return ob.TrafficState(
            False,
            "HTTPRouteNoRule",
            f"no rule of {where} sends its traffic only to Service {sv.service_name(name)} "
            f"(or {sv.track_service_name(name, 'stable')}/{sv.track_service_name(name, 'canary')})"
            "; give the rule Orchard should split such backendRefs",
        )
    return ob.TrafficState(True, "HTTPRoute", "", route, weight)


# --- Acting -------------------------------------------------------------------------------


async def ensure_children(
    md: ModelDeployment,
    status: ModelDeploymentStatus,
    versions: dict[str, ModelVersion],
    stable_desired: int,
    canary_replicas_now: int | None,
    route: dict[str, Any] | None,
    now: dt.datetime,
    canary_ready_since: dt.datetime | None,
    logger: kopf.Logger,
) -> None:
    """Apply what the status asks for: Deployments, Services, HPA, HTTPRoute weights."""
    settings = sv.ServerSettings.from_env()
    spec = md.spec
    total = stable_desired if spec.autoscaling else spec.replicas
    stable_mv = versions.get(status.stable_version or "")
    if stable_mv is not None:
        replicas = None if spec.autoscaling else ro.stable_replicas(spec, status, total)
        await kube.apply(sv.deployment(md, "stable", stable_mv, replicas, settings))
    else:
        logger.info("stable version %s not found yet", status.stable_version)
    canary_mv = versions.get(status.canary_version or "")
    if status.canary_version and canary_mv is not None:
        replicas = ro.canary_replicas(spec, status, total)
        await kube.apply(sv.deployment(md, "canary", canary_mv, replicas, settings))
    elif canary_replicas_now:  # scale the canary away (its Deployment stays, at zero pods)
        await kube.merge_patch(
            "apps/v1",
            "Deployment",
            sv.deployment_name(str(md.metadata.name), "canary"),
            str(md.metadata.namespace),
            {"spec": {"replicas": 0}},
        )
    for svc in sv.services(md):
        await kube.apply(svc)
    hpa = sv.hpa(md)
    if hpa is not None:
        await kube.apply(hpa)
    else:  # autoscaling was turned off: remove the autoscaler this deployment made
        name, namespace = sv.hpa_name(str(md.metadata.name)), str(md.metadata.namespace)
        existing = await kube.get("autoscaling/v2", "HorizontalPodAutoscaler", name, namespace)
        owners = ((existing or {}).get("metadata") or {}).get("ownerReferences") or []
        if any(ref.get("uid") == md.metadata.uid for ref in owners):
            await kube.delete("autoscaling/v2", "HorizontalPodAutoscaler", name, namespace)
    if route is not None:
        await set_route_weight(md, status, route, now, canary_ready_since, logger)


async def set_route_weight(
    md: ModelDeployment,
    status: ModelDeploymentStatus,
    route: dict[str, Any],
    now: dt.datetime,
    canary_ready_since: dt.datetime | None,
    logger: kopf.Logger,
) -> None:
    """Set the canary's weight on this deployment's rules of the route, only if the route
    is still as read (its resourceVersion): a person's edit meanwhile is never lost."""
    current = sv.http_route_weights(route, md)
    weight = tr.route_weight(status, current[1] if current else None, now, canary_ready_since)
    if current == (100 - weight, weight):
        return
    meta = route["metadata"]
    patch = {
        "metadata": {"resourceVersion": meta["resourceVersion"]},
        "spec": {"rules": sv.http_route_rules(md, route, weight)},
    }
    try:
        await kube.merge_patch(
            HTTPROUTE_API_VERSION, "HTTPRoute", meta["name"], meta["namespace"], patch
        )
    except kube.Conflict:
        logger.info("HTTPRoute %s changed meanwhile; the weight is set next time", meta["name"])


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from one status to another: changed keys, null for removed ones.

    Keys not changed are left out, so a person's status.requestedAction written meanwhile
    is not overwritten.
    """
    return {k: new.get(k) for k in set(old) | set(new) if old.get(k) != new.get(k)}


async def write_status(
    body: dict[str, Any], old: ModelDeploymentStatus, decision: ro.Decision, logger: kopf.Logger
) -> None:
    """Patch what changed in status, then post the decision's events."""
    meta = body["metadata"]
    patch = status_patch(to_k8s(old), to_k8s(decision.status))
    if patch:
        await kube.patch_status("ModelDeployment", meta["name"], meta["namespace"], patch)
    for event in decision.events:
        logger.info("%s: %s", event.reason, event.message)
        try:
            await kube.post_event(body, event.reason, event.message, type_=event.type)
        except kube.KubeError as err:
            logger.warning("cannot post event %s: %s", event.reason, err)


async def update_used_by(namespace: str, versions: set[str], exclude: str | None = None) -> None:
    """Keep ModelVersion status.usedBy in step with the ModelDeployments that use them."""
    if not versions:
        return
    mds = await kube.list_objects(API_VERSION, "ModelDeployment", namespace)
    mds = [m for m in mds if m.get("metadata", {}).get("name") != exclude]
    for version in sorted(versions):
        body = await kube.get(API_VERSION, "ModelVersion", version, namespace)
        if body is None:
            continue
        users = deployments_using(version, mds)
        if sorted((body.get("status") or {}).get("usedBy") or []) != users:
            await kube.patch_status("ModelVersion", version, namespace, {"usedBy": users})


async def reconcile(
    namespace: str,
    name: str,
    logger: kopf.Logger,
) -> None:
    """Read, decide, apply, write status, tell: one step of the ModelDeployment's life."""
    async with _locks[(namespace, name)]:
        body = await kube.get(API_VERSION, "ModelDeployment", name, namespace)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        md = await _parse(body, logger)
        if md is None:
            return
        st = md.status
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        server_image = sv.ServerSettings.from_env().image
        violations = pol.modeldeployment_violations(md.spec, policy.current(), server_image)
        if violations:
            refusal = ro.refused(
                md.spec, st, now, md.metadata.generation, pol.REASON, pol.summary(violations)
            )
            await write_status(body, st, refusal, logger)
            return

        stable_mv, stable_info = await _version(
            st.stable_version or md.spec.model_version, namespace
        )
        cand_mv, cand_info = await _version(md.spec.model_version, namespace)
        pods = await kube.list_objects("v1", "Pod", namespace, labels=sv.selector(name))
        stable_dep, canary_dep = [
            await kube.get("apps/v1", "Deployment", sv.deployment_name(name, t), namespace)
            for t in ("stable", "canary")
        ]
        traffic = await traffic_state(md)
        scrapes: dict[str, mt.Scrape] = {}
        result: an.Result | None = None
        if ob.live_step(st):  # the canary analysis: only while a step's traffic is live
            scrapes, unscraped = await scrape_tracks(pods, st, md.spec.server.port)
            window = _windows.get((namespace, name))
            baseline = window.baseline if window and window.key == ob.window_key(st) else {}
            result = ob.analyse_window(md, pods, scrapes, baseline, unscraped)
        obs = ob.observe(
            md, pods, stable_dep, cand_info, stable_info, result, traffic,
            _pending_action(body), sv.url(md), now,
        )  # fmt: skip
        decision = ro.decide(md.spec, st, now, obs)
        new = decision.status
        if ob.window_key(new) != ob.window_key(st):  # a new step: its window starts now
            _windows[(namespace, name)] = Window(ob.window_key(new), dict(scrapes))

        versions = {v.metadata.name: v for v in (stable_mv, cand_mv) if v is not None}
        for wanted in (new.stable_version, new.canary_version):
            if wanted and wanted not in versions:
                mv, _ = await _version(wanted, namespace)
                if mv is not None:
                    versions[wanted] = mv
        try:
            await ensure_children(
                md, new, {str(k): v for k, v in versions.items()},
                obs.stable_desired,
                None if canary_dep is None else int(canary_dep["spec"].get("replicas") or 0),
                traffic.route, now, obs.canary_ready_since, logger,
            )  # fmt: skip
        except sv.UnsupportedArtifact as exc:  # a version no serving pod can read
            refusal = ro.refused(
                md.spec, st, now, md.metadata.generation, UNSUPPORTED_ARTIFACT, str(exc)
            )
            await write_status(body, st, refusal, logger)
            return

        await write_status(body, st, decision, logger)
        used = {st.stable_version, st.canary_version, new.stable_version, new.canary_version}
        if (st.stable_version, st.canary_version) != (new.stable_version, new.canary_version):
            await update_used_by(namespace, {v for v in used if v})
