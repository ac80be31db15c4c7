"""`python -m orchard.artifacts.verify <uri> <digest>`: check an artifact against the
digest a ModelVersion recorded, in a short Job the operator runs.

Prints one JSON report and writes it to the termination message, as the trainer does:
`{"verified": true, "digest": ..., "files": {...}}` and exit 0, or
`{"error": {"reason": "DigestMismatch" | "ArtifactNotFound" | "ArtifactStoreError",
"message": ...}}` and exit 1.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchard.artifacts.errors import ArtifactError, ArtifactNotFound, VerificationError
from orchard.artifacts.metadata import Metadata, verify_artifact
from orchard.artifacts.store import get_dir, local_path

TERMINATION_LOG_ENV = "ORCHARD_TERMINATION_LOG"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"


def verify(uri: str, digest: str) -> Metadata:
    """Verify the artifact at a URI: metadata.json against `digest`, every file against
    metadata.json. Remote artifacts are fetched into a temporary directory first."""
    if urlsplit(uri).scheme in ("", "file", "pvc"):
        return verify_artifact(local_path(uri), digest)
    with tempfile.TemporaryDirectory(prefix="orchard-verify-") as tmp:
        return verify_artifact(get_dir(uri, Path(tmp)), digest)


def report(uri: str, digest: str) -> tuple[int, dict[str, Any]]:
    """The exit code and the JSON report of verifying one artifact."""
    try:
        metadata = verify(uri, digest)
    except ArtifactNotFound as exc:
        return 1, {"error": {"reason": "ArtifactNotFound", "message": str(exc)}}
    except VerificationError as exc:
        return 1, {"error": {"reason": "DigestMismatch", "message": str(exc)}}
    except ArtifactError as exc:
        return 1, {"error": {"reason": "ArtifactStoreError", "message": str(exc)}}
    return 0, {
        "verified": True,
        "uri": uri,
        "digest": digest,
        "model": metadata.model,
        "files": metadata.files,
    }


def _write_termination_log(text: str) -> None:
    path = os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG)
    try:
        with open(path, "w") as f:
            f.write(text[:4096])
    except OSError:
        pass  # not in a pod: stdout is enough


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m orchard.artifacts.verify <uri> <sha256:digest>", file=sys.stderr)
        return 2
    code, body = report(args[0], args[1])
    text = json.dumps(body, separators=(",", ":"))
    print(text)
    _write_termination_log(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
