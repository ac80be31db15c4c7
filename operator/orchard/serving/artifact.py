"""Reading an artifact directory through `orchard.artifacts`, the one place that trusts bytes.

Before the server opens its port, `verify` checks metadata.json (against the
ModelVersion's digest when one is given) and the sha256 of every file it lists. The
model is then unpickled by `orchard.artifacts.load_model`, which reads model.joblib
once, checks those very bytes against the same metadata digest, and loads them from
memory: no file can change between the check and the load (a pickle is code).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchard.artifacts import (
    METADATA_FILE,
    ArtifactError,
    Metadata,
    load_model,
    sha256_bytes,
    verify_artifact,
)


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


@dataclass(frozen=True)
class VerifiedArtifact:
    """An artifact whose files matched its metadata, pinned by the metadata's digest."""

    directory: Path
    metadata: Metadata
    digest: str
    columns: list[Column]


def verify(model_dir: str | Path, expected_digest: str | None = None) -> VerifiedArtifact:
    """Check the artifact; raise `ArtifactRefused` with a one-line reason if it fails."""
    root = Path(model_dir)
    try:
        raw = (root / METADATA_FILE).read_bytes()
    except OSError as exc:
        raise ArtifactRefused(
            f"cannot read {root / METADATA_FILE}: {exc.strerror or exc}"
        ) from None
    digest = sha256_bytes(raw)
    if expected_digest and expected_digest != digest:
        raise ArtifactRefused(
            f"{METADATA_FILE} has digest {digest}, but the recorded digest is {expected_digest}"
        )
    try:
        # Pinned to the digest just read, so the metadata verified is the metadata hashed.
        metadata = verify_artifact(root, digest)
    except ArtifactError as exc:
        raise ArtifactRefused(_one_line(exc)) from None
    columns = [Column(c.name, c.type) for c in metadata.inputs]
    return VerifiedArtifact(root, metadata, digest, columns)


def unpickle(artifact: VerifiedArtifact) -> Any:
    """The fitted model, from bytes checked against the verified metadata's digest."""
    try:
        model, _ = load_model(artifact.directory, artifact.digest)
    except ArtifactError as exc:
        raise ArtifactRefused(_one_line(exc)) from None
    return model


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split())
