"""Serving pods' /metrics on loopback: each address answers with a real `Metrics`
exposition of the model server, over real HTTP, as the operator scrapes a pod."""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from orchard.serving.metrics import Metrics

ADDRESSES = ("127.0.0.1", "127.0.0.2")


class MetricsPods:
    """A loopback /metrics per pod address; replace `metrics[ip]` to restart a pod."""

    def __init__(self) -> None:
        self.metrics: dict[str, Metrics] = {}

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        pods = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pods.metrics[self.server.server_address[0]].render()  # type: ignore[index]
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture(name="serving_pods")
def serving_pods_fixture() -> Iterator[tuple[int, MetricsPods]]:
    """(port, pods): one server per address in ADDRESSES, on the same port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    pods = MetricsPods()
    servers = []
    for ip in ADDRESSES:
        pods.metrics[ip] = Metrics("iris")
        server = http.server.ThreadingHTTPServer((ip, port), pods.handler())
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    yield port, pods
    for server in servers:
        server.shutdown()
        server.server_close()
