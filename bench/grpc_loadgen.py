"""A closed-loop gRPC load client for the Open Inference Protocol's ModelInfer.

The request is a ModelInferRequest serialized here, once (tritonclient's messages, the
protocol's own `inference.GRPCInferenceService`: typed FP64 contents, as KServe's and
MLServer's clients send them); the calls are made by bench/grpcload, a small Go client
(grpc-go, the bytes sent as they are and the answers not decoded). A Python client
(grpc.aio) cost tens of microseconds a call on the cores it shares with the server and
set the rate itself; the Go one costs a few, so the server does. The binary is built on
first use into $ORCHARD_CACHE/bin/grpcload-<hash of its sources>/, so an edit rebuilds
it. Prints one JSON line, as bench/loadgen.py does: requests, errors, seconds,
requests/s, p50 and p99 in ms.

    python bench/grpc_loadgen.py --target 127.0.0.1:8081 --model m --rows-file x.npy \
        --concurrency 16 --duration 10 --warmup 2
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from tritonclient.grpc import service_pb2

SOURCE = Path(__file__).resolve().parent / "grpcload"
CACHE = Path(os.environ.get("ORCHARD_CACHE", Path.home() / ".cache" / "orchard"))


def infer_request(model: str, rows: np.ndarray[Any, Any]) -> bytes:
    """A ModelInferRequest of FP64 rows as `input-0`, as KServe's and MLServer's clients
    send one (typed contents, not raw bytes)."""
    tensor = service_pb2.ModelInferRequest().InferInputTensor(
        name="input-0", datatype="FP64", shape=list(rows.shape)
    )
    tensor.contents.fp64_contents.extend(rows.astype(np.float64).ravel().tolist())
    request = service_pb2.ModelInferRequest(model_name=model, inputs=[tensor])
    return bytes(request.SerializeToString())


def client_binary() -> Path:
    """The Go client, built once per version of its sources (go.mod, go.sum, main.go)."""
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update((SOURCE / name).read_bytes())
    binary = CACHE / "bin" / f"grpcload-{digest.hexdigest()[:12]}" / "grpcload"
    if binary.exists():
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "CGO_ENABLED": "0", "GOFLAGS": "-mod=readonly", "GOTOOLCHAIN": "local"}
    with tempfile.TemporaryDirectory(dir=binary.parent) as work:
        built = Path(work) / "grpcload"
        subprocess.run(["go", "build", "-trimpath", "-o", str(built), "."],
                       cwd=SOURCE, env=env, check=True)  # fmt: skip
        built.rename(binary)  # whole or not at all
    return binary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", required=True, help="host:port of the gRPC server")
    p.add_argument("--model", required=True)
    p.add_argument("--rows-file", required=True, help="a .npy array of the rows to send")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    a = p.parse_args()
    binary = client_binary()
    with tempfile.NamedTemporaryFile(suffix=".pb") as request:
        request.write(infer_request(a.model, np.load(a.rows_file)))
        request.flush()
        return subprocess.run([
            str(binary), "-target", a.target, "-request-file", request.name,
            "-concurrency", str(a.concurrency), "-duration", str(a.duration),
            "-warmup", str(a.warmup),
        ]).returncode  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
