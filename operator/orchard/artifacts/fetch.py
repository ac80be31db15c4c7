"""A verified local copy of an artifact: what the server and the verifier load."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from orchard.artifacts.errors import (
    ArtifactError,
    ArtifactNotFound,
    DigestMismatch,
    VerificationError,
)
from orchard.artifacts.metadata import Metadata, verify_artifact
from orchard.artifacts.store import local_path, store_for


def fetch_artifact(uri: str, digest: str | None, workdir: Path) -> tuple[Path, Metadata]:
    """A verified local copy of the artifact at `uri`, and its metadata.

    file:// and pvc:// artifacts are verified where they are (nothing is copied);
    s3:// ones are downloaded into `workdir` first. Raises an `ArtifactError`.
    """
    if urlsplit(uri).scheme in ("", "file", "pvc"):
        directory = local_path(uri)
    else:
        directory = store_for(uri).get_dir(uri, workdir)
    return directory, verify_artifact(directory, digest)


def reason_of(exc: ArtifactError) -> str:
    if isinstance(exc, DigestMismatch):
        return "DigestMismatch"
    if isinstance(exc, ArtifactNotFound):
        return "ArtifactNotFound"
    if isinstance(exc, VerificationError):
        return "VerificationFailed"
    return "ArtifactStoreError"
