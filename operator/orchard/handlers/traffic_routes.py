"""The Gateway API side of a ModelDeployment: read its HTTPRoute (and the consent of the
route's namespace), and set the canary's weight on the rules handed to it.

Only in traffic mode gatewayAPI; in mode replicas the split is made by pod counts and
nothing here is called beyond `traffic_state`'s first line.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf

from orchard import kube
from orchard.api.modeldeployment import (
    HTTPROUTE_API_VERSION,
    REFERENCEGRANT_API_VERSION,
    ModelDeployment,
    ModelDeploymentStatus,
)
from orchard.builders import serving as sv
from orchard.decisions import observing as ob
from orchard.decisions import traffic as tr


async def traffic_state(md: ModelDeployment) -> ob.TrafficState:
    """Whether the traffic mode can be honoured, and the HTTPRoute with its weight.

    A route in another namespace needs that namespace's consent (a ReferenceGrant), and
    a route needs a rule handed to this deployment (see `sv.http_route_owned_rules`).
    """
    if md.spec.traffic.mode != "gatewayAPI":
        return ob.TrafficState(True, tr.REPLICA_RATIO)
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
    return ob.TrafficState(True, tr.HTTP_ROUTE, "", route, weight)


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
