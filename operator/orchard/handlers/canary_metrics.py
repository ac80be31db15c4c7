"""Reading the serving pods' own /metrics for the canary analysis, and the window it counts.

Real HTTP from the operator to each pod of both tracks, bounded in time and size and
parsed off the event loop: whatever a pod serves, the operator never stalls on it. The
analysis of a step counts each pod's counters since the step began, so the scrape at the
start of a step is kept as that window's baseline (`AnalysisWindows`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from orchard.api.modeldeployment import ModelDeployment, ModelDeploymentStatus
from orchard.decisions import metrics_text as mt
from orchard.decisions import observing as ob

SCRAPE_TIMEOUT = 2.0
MAX_SCRAPE_BYTES = 4 * 1024 * 1024  # a serving pod's /metrics is tens of KB

WindowKey = tuple[str | None, str | None, bool]

_client: tuple[asyncio.AbstractEventLoop, httpx.AsyncClient] | None = None


def scrape_client() -> httpx.AsyncClient:
    """The one client of every scrape (of this event loop): making an httpx client costs
    about 17 ms of CPU (its TLS context, though scrapes are plain HTTP), which a client
    per scrape paid for every deployment at every analysis and monitoring tick."""
    global _client
    loop = asyncio.get_running_loop()
    if _client is None or _client[0] is not loop or _client[1].is_closed:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=16)
        _client = (loop, httpx.AsyncClient(timeout=SCRAPE_TIMEOUT, trust_env=False, limits=limits))
    return _client[1]


async def close() -> None:
    """Close the scrape client (the operator's cleanup)."""
    global _client
    if _client is not None and _client[0] is asyncio.get_running_loop():
        await _client[1].aclose()
    _client = None


async def _scrape(client: httpx.AsyncClient, pod: Mapping[str, Any], port: int) -> mt.Scrape | str:
    """A pod's metrics, or why they cannot be had."""
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


async def scrape_pods(
    pods: Sequence[Mapping[str, Any]], port: int
) -> tuple[dict[str, mt.Scrape], dict[str, str]]:
    """Each pod's metrics by pod name (pods on their way out left out), and why a ready
    pod's could not be read (a pod that is not ready serves no traffic, so its silence
    is no loss)."""
    wanted = [p for p in pods if not p.get("metadata", {}).get("deletionTimestamp")]
    client = scrape_client()
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


async def scrape_tracks(
    pods: list[dict[str, Any]], status: ModelDeploymentStatus, port: int
) -> tuple[dict[str, mt.Scrape], dict[str, str]]:
    """The metrics of both tracks' serving pods (`scrape_pods`)."""
    return await scrape_pods(ob.serving_pods(pods, status), port)


class AnalysisWindows:
    """Per ModelDeployment, each pod's scrape when its current step's window began.

    Kept in memory only: after an operator restart a window counts from each pod's start
    instead (canary pods start with the rollout), which widens it but never fakes it.
    """

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], tuple[WindowKey, dict[str, mt.Scrape]]] = {}

    @staticmethod
    def _id(md: ModelDeployment) -> tuple[str, str]:
        return str(md.metadata.namespace), str(md.metadata.name)

    def baseline(self, md: ModelDeployment) -> dict[str, mt.Scrape]:
        """The scrapes the current step counts from ({} when it began unseen)."""
        key, scrapes = self._windows.get(self._id(md), (None, {}))
        return scrapes if key == ob.window_key(md.status) else {}

    def advance(
        self, md: ModelDeployment, new: ModelDeploymentStatus, scrapes: Mapping[str, mt.Scrape]
    ) -> None:
        """A decision entered a new step: its window starts with this tick's scrapes."""
        if ob.window_key(new) != ob.window_key(md.status):
            self._windows[self._id(md)] = (ob.window_key(new), dict(scrapes))

    def forget(self, namespace: str, name: str) -> None:
        self._windows.pop((namespace, name), None)
