"""Ten minutes of 1-row V2 traffic against `orchard serve` on iris with every request
collected, at --load (0.8) of the capacity measured flat out first (8 connections, 30 s):
the server's RSS, requests, errors and p50/p99 each minute, against its idle RSS.

    .venv/bin/python bench/serving_soak.py [--minutes N] [--load 0.8]

Answers are remembered for feedback up to the server's cap (100,000 by default) and
collected rows are written every flush, so memory should rise once and then stay flat.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

import loadgen
import serving as sv
import uvloop

# Connections for the paced minutes: enough that the schedule, not a free connection,
# decides when a request goes out (8 in flight at a 2 ms batching wait would cap the rate).
PACED = 64


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=int, default=10)
    p.add_argument("--load", type=float, default=0.8, help="share of the capacity to send")
    args = p.parse_args()
    sv.ensure_envs({"orchard"})
    work = Path(tempfile.mkdtemp(prefix="orchard-soak-"))
    bench = next(b for b in sv.make_models(work) if b.key.startswith("iris"))
    server = sv.Server("orchard-collect", "orchard", v1=True, options={"collect": True})
    server.start(bench, work)
    server.wait_ready(bench)
    assert server.proc is not None
    url = f"http://127.0.0.1:{server.port}/v2/models/{bench.name}/infer"
    body = sv.v2_body(bench.X, 1)
    idle = sv.rss_mb(sv.tree_pids(server.proc.pid))
    print(json.dumps({"idle_rss_mb": round(idle, 1)}), flush=True)
    uvloop.install()  # the client's few microseconds a request, as in bench/serving.py
    errors = 0
    try:
        flat_out = asyncio.run(loadgen.load(url, body, 8, 30.0, warmup=5.0))
        rate = args.load * flat_out["rps"]
        print(json.dumps({"capacity_rps": round(flat_out["rps"], 1), "rate": round(rate, 1)}))
        for minute in range(1, args.minutes + 1):
            stats = asyncio.run(loadgen.load(url, body, PACED, 60.0, warmup=0.0, rate=rate))
            rss = sv.rss_mb(sv.tree_pids(server.proc.pid))
            errors += stats["errors"]
            line = {"minute": minute, "rss_mb": round(rss, 1), "rps": round(stats["rps"], 1),
                    "p50_ms": round(stats["p50_ms"], 2), "p99_ms": round(stats["p99_ms"], 2),
                    "errors": stats["errors"]}  # fmt: skip
            print(json.dumps(line), flush=True)
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
