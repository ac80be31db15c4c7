"""`orchard replay`: an artifact's rows sent to serving pods as replayed requests.

    orchard replay --artifact pvc://orchard-artifacts/iris/run-2/ --digest sha256:... \\
        --model iris --target http://10.0.0.5:8080 --target http://10.0.0.6:8080 \\
        --collected pvc://orchard-artifacts/collected/ml/iris/ --since 2026-12-01T00:00:00Z

When a canary step sees too few requests, the operator runs this against both tracks'
pods so that the step can conclude. The rows are the artifact's held-out rows
(heldout.parquet, verified as `orchard evaluate` verifies them) and, with --collected,
the labelled production rows answered at or after --since; the first --max-rows of them,
always the same ones. Each row goes to every target as one V2 inference request
(`POST {target}/v2/models/{model}/infer`, one named tensor per input column) with the
`Orchard-Replay: 1` header, so the pods count it as a request but never in their
production monitoring, feedback or collection (docs/collection.md).

The result is one JSON line on stdout and in the termination message
(`orchard.contracts.ReplayReport`): the rows, and per target how many requests were
sent, answered 2xx, and not. Answers that are errors do not fail the run (the canary
analysis judges them from the pods' metrics); nothing to send, or an artifact that does
not verify, is `{"error": {...}}` with exit 1.

Only the standard library speaks HTTP here (urllib, a timeout per request, threads for
concurrency): the trainer image has no HTTP client of its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import tempfile
import threading
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pandas as pd

from orchard.contracts import REPLAY_HEADER, ReplayReport
from orchard.trainer.errors import (
    InvalidSpec,
    NoReplayRows,
)
from orchard.trainer.evaluation import Scored, load_scored, moment, target_like
from orchard.trainer.result import run_reported

log = logging.getLogger("orchard.trainer")

DEFAULT_MAX_ROWS = 500
DEFAULT_CONCURRENCY = 4
DEFAULT_TIMEOUT = 10.0  # seconds, per request
# The V2 datatype of each input type of the artifact's schema.
DATATYPES = {"number": "FP64", "integer": "INT64", "boolean": "BOOL", "string": "BYTES"}
_LOGGED_ERRORS = 5  # per target
# Straight to the pods: no proxy from the environment, whatever it says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"not a positive integer: {text!r}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--artifact", required=True, help="URI of the artifact whose rows to send")
    parser.add_argument("--digest", required=True, help="sha256:<hex> of its metadata.json")
    parser.add_argument("--model", required=True, help="the model name the targets serve")
    parser.add_argument(
        "--target",
        required=True,
        action="append",
        help="base URL of a serving pod (http://host:port); repeat for each pod",
    )
    parser.add_argument(
        "--collected",
        default=None,
        help="a deployment's collection directory (pvc:// or file://): its labelled rows, "
        "of every version, are sent too",
    )
    parser.add_argument(
        "--since",
        default=None,
        type=moment,
        help="only collected rows answered at or after this time (RFC 3339)",
    )
    parser.add_argument(
        "--max-rows",
        default=DEFAULT_MAX_ROWS,
        type=_positive,
        help=f"send at most this many rows, the first ones (default {DEFAULT_MAX_ROWS})",
    )
    parser.add_argument(
        "--concurrency",
        default=DEFAULT_CONCURRENCY,
        type=_positive,
        help=f"requests in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument(
        "--timeout",
        default=DEFAULT_TIMEOUT,
        type=_seconds,
        help=f"seconds to wait for each answer (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--termination-log",
        default=None,
        help="file for the result (default: $ORCHARD_TERMINATION_LOG, else /dev/termination-log "
        "when it exists)",
    )


# --- the rows ---------------------------------------------------------------------------


def replay_rows(
    scored: Scored, collected_uri: str | None, since: datetime | None, max_rows: int
) -> tuple[pd.DataFrame, int, int]:
    """The first `max_rows` rows to send (the model's input columns only), and how many
    of them are held-out rows and how many collected ones."""
    from orchard.trainer.collected import read_collected, training_rows

    columns = [c.name for c in scored.metadata.inputs]
    if not columns:
        raise InvalidSpec("the artifact's metadata.json lists no inputs", parameter="artifact")
    parts: list[pd.DataFrame] = []
    heldout_rows = 0
    if scored.heldout is not None:
        missing = [c for c in columns if c not in scored.heldout.columns]
        if missing:
            raise InvalidSpec(
                f"the artifact's held-out rows have no column {missing[0]!r}, an input "
                "of its model",
                parameter="artifact",
            )
        rows = scored.heldout[columns].head(max_rows)
        heldout_rows = len(rows)
        if heldout_rows:
            parts.append(rows)
    production_rows = 0
    if collected_uri is not None and heldout_rows < max_rows:
        collected = read_collected(collected_uri, since=since, parameter="--collected")
        target = target_like(scored)
        rows = training_rows(collected, columns, target).dropna(subset=[str(target.name)])
        rows = rows[columns].head(max_rows - heldout_rows)
        production_rows = len(rows)
        log.info("collected %s: %d labelled rows taken", collected.uri, production_rows)
        if production_rows:
            parts.append(rows)
    if not parts:
        where = "no held-out rows (heldout.parquet)"
        where += " and no labelled collected rows" if collected_uri else "; pass --collected"
        raise NoReplayRows(f"nothing to replay: the artifact has {where}")
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return frame.reset_index(drop=True), heldout_rows, production_rows


def _value(value: Any, kind: str) -> Any:
    """One cell as JSON for its column's type; null for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return None
    if kind == "string":
        return str(value)
    if kind == "boolean":
        return bool(value)
    number = float(value)
    if math.isnan(number):
        return None
    return int(number) if kind == "integer" and number.is_integer() else number


def request_bodies(rows: pd.DataFrame, inputs: Sequence[Any]) -> list[bytes]:
    """One V2 inference request per row: one named tensor of shape [1] per input column,
    in the datatype of its type (what `orchard.serving.inputs` reads for a schema)."""
    columns = [(c.name, c.type, DATATYPES.get(c.type, "FP64")) for c in inputs]
    # An integer column with a value that is not whole goes as FP64 (the server takes
    # any number for a numeric column).
    whole = {
        name: all(
            v is None or isinstance(v, int)
            for v in (_value(x, "integer") for x in rows[name].tolist())
        )
        for name, kind, _ in columns
        if kind == "integer"
    }
    values = {name: rows[name].tolist() for name, _, _ in columns}
    bodies = []
    for i in range(len(rows)):
        tensors = []
        for name, kind, datatype in columns:
            if kind == "integer" and not whole[name]:
                kind, datatype = "number", "FP64"
            tensors.append(
                {
                    "name": name,
                    "shape": [1],
                    "datatype": datatype,
                    "data": [_value(values[name][i], kind)],
                }
            )
        body = {"inputs": tensors}
        bodies.append(json.dumps(body, separators=(",", ":"), allow_nan=False).encode())
    return bodies


# --- sending ----------------------------------------------------------------------------


def _base(target: str) -> str:
    parts = urlsplit(target)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidSpec(f"--target {target!r} is not an http:// URL", parameter="target")
    if parts.query or parts.fragment:
        raise InvalidSpec(
            f"--target {target!r} is a base URL: no query or fragment", parameter="target"
        )
    return target.rstrip("/")


class _Tally:
    """One target's counts, updated by the sending threads."""

    def __init__(self) -> None:
        self.sent = self.ok = self.errors = 0
        self.lock = threading.Lock()

    def count(self, ok: bool) -> int:
        with self.lock:
            self.sent += 1
            if ok:
                self.ok += 1
            else:
                self.errors += 1
            return self.errors

    def wire(self) -> dict[str, int]:
        return {"sent": self.sent, "ok": self.ok, "errors": self.errors}


def _post(url: str, body: bytes, timeout: float) -> str | None:
    """None when answered 2xx, else why not (a status, or the kind of failure)."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", REPLAY_HEADER.title(): "1"},
    )
    try:
        with _OPENER.open(request, timeout=timeout) as answer:
            answer.read()
            status = int(answer.status)
    except urllib.error.HTTPError as exc:
        exc.close()
        return f"status {exc.code}"
    except (OSError, ValueError) as exc:  # refused, reset, timed out, a bad answer
        return type(exc).__name__
    return None if 200 <= status < 300 else f"status {status}"


def send(
    bodies: Sequence[bytes],
    targets: Sequence[str],
    model: str,
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = DEFAULT_TIMEOUT,
) -> dict[str, dict[str, int]]:
    """Every body to every target, at most `concurrency` requests in flight; the counts
    per target."""
    path = f"/v2/models/{quote(model, safe='')}/infer"
    tallies = {target: _Tally() for target in targets}

    def one(target: str, body: bytes) -> None:
        why = _post(target + path, body, timeout)
        errors = tallies[target].count(why is None)
        if why is not None and errors <= _LOGGED_ERRORS:
            log.warning("replay to %s: %s", target, why)

    with ThreadPoolExecutor(concurrency, thread_name_prefix="orchard-replay") as pool:
        # Row by row, each to every target: the tracks see the rows in the same order.
        futures = [pool.submit(one, t, b) for b in bodies for t in targets]
        for future in futures:
            future.result()
    return {target: tally.wire() for target, tally in tallies.items()}


def replay(
    artifact_uri: str,
    digest: str,
    model: str,
    targets: Sequence[str],
    *,
    collected: str | None = None,
    since: datetime | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout: float = DEFAULT_TIMEOUT,
) -> ReplayReport:
    """Send the artifact's rows to every target; raises a `TrainerError` when there is
    nothing to send or the artifact does not verify (not when answers are errors)."""
    bases = list(dict.fromkeys(_base(t) for t in targets))
    if not bases:
        raise InvalidSpec("no --target to send to", parameter="target")
    with tempfile.TemporaryDirectory(prefix="orchard-replay-") as tmp:
        scored = load_scored(artifact_uri, digest, "artifact", Path(tmp) / "artifact")
    rows, heldout_rows, production_rows = replay_rows(scored, collected, since, max_rows)
    bodies = request_bodies(rows, scored.metadata.inputs)
    log.info("replaying %d rows to %d targets", len(bodies), len(bases))
    counts = send(bodies, bases, model, concurrency=concurrency, timeout=timeout)
    for target, c in counts.items():
        log.info("%s: %d sent, %d ok, %d errors", target, c["sent"], c["ok"], c["errors"])
    return ReplayReport(
        rows=len(bodies),
        heldout_rows=heldout_rows,
        production_rows=production_rows,
        targets=counts,
    )


def run(args: argparse.Namespace) -> int:
    return run_reported(
        "replay",
        lambda: replay(
            args.artifact,
            args.digest,
            args.model,
            args.target,
            collected=args.collected,
            since=args.since,
            max_rows=args.max_rows,
            concurrency=args.concurrency,
            timeout=args.timeout,
        ),
        args.termination_log,
    )
