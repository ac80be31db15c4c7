"""`orchard serve`: verify an artifact, then serve it over the Open Inference Protocol.

The digests are checked before anything is unpickled; a mismatch prints one line and
exits with status 2 without opening a port. The model then loads on a thread while
the server already answers liveness (and 503 on model routes until it is ready).

REST listens on `--port` (8080), the Open Inference Protocol's gRPC service
(`grpc_service`) on `--grpc-port` (8081, KServe's; 0 for none), both on one uvloop event
loop, stopped together: on SIGTERM uvicorn stops taking connections and answers those
under way, then gRPC answers its calls under way, then the batcher stops. A port that
cannot be had, REST's or gRPC's, stops the server at startup with uvicorn's status 3
(the one of a model that fails to load) and the reason logged.

The flags of `limits.Limits` (rows, body and header sizes, timeouts, connections) come
from its fields, each with an environment default: `orchard serve --help` lists them.

With glibc, blocks over 128 KiB are always mapped on their own and unmapped when freed
(`return_large_blocks`): by default glibc raises that threshold after each large free,
up to 32 MiB, and later bodies then come from arenas that stay resident. Measured: 50
distinct 600 KB strings left the server 44 MB larger for good; with it, 20 MB.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from orchard.contracts import SERVE_EXIT_REFUSED, SERVE_REFUSED_PREFIX
from orchard.serving.limits import LIMIT_FIELDS, Limits, fit_fd_limit

if TYPE_CHECKING:
    import uvicorn

    from orchard.serving.app import App
    from orchard.serving.runtime import Mode

EXIT_REFUSED = SERVE_EXIT_REFUSED
EXIT_LOAD_FAILED = 3
GRPC_PORT = 8081  # grpc_service.DEFAULT_PORT, here without importing grpc
MMAP_THRESHOLD_BYTES = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's malloc.h


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    add = parser.add_argument
    add(
        "--model-dir",
        default=env("ORCHARD_MODEL_DIR"),
        required=not env("ORCHARD_MODEL_DIR"),
        help="artifact directory with model.joblib and metadata.json [ORCHARD_MODEL_DIR]",
    )
    add(
        "--model-name",
        default=env("ORCHARD_MODEL_NAME"),
        required=not env("ORCHARD_MODEL_NAME"),
        help="the name in /v2/models/{name} [ORCHARD_MODEL_NAME]",
    )
    add(
        "--model-version",
        default=env("ORCHARD_MODEL_VERSION"),
        help="version reported in V2 metadata and responses [ORCHARD_MODEL_VERSION]",
    )
    add(
        "--expected-digest",
        default=env("ORCHARD_MODEL_DIGEST"),
        help="insist metadata.json has this sha256:<hex> digest [ORCHARD_MODEL_DIGEST]",
    )
    add("--host", default="0.0.0.0")
    add("--port", type=int, default=int(env("ORCHARD_PORT", "8080")))
    add(
        "--grpc-port",
        type=int,
        default=int(env("ORCHARD_GRPC_PORT", str(GRPC_PORT))),
        help=f"port of the Open Inference Protocol's gRPC service (default {GRPC_PORT}, "
        "KServe's); 0: none [ORCHARD_GRPC_PORT]",
    )
    add("--max-batch-size", type=int, default=32, help="most requests in one predict call")
    add("--max-batch-rows", type=int, default=2048, help="most rows in one predict call")
    add("--max-batch-wait-ms", type=float, default=2.0, help="longest wait to fill a batch")
    for limit in LIMIT_FIELDS:
        flag, var = limit.metadata["flag"], limit.metadata["env"]
        kind = int if isinstance(limit.default, int) else float
        # A string default goes through `type` as a command-line value would, env included.
        add(flag, type=_positive(kind), default=env(var, str(limit.default)),
            help=f"{limit.metadata['help']} (default {limit.default}) [{var}]")  # fmt: skip
    add(
        "--peers",
        default=env("ORCHARD_PEERS"),
        help="DNS name of the deployment's other pods, asked about feedback this pod "
        "cannot match [ORCHARD_PEERS]",
    )
    add("--pod-ip", default=env("POD_IP"), help="this pod's address, left out of --peers [POD_IP]")
    add(
        "--collect-to",
        default=env("ORCHARD_COLLECT_TO"),
        help="write a sample of requests and the feedback labels as Parquet segments into "
        "this directory or s3:// prefix (docs/collection.md) [ORCHARD_COLLECT_TO]",
    )
    add(
        "--collect-sample-rate",
        type=float,
        default=float(env("ORCHARD_COLLECT_SAMPLE_RATE", "1.0")),
        help="share of requests collected, 0..1 [ORCHARD_COLLECT_SAMPLE_RATE]",
    )
    add("--collect-flush-seconds", type=_positive(float), default=30.0,
        help="longest a collected row waits in memory")  # fmt: skip
    add("--collect-segment-rows", type=_positive(int), default=10_000,
        help="most rows in one segment")  # fmt: skip
    add(
        "--runtime",
        default=env("ORCHARD_RUNTIME", "auto"),
        choices=["auto", "onnx", "sklearn"],
        help="what answers: auto, the pipeline's ONNX graph when it answers the held-out "
        "rows as the pipeline does (serving/runtime.py); onnx, that graph or no model; "
        "sklearn, the pipeline [ORCHARD_RUNTIME]",
    )
    add("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    parse.__name__ = f"positive {kind.__name__}"  # argparse names it in its errors
    return parse


def limits_from(args: argparse.Namespace) -> Limits:
    """The limits the flags (or their environment defaults) set."""
    return Limits(**{limit.name: getattr(args, limit.name) for limit in LIMIT_FIELDS})


def server_config(app: App, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    """uvicorn serving `app` on uvloop through the guarded httptools protocol."""
    import uvicorn

    from orchard.serving.protocol import protocol_class

    return uvicorn.Config(
        app, host=host, port=port, loop="uvloop", lifespan="on",
        http=protocol_class(app.limits, app.metrics),
        timeout_keep_alive=app.limits.keep_alive_timeout,  # type: ignore[arg-type]
        access_log=False, server_header=False, log_level=log_level,
    )  # fmt: skip


def return_large_blocks() -> bool:
    """Fix glibc's mmap threshold at MMAP_THRESHOLD_BYTES; False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    except (OSError, AttributeError):  # another C library: its own policy applies
        return False


def build_runner(artifact: Any, runtime: str = "auto", isolate: bool = False) -> Any:
    """A ModelRunner for a verified artifact, answering through the runtime `runtime`
    selects (`serving.runtime`; runs on a thread). `isolate` selects it in a child process
    (`serving.isolated`, what `orchard serve` does): when the ONNX graph then answers every
    row alone, the model is never unpickled here."""
    from orchard.artifacts.metadata import prediction_drift_bins
    from orchard.serving.artifact import unpickle
    from orchard.serving.model import ModelRunner
    from orchard.serving.runtime import SKLEARN, OnnxModel, heldout_frame

    meta = artifact.metadata
    mode = cast("Mode", runtime)
    choice = None
    if isolate and mode != SKLEARN:
        from orchard.serving.isolated import choose

        choice = choose(artifact, mode)
    alone = choice is not None and choice.graph_alone
    runner = ModelRunner(
        None if alone else unpickle(artifact), artifact.columns, meta.task, meta.feature_stats,
        prediction_drift_bins(meta.prediction_stats),
        meta.calibration.bins() if meta.calibration else None,
        facts=choice.facts if alone and choice is not None else None,
    )  # fmt: skip
    if choice is None:
        runner.use_runtime(mode, heldout_frame(artifact) if mode != SKLEARN else None)
        return runner
    native = None
    if choice.graph is not None:
        native = OnnxModel(
            choice.graph, artifact.columns, runner.needs_frame,
            runner.classes if runner.classification else None,
        )  # fmt: skip
        native.refuse_missing(artifact.columns, choice.no_missing)
        native.pipeline_missing = choice.pipeline_missing
    runner.adopt(choice.runtime, native)
    return runner


def run(args: argparse.Namespace) -> int:
    from orchard.serving.artifact import ArtifactRefused, verify

    try:
        artifact = verify(args.model_dir, args.expected_digest)
    except ArtifactRefused as exc:
        print(f"{SERVE_REFUSED_PREFIX}{exc}", file=sys.stderr)
        return EXIT_REFUSED

    import uvicorn

    from orchard.serving.app import App
    from orchard.serving.collection import Collector
    from orchard.serving.peers import Peers

    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    return_large_blocks()
    meta = artifact.metadata
    info = {
        "digest": artifact.digest,
        "framework": f"{meta.framework.name} {meta.framework.version}",
        "estimator": meta.estimator.name,
    }
    server: uvicorn.Server | None = None
    collector = None
    if args.collect_to:
        collector = Collector(
            args.collect_to, os.environ.get("POD_NAME") or socket.gethostname(),
            args.model_version, [(c.name, c.numeric) for c in artifact.columns],
            regression=meta.task == "regression", sample_rate=args.collect_sample_rate,
            flush_interval=args.collect_flush_seconds, max_segment_rows=args.collect_segment_rows,
        )  # fmt: skip

    def load_failed(_: BaseException) -> None:
        if server is not None:
            server.should_exit = True

    app = App(
        args.model_name,
        lambda: build_runner(artifact, args.runtime, isolate=True),
        version=args.model_version,
        max_batch_size=args.max_batch_size,
        max_batch_wait=args.max_batch_wait_ms / 1000.0,
        max_batch_rows=args.max_batch_rows,
        info=info,
        on_load_failed=load_failed,
        limits=fit_fd_limit(limits_from(args)),
        peers=Peers(args.peers, args.port, args.pod_ip) if args.peers else None,
        collector=collector,
    )
    if args.grpc_port:
        from orchard.serving.grpc_service import GRPCServer

        app.servers = (GRPCServer(app, args.host, args.grpc_port),)
    server = uvicorn.Server(server_config(app, args.host, args.port, args.log_level))
    server.run()
    return EXIT_LOAD_FAILED if app.load_error is not None else 0
