"""A closed-loop gRPC load client for the Open Inference Protocol's ModelInfer.

N workers, one call in flight each, over grpc.aio. The request is serialized once
(tritonclient's messages, the protocol's own `inference.GRPCInferenceService`) and sent as
bytes, and the answers are not parsed, so the client spends its time in gRPC itself. It
shares the machine's cores with the server, so its own cost (tens of microseconds a call,
more than the HTTP client's) is part of every figure. Prints one JSON line, as
bench/loadgen.py does: requests, errors, seconds, requests/s, p50 and p99 in ms.

    python bench/grpc_loadgen.py --target 127.0.0.1:8081 --model m --rows-file x.npy \
        --concurrency 16 --duration 10 --warmup 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import service_pb2

METHOD = "/inference.GRPCInferenceService/ModelInfer"
CHANNELS = 4  # HTTP/2 connections the workers share (as a client pool would)


def infer_request(model: str, rows: np.ndarray[Any, Any]) -> bytes:
    """A ModelInferRequest of FP64 rows as `input-0`, as KServe's and MLServer's clients
    send one (typed contents, not raw bytes)."""
    tensor = service_pb2.ModelInferRequest().InferInputTensor(
        name="input-0", datatype="FP64", shape=list(rows.shape)
    )
    tensor.contents.fp64_contents.extend(rows.astype(np.float64).ravel().tolist())
    request = service_pb2.ModelInferRequest(model_name=model, inputs=[tensor])
    return bytes(request.SerializeToString())


async def load(
    target: str, request: bytes, concurrency: int, duration: float, warmup: float
) -> dict[str, object]:
    channels = [grpc.aio.insecure_channel(target) for _ in range(min(CHANNELS, concurrency))]
    calls = [ch.unary_unary(METHOD) for ch in channels]  # bytes in, bytes out
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    state = {"measuring": False, "running": True, "total": 0, "errors": 0}

    async def worker(call: Any) -> None:
        while state["running"]:
            start = time.perf_counter()
            try:
                await call(request, timeout=30)
                code = "OK"
            except grpc.aio.AioRpcError as err:
                code = err.code().name
            state["total"] += 1
            if state["measuring"]:
                statuses[code] = statuses.get(code, 0) + 1
                if code == "OK":
                    latencies.append(time.perf_counter() - start)
                else:
                    state["errors"] += 1

    tasks = [asyncio.create_task(worker(calls[i % len(calls)])) for i in range(concurrency)]
    await asyncio.sleep(warmup)
    state["measuring"] = True
    t0 = time.perf_counter()
    await asyncio.sleep(duration)
    state["measuring"] = False
    elapsed = time.perf_counter() - t0
    state["running"] = False
    await asyncio.gather(*tasks)
    for ch in channels:
        await ch.close()
    lat = sorted(latencies)
    n = len(lat)

    def pct(q: float) -> float:
        return lat[min(n - 1, int(q * n))] * 1000 if n else float("nan")

    return {
        "requests": n, "all_requests": state["total"], "errors": state["errors"],
        "statuses": statuses, "seconds": elapsed, "rps": n / elapsed,
        "p50_ms": pct(0.50), "p99_ms": pct(0.99),
    }  # fmt: skip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="host:port of the gRPC server")
    p.add_argument("--model", required=True)
    p.add_argument("--rows-file", required=True, help="a .npy array of the rows to send")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    a = p.parse_args()
    request = infer_request(a.model, np.load(a.rows_file))
    result = asyncio.run(load(a.target, request, a.concurrency, a.duration, a.warmup))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
