"""A small closed-loop HTTP/1.1 load client: N keep-alive connections, one request in flight each.

With a rate, requests are sent on a fixed schedule (one every 1/rate seconds, on whichever
connection is free) and each latency is counted from its scheduled time, so a server that
falls behind shows it in p99 rather than hiding it by slowing the client down.

Raw asyncio protocols on uvloop, so the client costs a few microseconds per request and
leaves the CPU to the server under test. Prints one JSON line: requests, errors,
seconds, requests/s, p50 and p99 latency in milliseconds.

    python bench/loadgen.py --url http://127.0.0.1:8080/v2/models/m/infer \
        --body-file body.json --concurrency 16 --duration 10 --warmup 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit


class _Conn(asyncio.Protocol):
    def __init__(self, request: bytes, stats: _Stats) -> None:
        self.request = request
        self.stats = stats
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.started = 0.0
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.ready.set_result(None)

    def fire(self, scheduled: float | None = None) -> None:
        self.started = time.perf_counter() if scheduled is None else scheduled
        assert self.transport is not None
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buf[:end])
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
                    break
            total = end + 4 + length
            if len(self.buf) < total:
                return
            status = int(head[9:12])
            del self.buf[:total]
            now = time.perf_counter()
            self.stats.record(now - self.started, status)
            if self.stats.running:
                self.stats.send(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.stats.running:
            self.stats.errors += 1
            self.stats.dropped += 1


class _Stats:
    def __init__(self, rate: float | None = None) -> None:
        self.interval = None if rate is None else 1.0 / rate
        self.next_slot = time.perf_counter()
        self.running = True
        self.measuring = False
        self.latencies: list[float] = []
        self.errors = 0
        self.dropped = 0
        self.statuses: dict[int, int] = {}
        self.total = 0  # completed requests, warmup included (for CPU per request)

    def send(self, conn: _Conn) -> None:
        """At once, or at the next free slot of the schedule."""
        if self.interval is None:
            conn.fire()
            return
        slot, self.next_slot = self.next_slot, self.next_slot + self.interval
        delay = slot - time.perf_counter()
        if delay <= 0:
            conn.fire(slot)
        else:
            asyncio.get_running_loop().call_later(delay, conn.fire, slot)

    def record(self, seconds: float, status: int) -> None:
        self.total += 1
        if not self.measuring:
            return
        self.latencies.append(seconds)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if status != 200:
            self.errors += 1


async def load(
    url: str,
    body: bytes,
    concurrency: int,
    duration: float,
    warmup: float,
    rate: float | None = None,
) -> dict[str, Any]:
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    request = (
        f"POST {parts.path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    stats = _Stats(rate)
    loop = asyncio.get_running_loop()
    conns = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(lambda: _Conn(request, stats), host, port)
        conns.append(proto)
    stats.next_slot = time.perf_counter()
    for c in conns:
        stats.send(c)
    await asyncio.sleep(warmup)
    stats.measuring = True
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    stats.measuring = False
    elapsed = time.perf_counter() - t0
    stats.running = False
    await asyncio.sleep(0.2)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    lat = sorted(stats.latencies)
    n = len(lat)

    def pct(q: float) -> float:
        return lat[min(n - 1, int(q * n))] * 1000 if n else float("nan")

    return {
        "requests": n, "all_requests": stats.total, "errors": stats.errors,
        "statuses": stats.statuses, "seconds": elapsed, "rps": n / elapsed,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99),
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--body-file", required=True)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rate", type=float, help="requests a second on a schedule (default: flat out)")
    a = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    with open(a.body_file, "rb") as f:
        body = f.read()
    result = asyncio.run(load(a.url, body, a.concurrency, a.duration, a.warmup, a.rate))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
