"""The trainer's one-line result: on stdout and in the pod's termination message.

The operator reads it from `status.containerStatuses[].state.terminated.message`, so it
needs no access to the artifact store. Kubernetes keeps at most 4096 bytes of a
termination message; the result is compact JSON and sheds optional parts to fit. Its
shape is `orchard.contracts.TrainerReport` (or `TrainerFailureReport`), which the
operator parses.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from orchard.contracts import (
    EvaluationReport,
    ReplayReport,
    TrainerFailureReport,
    TrainerReport,
)

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
