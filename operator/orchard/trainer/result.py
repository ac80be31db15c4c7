"""The trainer's one-line result: on stdout and in the pod's termination message.

The operator reads it from `status.containerStatuses[].state.terminated.message`, so it
needs no access to the artifact store. Kubernetes keeps at most 4096 bytes of a
termination message; the result is compact JSON and sheds optional parts to fit. Its
shape is `orchard.contracts.TrainerReport` (or `TrainerFailureReport`), which the
operator parses.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchard.contracts import (
    EvaluationReport,
    ReplayReport,
    ReportedError,
    TrainerFailureReport,
    TrainerReport,
)
from orchard.trainer.errors import TrainerError, TrainingError, without_data

log = logging.getLogger("orchard.trainer")

TERMINATION_LOG_ENV = "ORCHARD_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_BYTES = 4096
# Dropped in this order until the result fits.
_OPTIONAL = ("inputs", "collected", "params", "gate", "durationSeconds")


def encode(result: dict[str, Any]) -> bytes:
    return json.dumps(result, separators=(",", ":"), allow_nan=False, default=str).encode()


def fit(result: dict[str, Any], limit: int = MAX_BYTES) -> bytes:
    """The result's compact JSON, at most `limit` bytes: optional fields go first, then
    the least important metrics, then the tail of an error message."""
    result = dict(result)
    data = encode(result)
    for key in _OPTIONAL:
        if len(data) <= limit:
            return data
        result.pop(key, None)
        data = encode(result)
    if len(data) > limit and isinstance(result.get("metrics"), dict):
        metrics = dict(result["metrics"])
        while metrics and len(data) > limit:
            metrics.popitem()
            result["metrics"] = metrics
            data = encode(result)
    if len(data) > limit and isinstance(result.get("error"), dict):
        error = dict(result["error"])
        message = str(error.get("message", ""))
        excess = len(data) - limit + 3
        error["message"] = message[: max(0, len(message) - excess)] + "..."
        result["error"] = error
        data = encode(result)
    return data[:limit]


def termination_log_path(explicit: str | None = None) -> Path | None:
    """Where to write the termination message: the flag, $ORCHARD_TERMINATION_LOG, or
    /dev/termination-log when it exists (kubelet creates it; outside a pod it does not)."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(TERMINATION_LOG_ENV):
        return Path(env)
    default = Path(DEFAULT_TERMINATION_LOG)
    return default if default.exists() else None


def report(
    result: TrainerReport | TrainerFailureReport | EvaluationReport | ReplayReport,
    termination_log: str | None = None,
) -> bytes:
    """Print the result to stdout and write it to the termination message file."""
    data = fit(result.wire())
    sys.stdout.write(data.decode() + "\n")
    sys.stdout.flush()
    path = termination_log_path(termination_log)
    if path is not None:
        try:
            path.write_bytes(data)
        except OSError as exc:
            print(f"cannot write the termination message to {path}: {exc}", file=sys.stderr)
    return data


def failure(exc: TrainerError, trial: int | None = None) -> TrainerFailureReport:
    """The report of a run that failed with `exc`."""
    return TrainerFailureReport(error=ReportedError.model_validate(exc.to_dict()), trial=trial)


def run_reported(
    what: str,
    work: Callable[[], EvaluationReport | ReplayReport],
    termination_log: str | None,
) -> int:
    """Run one of the trainer image's short programs (`orchard evaluate`, `orchard
    replay`): its report, or its failure with a reason, on stdout and in the termination
    message; exit status 0 or 1. An unexpected error keeps its traceback in the log and
    its kind, without the data it may quote, in the report."""
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    try:
        result = work()
    except TrainerError as exc:
        log.error("%s: %s", exc.reason, exc.message)
        report(failure(exc), termination_log)
        return 1
    except Exception as exc:  # the message must still reach whoever runs it
        log.exception("%s failed", what)
        err = TrainingError(f"{type(exc).__name__}: {without_data(str(exc))}")
        report(failure(err), termination_log)
        return 1
    report(result, termination_log)
    return 0
