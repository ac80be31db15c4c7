"""The operator's scrape of serving pods: a pod it cannot read is named, never skipped.

Real HTTP on loopback: one small server per pod address (127.0.0.x, one port), each
answering as a healthy, broken, oversized or garbled pod would.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from orchard.api.modeldeployment import ModelDeployment, ModelDeploymentStatus
from orchard.decisions import analysis as an
from orchard.decisions import observing as ob
from orchard.handlers import canary_metrics
from orchard.serving.metrics import Metrics

GOOD = (
    'orchard_requests_total{endpoint="v2_infer",code="200"} 120\n'
    'orchard_predictions_total{class="setosa"} 120\n'
)


def served(requests: int) -> bytes:
    """What the model server itself writes after `requests` good inference requests."""
    m = Metrics("iris")
    for _ in range(requests):
        m.observe_request("v2_infer", 200, 0.004)
    m.classes.update({"setosa": requests // 2, "virginica": requests - requests // 2})
    m.observe_request("v2_health_ready", 200, None)
    return m.render()


ANSWERS: dict[str, tuple[int, bytes]] = {
    "127.0.0.1": (200, GOOD.encode()),
    "127.0.0.2": (500, b'{"error": "internal"}'),
    "127.0.0.3": (200, b"x" * (canary_metrics.MAX_SCRAPE_BYTES + 1024)),
    "127.0.0.4": (200, b'orchard_requests_total{endpoint="v2_infer" 1\n'),
    "127.0.0.5": (200, served(200)),
}


class Pod(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = ANSWERS[self.server.server_address[0]]  # type: ignore[index]
        self.send_response(status)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = int(s.getsockname()[1])
    servers = [http.server.ThreadingHTTPServer((ip, free), Pod) for ip in ANSWERS]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield free
    for server in servers:
        server.shutdown()
        server.server_close()


def pod(name: str, ip: str, track: str, version: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"orchard.dev/track": track, "orchard.dev/model-version": version},
        },
        "status": {
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


STATUS = ModelDeploymentStatus(stable_version="iris-v1", canary_version="iris-v2")


async def test_every_pod_that_cannot_be_read_is_named_with_why(port: int) -> None:
    pods = [
        pod("stable-a", "127.0.0.1", "stable", "iris-v1"),
        pod("stable-b", "127.0.0.2", "stable", "iris-v1"),
        pod("canary-a", "127.0.0.3", "canary", "iris-v2"),
        pod("canary-b", "127.0.0.4", "canary", "iris-v2"),
    ]
    scrapes, failures = await canary_metrics.scrape_tracks(pods, STATUS, port)
    assert set(scrapes) == {"stable-a"}
    assert failures["stable-b"] == "/metrics answered 500"
    assert "larger than" in failures["canary-a"]
    assert failures["canary-b"].startswith("/metrics unreadable")


async def test_a_pod_that_is_not_ready_serves_nothing_and_is_not_missed(port: int) -> None:
    pods = [
        pod("stable-a", "127.0.0.1", "stable", "iris-v1"),
        pod("canary-starting", "127.0.0.2", "canary", "iris-v2", ready=False),
    ]
    scrapes, failures = await canary_metrics.scrape_tracks(pods, STATUS, port)
    assert set(scrapes) == {"stable-a"} and failures == {}


def _result(verdict: an.Verdict) -> an.Result:
    return an.Result(verdict, "Passed", "ok", an.track_window({}), None)


def test_a_blinded_canary_is_never_a_pass() -> None:
    blinded = an.unobserved(_result("Pass"), {"canary-b": "/metrics answered 500"})
    assert (blinded.verdict, blinded.reason) == ("Inconclusive", "MetricsUnavailable")
    assert "canary-b (/metrics answered 500)" in blinded.message
    assert an.unobserved(_result("Pass"), {}).verdict == "Pass"
    failed = an.unobserved(_result("Fail"), {"canary-b": "x"})
    assert failed.verdict == "Fail"  # what was measured on the other pods stands


async def test_an_unparsable_scrape_makes_a_passing_canary_inconclusive(port: int) -> None:
    """Scraped over HTTP, parsed as the controller does: the server's own text from two
    pods passes, and a third ready canary pod answering garbage holds the verdict."""
    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "iris", "namespace": "ml"},
            "spec": {"modelVersion": "iris-v2"},
            "status": {**STATUS.model_dump(by_alias=True), "currentStep": 0},
        }
    )
    pods = [
        pod("stable-a", "127.0.0.5", "stable", "iris-v1"),
        pod("canary-a", "127.0.0.5", "canary", "iris-v2"),
    ]
    scrapes, failures = await canary_metrics.scrape_tracks(pods, STATUS, port)
    assert failures == {}
    seen = ob.analyse_window(md, pods, scrapes, {}, failures)
    assert (seen.verdict, seen.canary.requests) == ("Pass", 200), seen.message

    pods.append(pod("canary-b", "127.0.0.4", "canary", "iris-v2"))
    scrapes, failures = await canary_metrics.scrape_tracks(pods, STATUS, port)
    blinded = ob.analyse_window(md, pods, scrapes, {}, failures)
    assert (blinded.verdict, blinded.reason) == ("Inconclusive", "MetricsUnavailable")
    assert "canary-b (/metrics unreadable: " in blinded.message
