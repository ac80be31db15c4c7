"""A real `orchard serve` process on loopback, under every hostile client of the issue at once.

Extreme values (1e308, 1e160), control and line-separator characters in string features,
50 distinct 600 KB strings, partial headers, an unfinished chunked body, slowloris, more
idle connections than the cap, and a million-row request in three forms. While that
runs, a prober asks for liveness on a fresh connection every 50 ms, as the kubelet
would. Then: liveness always answered within a second, /metrics parses (with
prometheus_client's parser and the operator's) and stays small, no inference request was
a server error, and the process's resident memory is back near its level after warm-up.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families
from test_serving_support import ServeProcess, mixed_artifact

from orchard.decisions import analysis as an
from orchard.decisions import metrics_text as mt

HOST = "127.0.0.1"  # never anything else
HEADER_TIMEOUT, BODY_TIMEOUT, MAX_CONNECTIONS = 1.0, 2.0, 64
LIVENESS_BOUND_S = 1.0
METRICS_BOUND_BYTES = 64 * 1024
RSS_MARGIN_KB = 50 * 1024


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def row(island: str = "Dream", bill: Any = 44.0) -> dict[str, Any]:
    return {"island": island, "sex": "male", "bill_length_mm": bill, "flipper_length_mm": 190.0}


def v2(bill: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "bill_length_mm", "shape": [1], "datatype": "FP64", "data": [bill]},
            {"name": "flipper_length_mm", "shape": [1], "datatype": "FP64", "data": [190.0]},
            {"name": "island", "shape": [1], "datatype": "BYTES", "data": ["Dream"]},
            {"name": "sex", "shape": [1], "datatype": "BYTES", "data": ["male"]},
        ]
    }


class Server(ServeProcess):
    """`orchard serve` in its own process, with short timeouts and a small connection cap."""

    def __init__(self, model_dir: Path, log: Path) -> None:
        super().__init__(
            model_dir, "penguins", log,
            "--header-timeout", str(HEADER_TIMEOUT), "--body-timeout", str(BODY_TIMEOUT),
            "--keep-alive-timeout", "1", "--max-connections", str(MAX_CONNECTIONS),
            "--log-level", "warning",
        )  # fmt: skip

    def post(self, path: str, timeout: float = 30, **kwargs: Any) -> httpx.Response:
        return httpx.post(f"{self.base}{path}", timeout=timeout, **kwargs)

    def metrics(self) -> str:
        return httpx.get(f"{self.base}/metrics", timeout=10).text

    def connect(self) -> socket.socket:
        return socket.create_connection((HOST, self.port), timeout=10)


def read_until_closed(sock: socket.socket, within: float) -> bytes:
    deadline = time.monotonic() + within
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError(f"a connection was held for {within} s")


class Prober(threading.Thread):
    """Liveness on a fresh connection every 50 ms, timed from connect to the last byte."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.wait(0.05):
            start = time.perf_counter()
            try:
                with socket.create_connection((HOST, self.port), timeout=5) as sock:
                    sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: probe\r\n"
                                 b"Connection: close\r\n\r\n")  # fmt: skip
                    raw = read_until_closed(sock, 5)
                if not raw.startswith(b"HTTP/1.1 200"):
                    self.failures.append(raw[:80].decode(errors="replace"))
            except OSError as exc:
                self.failures.append(repr(exc))
            self.latencies.append(time.perf_counter() - start)


def test_hostile_clients_cannot_break_metrics_liveness_or_memory(tmp_path: Path) -> None:
    server = Server(mixed_artifact(tmp_path / "m", handle_unknown="ignore"), tmp_path / "log")
    figures: dict[str, Any] = {}
    try:
        _abuse(server, figures)
    finally:
        server.stop()
    print("\nhostile-client figures:", figures)  # shown with pytest -s
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log, log[-3000:]


def _abuse(server: Server, figures: dict[str, Any]) -> None:
    predict, infer = "/v1/models/penguins:predict", "/v2/models/penguins/infer"
    # Warm-up: the request sizes of the abuse, honestly sent, so allocations settle.
    for n in (1, 10, 100, 1000, 5000, 10_000, 1000, 10):
        assert server.post(predict, json={"instances": [row()] * n}).status_code == 200
    for _ in range(3):
        server.metrics()
    rss_warm = rss_kb(server.proc.pid)

    # Every body is made before the clock starts: the prober shares this process's GIL.
    million_full = orjson.dumps({"instances": [[44.0, 190.0, "Dream", "male"]] * 1_000_000})
    million_compact = (
        b'{"inputs": [{"name": "x", "shape": [1000000, 4], "datatype": "BYTES", "data": ['
        + b"0," * 3_999_999
        + b"0]}]}"
    )
    long_strings = [
        [row(f"{i:02d}" + "x" * 600_000) for i in range(start, start + 10)]
        for start in range(0, 50, 10)
    ]
    separators = ["a\rb", "c\u2028d", "e\u2029f", "g\x85h", "\x0b\x0c\x1c\x1d\x1e", "\x00"]

    def million_chunked() -> Iterator[bytes]:
        yield b'{"instances": ['
        piece = b'[44.0, 190.0, "Dream", "male"],' * 1000
        for _ in range(1000):
            yield piece
        yield b"[1, 2, 3, 4]]}"

    statuses: dict[str, list[int]] = {}
    refusal_s: dict[str, float] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def record(case: str, status: int) -> None:
        with lock:
            statuses.setdefault(case, []).append(status)

    def values() -> None:
        for bill in (1e308, -1e308, 1e160, 1e160, 3.5e38):
            record(
                "extreme v1", server.post(predict, json={"instances": [row(bill=bill)]}).status_code
            )
            record("extreme v2", server.post(infer, json=v2(bill)).status_code)

    def strings() -> None:
        r = server.post(predict, json={"instances": [row(s) for s in separators]})
        record("separators", r.status_code)
        for rows in long_strings:
            record("600 KB strings", server.post(predict, json={"instances": rows}).status_code)

    def million() -> None:
        for case, kwargs in [
            ("million full", {"content": million_full}),
            ("million compact", {"content": million_compact}),
            ("million chunked", {"content": million_chunked()}),
        ]:
            start = time.perf_counter()
            r = server.post(infer if case == "million compact" else predict, **kwargs)
            refusal_s[case] = round(time.perf_counter() - start, 3)
            record(case, r.status_code)

    def raw(case: str, head: bytes, trickle: bytes | None, within: float) -> Callable[[], None]:
        def run() -> None:
            with server.connect() as sock:
                sock.sendall(head)
                deadline = time.monotonic() + within
                if trickle is not None:  # slowloris: a byte every 0.2 s until answered
                    while time.monotonic() < deadline:
                        if select.select([sock], [], [], 0.2)[0]:
                            break
                        sock.sendall(trickle)
                raw = read_until_closed(sock, max(0.5, deadline - time.monotonic()))
            record(case, int(raw.split()[1]) if raw.startswith(b"HTTP/1.1") else 0)

        return run

    flooded = threading.Event()

    def idle_connections() -> None:
        socks = [server.connect() for _ in range(MAX_CONNECTIONS + 40)]
        flooded.set()  # the other attacks come after: newer, so the flood is closed first
        try:
            closed = 0
            for sock in socks:  # every one is evicted or closed as idle, none held forever
                if read_until_closed(sock, HEADER_TIMEOUT + 5) == b"":
                    closed += 1
            record("idle beyond the cap", closed)
        finally:
            for sock in socks:
                sock.close()

    partial = b"POST /v1/models/penguins:predict HTTP/1.1\r\nHost: x\r\nContent-Type: app"
    chunked = (
        b"POST /v1/models/penguins:predict HTTP/1.1\r\nHost: x\r\n"
        b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"ins\r\n'
    )
    slow = b"GET /v2/health/live HTTP/1.1\r\nX-Slow: "
    attacks: list[Callable[[], None]] = [values, strings, million]
    for _ in range(5):
        attacks += [
            raw("partial headers", partial, None, HEADER_TIMEOUT + 3),
            raw("unfinished chunked", chunked, None, BODY_TIMEOUT + 3),
            raw("slowloris", slow, b"a", HEADER_TIMEOUT + 3),
        ]

    def guarded(attack: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                attack()
            except Exception as exc:  # reported below, with the others
                with lock:
                    errors.append(f"{getattr(attack, '__name__', attack)}: {exc!r}")

        return run

    prober = Prober(server.port)
    prober.start()
    time.sleep(0.3)
    started = time.monotonic()
    threads = [threading.Thread(target=guarded(idle_connections), daemon=True)]
    threads[0].start()
    assert flooded.wait(10)
    threads += [threading.Thread(target=guarded(a), daemon=True) for a in attacks]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(max(1.0, 40 - (time.monotonic() - started)))
    abuse_s = time.monotonic() - started
    prober.stop.set()
    prober.join(10)
    assert not any(t.is_alive() for t in threads), "an attack did not finish within 40 s"
    assert not errors, errors

    lat = sorted(prober.latencies)
    figures |= {
        "abuse_s": round(abuse_s, 1),
        "probes": len(lat),
        "liveness_max_s": round(lat[-1], 3),
        "liveness_p50_s": round(lat[len(lat) // 2], 4),
        "million_refusal_s": refusal_s,
    }
    assert not prober.failures, prober.failures[:5]
    assert len(lat) >= 10 * abuse_s * 0.5, "the prober could not keep up"  # ~20 per second
    assert lat[-1] < LIVENESS_BOUND_S, f"liveness took {lat[-1]:.3f} s during the abuse"

    # Every attack got the answer it deserves.
    expected = {
        "extreme v1": [400, 400, 400, 400, 400],
        "extreme v2": [400, 400, 400, 400, 400],
        "separators": [200],
        "600 KB strings": [200] * 5,
        "million full": [413],
        "million compact": [413],
        "million chunked": [413],
        "partial headers": [408] * 5,
        "unfinished chunked": [408] * 5,
        "slowloris": [408] * 5,
        "idle beyond the cap": [MAX_CONNECTIONS + 40],
    }
    assert {k: sorted(v) for k, v in statuses.items()} == expected
    assert max(refusal_s.values()) < 5.0

    # /metrics: both parsers read it, it is small, and no client made a server error.
    text = server.metrics()
    figures["metrics_bytes"] = len(text.encode())
    assert len(text.encode()) < METRICS_BOUND_BYTES
    assert list(text_string_to_metric_families(text))
    scrape = mt.parse_scrape(text)
    window = an.track_window(scrape)
    assert window.requests > 0 and window.errors == 0
    invalid = sum(
        v for (name, labels), v in scrape.items()
        if name == "orchard_request_errors_total" and ("reason", "invalid_value") in labels
    )  # fmt: skip
    assert invalid == 10
    dropped = {
        dict(labels)["reason"]: v
        for (name, labels), v in scrape.items()
        if name == "orchard_connections_dropped_total"
    }
    assert dropped.get("evicted", 0) >= 40 and dropped.get("header_timeout", 0) >= 10

    # Memory: back near the warm level once the hostile connections are gone.
    deadline = time.monotonic() + 10
    while scrape.get(("orchard_connections_open", ()), 99) > 1 and time.monotonic() < deadline:
        time.sleep(0.2)
        scrape = mt.parse_scrape(server.metrics())
    assert scrape[("orchard_connections_open", ())] <= 1  # the scrape's own
    rss_after = rss_kb(server.proc.pid)
    figures |= {"rss_warm_mb": rss_warm // 1024, "rss_after_mb": rss_after // 1024}
    assert rss_after - rss_warm < RSS_MARGIN_KB, figures
