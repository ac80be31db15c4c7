"""Reading an artifact directory: check every listed file's sha256, then unpickle.

A pickle is code, so nothing is unpickled before its bytes are proven to be the bytes
the metadata lists. The model file is read once: the bytes hashed are the bytes loaded,
so there is no window between the check and the load.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"


class ArtifactRefused(Exception):
    """The artifact is missing, malformed, or its bytes differ from its metadata."""


@dataclass(frozen=True)
class Column:
    """One raw input column of the model's schema."""

    name: str
    type: str  # number | integer | string | boolean

    @property
    def numeric(self) -> bool:
        return self.type in ("number", "integer", "boolean")


@dataclass
class VerifiedArtifact:
    """An artifact whose files match its metadata; `model_bytes` are safe to unpickle."""

    metadata: dict[str, Any]
    digest: str
    model_bytes: bytes
    columns: list[Column] = field(default_factory=list)


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def parse_columns(metadata: dict[str, Any]) -> list[Column]:
    """The input schema from metadata `inputs`; empty when the artifact has none."""
    raw = metadata.get("inputs") or []
    if not isinstance(raw, list):
        raise ArtifactRefused("metadata.json: 'inputs' must be a list")
    columns = []
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ArtifactRefused(f"metadata.json: bad input entry {item!r}")
        kind = item.get("type", "number")
        if kind not in ("number", "integer", "string", "boolean"):
            raise ArtifactRefused(
                f"metadata.json: input {item['name']!r} has unknown type {kind!r}"
            )
        columns.append(Column(item["name"], kind))
    return columns


def verify(model_dir: str | Path, expected_digest: str | None = None) -> VerifiedArtifact:
    """Check metadata.json (against `expected_digest` if given) and every file it lists.

    Raises `ArtifactRefused` with a one-line reason on any mismatch.
    """
    root = Path(model_dir)
    meta_path = root / METADATA_FILE
    try:
        meta_bytes = meta_path.read_bytes()
    except OSError as exc:
        raise ArtifactRefused(f"cannot read {meta_path}: {exc.strerror or exc}") from None
    digest = _sha256(meta_bytes)
    if expected_digest and expected_digest != digest:
        raise ArtifactRefused(
            f"{meta_path} has digest {digest}, expected {expected_digest}: refusing to load"
        )
    try:
        metadata = json.loads(meta_bytes)
    except ValueError as exc:
        raise ArtifactRefused(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(metadata, dict):
        raise ArtifactRefused(f"{meta_path} is not a JSON object")
    files = metadata.get("files")
    if not isinstance(files, dict) or MODEL_FILE not in files:
        raise ArtifactRefused(f"{meta_path} lists no sha256 for {MODEL_FILE}: refusing to load")
    model_bytes = b""
    for name, listed in files.items():
        path = root / name
        if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
            raise ArtifactRefused(f"{meta_path} lists a file outside the artifact: {name!r}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ArtifactRefused(f"cannot read {path}: {exc.strerror or exc}") from None
        actual = _sha256(data)
        if actual != listed:
            raise ArtifactRefused(
                f"{path} has sha256 {actual} but metadata.json lists {listed}: refusing to load"
            )
        if name == MODEL_FILE:
            model_bytes = data
    return VerifiedArtifact(metadata, digest, model_bytes, parse_columns(metadata))


def unpickle(artifact: VerifiedArtifact) -> Any:
    """Load the verified model bytes (imports joblib and, through the pickle, scikit-learn)."""
    import joblib

    model = joblib.load(io.BytesIO(artifact.model_bytes))
    artifact.model_bytes = b""  # the bytes are no longer needed; let them go
    return model
