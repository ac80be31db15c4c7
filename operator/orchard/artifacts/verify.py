"""Fetch an artifact and check it against a recorded digest.

    python -m orchard.artifacts.verify <artifact URI> <sha256:digest>

This is what a ModelVersion's verification Job runs: it prints, and writes to the
termination message, ``{"verified": true, ...}`` and exits 0, or
``{"error": {"reason", "message"}}`` and exits 1. Reasons: ``DigestMismatch``,
``ArtifactNotFound``, ``VerificationFailed`` (unreadable metadata), ``ArtifactStoreError``.
The model server uses `fetch_artifact` the same way before it unpickles anything.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from orchard.artifacts.errors import ArtifactError
from orchard.artifacts.fetch import fetch_artifact, reason_of
from orchard.artifacts.redact import redact_uri

TERMINATION_LOG_ENV = "ORCHARD_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_MESSAGE_BYTES = 4096


def _report(result: dict[str, Any]) -> None:
    data = json.dumps(result, separators=(",", ":")).encode()[:MAX_MESSAGE_BYTES]
    sys.stdout.write(data.decode(errors="ignore") + "\n")
    path = os.environ.get(TERMINATION_LOG_ENV) or (
        DEFAULT_TERMINATION_LOG if Path(DEFAULT_TERMINATION_LOG).exists() else None
    )
    if path:
        try:
            Path(path).write_bytes(data)
        except OSError as exc:
            print(f"cannot write the termination message to {path}: {exc}", file=sys.stderr)


Inspect = Callable[[Path, str], Mapping[str, Any]]


def main(
    argv: Sequence[str] | None = None,
    inspect: Inspect | None = None,
    prog: str = "python -m orchard.artifacts.verify",
) -> int:
    """Verify; then `inspect(directory, digest)`, given the verified copy, adds its own
    fields to the report (`orchard.serving.verify`: the runtime that would serve)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print(f"usage: {prog} <artifact URI> <sha256:digest>", file=sys.stderr)
        return 2
    uri, digest = args
    with tempfile.TemporaryDirectory(prefix="orchard-verify-") as tmp:
        try:
            directory, metadata = fetch_artifact(uri, digest, Path(tmp))
        except ArtifactError as exc:
            message = str(exc)[:2000]
            _report({"error": {"reason": reason_of(exc), "message": message}})
            return 1
        found = dict(inspect(directory, digest)) if inspect is not None else {}
    _report(
        {
            "verified": True,
            "uri": redact_uri(uri),
            "digest": digest,
            "model": metadata.model,
            "files": metadata.files,
            **found,
        }
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
