"""Ten minutes of 1-row V2 traffic (8 connections) against `orchard serve` on iris with
every request collected: the server's RSS each minute, against its idle RSS.

    .venv/bin/python bench/serving_soak.py [--minutes N]

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


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=int, default=10)
    minutes = p.parse_args().minutes
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
    try:
        for minute in range(1, minutes + 1):
            stats = asyncio.run(loadgen.load(url, body, 8, 60.0, warmup=0.0))
            rss = sv.rss_mb(sv.tree_pids(server.proc.pid))
            line = {"minute": minute, "rss_mb": round(rss, 1), "requests": stats["requests"],
                    "errors": stats["errors"]}  # fmt: skip
            print(json.dumps(line), flush=True)
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
