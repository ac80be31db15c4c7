"""Unpickle a model only from the exact bytes that were verified.

`verify_artifact` followed by `joblib.load(path)` reads model.joblib twice, and the file
could change in between (a pickle is code). `load_model` reads each file once, checks
those bytes, and unpickles them from memory.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from orchard.artifacts.digest import sha256_bytes
from orchard.artifacts.errors import ArtifactNotFound, DigestMismatch, VerificationError
from orchard.artifacts.metadata import (
    FORMAT_VERSION,
    METADATA_FILE,
    MODEL_FILE,
    Metadata,
    parse_metadata,
)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise ArtifactNotFound(f"{path} does not exist") from exc


def load_model(directory: str | Path, digest: str | None = None) -> tuple[Any, Metadata]:
    """The fitted pipeline of a local artifact and its metadata, after checking
    metadata.json against `digest` (when given) and model.joblib against metadata.json.
    Needs joblib (the train and serve extras)."""
    import joblib

    root = Path(directory)
    raw = _read(root / METADATA_FILE)
    if digest is not None and sha256_bytes(raw) != digest:
        raise DigestMismatch(
            f"{METADATA_FILE} has digest {sha256_bytes(raw)}, but the recorded digest is {digest}"
        )
    metadata = parse_metadata(raw)
    if metadata.format_version != FORMAT_VERSION:
        raise VerificationError(f"unsupported formatVersion {metadata.format_version}")
    expected = metadata.files.get(MODEL_FILE)
    if expected is None:
        raise VerificationError(f"{METADATA_FILE} lists no digest for {MODEL_FILE}")
    model_bytes = _read(root / MODEL_FILE)
    if sha256_bytes(model_bytes) != expected:
        raise DigestMismatch(
            f"{MODEL_FILE} has digest {sha256_bytes(model_bytes)}, but {METADATA_FILE} lists "
            f"{expected}; refusing to unpickle it"
        )
    return joblib.load(io.BytesIO(model_bytes)), metadata
