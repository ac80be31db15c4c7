"""Splitting traffic between the stable and the canary track: one seam, two ways.

The rollout machine asks a `TrafficSplit` (chosen by `spec.traffic.mode`, once) for
what depends on how traffic is split, the way Argo Rollouts puts each traffic provider
behind one interface, and never checks the mode itself:

- `pods(total, weight)`: the (stable, canary) pod counts for a canary weight;
- `effective(status, seen, now)`: the canary's share of traffic this tick;
- `settled(effective, weight)`: whether a step's split has taken effect;
- `reason` and `means`: how the TrafficSplit condition names it.

`ReplicaRatio` (mode replicas): one Service selects both tracks' pods, so the share is
the canary's share of ready pods. `RouteWeights` (mode gatewayAPI): per-track Services
behind an HTTPRoute whose backend weights split traffic; the canary needs only its share
of pods, and a weight is sent once a canary pod has settled (`route_weight`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from orchard.api.modeldeployment import ModelDeploymentStatus

# With traffic split by pod counts the stable keeps all its pods (so an abort is instant)
# and the canary is added beside it, at most this many times the stable's count.
MAX_CANARY_FACTOR = 3
# A route sends a new step's weight to the canary only once its pods have been ready this
# long: endpoints take a moment to reach every data plane after a pod turns ready.
ROUTE_SETTLE = timedelta(seconds=2)

REPLICA_RATIO = "ReplicaRatio"
HTTP_ROUTE = "HTTPRoute"


class Seen(Protocol):
    """What a split reads of the operator's observations (`rollout.Observations`)."""

    @property
    def stable_ready(self) -> int: ...
    @property
    def canary_ready(self) -> int: ...
    @property
    def traffic_ok(self) -> bool: ...
    @property
    def route_weight(self) -> int | None: ...
    @property
    def canary_ready_since(self) -> datetime | None: ...


class TrafficSplit(Protocol):
    """How one traffic mode splits traffic (see the module docstring)."""

    @property
    def reason(self) -> str: ...
    @property
    def means(self) -> str: ...

    def pods(self, total: int, weight: int) -> tuple[int, int]: ...

    def effective(self, status: ModelDeploymentStatus, seen: Seen, now: datetime) -> int: ...

    def settled(self, effective: int, weight: int) -> bool: ...


def pod_share(stable_ready: int, canary_ready: int) -> int:
    """The canary's share of traffic when one Service selects both tracks' ready pods."""
    if canary_ready <= 0:
        return 0
    return round(100 * canary_ready / (canary_ready + max(stable_ready, 0)))


def route_weight(
    status: ModelDeploymentStatus,
    current: int | None,
    now: datetime,
    canary_ready_since: datetime | None,
) -> int:
    """The canary's weight on the HTTPRoute: the step's weight once a canary pod is ready.

    The first traffic to the canary's Service waits until a pod has been ready for
    ROUTE_SETTLE (its endpoint takes a moment to reach every data plane); 0 outside a
    rollout, before the first step, and while promoting.
    """
    if status.canary_version is None or status.canary_version == status.stable_version:
        return 0
    if status.current_step is None or canary_ready_since is None:
        return 0
    desired = status.canary_weight.desired if status.canary_weight else 0
    if not current and now - canary_ready_since < ROUTE_SETTLE:
        return 0
    return desired


@dataclass(frozen=True)
class ReplicaRatio:
    """One Service over both tracks: traffic follows the ready pod counts."""

    reason: str = REPLICA_RATIO
    means: str = "ready pod ratio"

    def pods(self, total: int, weight: int) -> tuple[int, int]:
        """The stable keeps its `total` pods and the canary gets total * w / (100 - w)
        beside it (at least one, at most MAX_CANARY_FACTOR x total); at 100 % the stable
        is scaled away."""
        if weight <= 0 or total <= 0:
            return max(total, 0), 0
        if weight >= 100:
            return 0, total
        canary = round(total * weight / (100 - weight))
        return total, min(max(canary, 1), MAX_CANARY_FACTOR * total)

    def effective(self, status: ModelDeploymentStatus, seen: Seen, now: datetime) -> int:
        if status.canary_version is None:
            return 0
        return pod_share(seen.stable_ready, seen.canary_ready)

    def settled(self, effective: int, weight: int) -> bool:
        return True  # the pods are the split: ready pods are enough


@dataclass(frozen=True)
class RouteWeights:
    """Per-track Services behind an HTTPRoute: traffic follows the backend weights."""

    reason: str = HTTP_ROUTE
    means: str = "HTTPRoute weights"

    def pods(self, total: int, weight: int) -> tuple[int, int]:
        """The weights split traffic, so the canary needs only its share of pods."""
        if weight <= 0 or total <= 0:
            return max(total, 0), 0
        return total, max(1, math.ceil(total * weight / 100))

    def effective(self, status: ModelDeploymentStatus, seen: Seen, now: datetime) -> int:
        """What the route carries after this tick."""
        if status.canary_version is None or not seen.traffic_ok:
            return 0
        return route_weight(status, seen.route_weight, now, seen.canary_ready_since)

    def settled(self, effective: int, weight: int) -> bool:
        return effective == weight  # the route must carry the step's weight


def for_mode(mode: str) -> TrafficSplit:
    """The split of a `spec.traffic.mode`."""
    return RouteWeights() if mode == "gatewayAPI" else ReplicaRatio()
