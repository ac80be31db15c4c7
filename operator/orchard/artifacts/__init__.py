"""The artifact store and its digests: where trained models live and how they are trusted.

Importable with only the base and serve dependencies (boto3 is imported on first
s3:// use). See docs/artifact-format.md for the contract.
"""

from orchard.artifacts.digest import is_digest, sha256_bytes, sha256_file
from orchard.artifacts.errors import (
    ArtifactError,
    ArtifactNotFound,
    DigestMismatch,
    OutsideLocalRoots,
    UnsupportedURI,
    VerificationError,
)
from orchard.artifacts.fetch import fetch_artifact, reason_of
from orchard.artifacts.load import load_model
from orchard.artifacts.metadata import (
    FORMAT_VERSION,
    HELDOUT_FILE,
    METADATA_FILE,
    MODEL_FILE,
    Metadata,
    metadata_bytes,
    parse_metadata,
    verify_artifact,
)
from orchard.artifacts.redact import redact_text, redact_uri
from orchard.artifacts.store import (
    LOCAL_ROOTS_ENV,
    ArtifactStore,
    LocalStore,
    S3Settings,
    S3Store,
    get_dir,
    local_path,
    local_roots,
    put_dir,
    read_bytes,
    store_for,
)

__all__ = [
    "FORMAT_VERSION",
    "HELDOUT_FILE",
    "LOCAL_ROOTS_ENV",
    "METADATA_FILE",
    "MODEL_FILE",
    "ArtifactError",
    "ArtifactNotFound",
    "ArtifactStore",
    "DigestMismatch",
    "LocalStore",
    "Metadata",
    "OutsideLocalRoots",
    "S3Settings",
    "S3Store",
    "UnsupportedURI",
    "VerificationError",
    "fetch_artifact",
    "get_dir",
    "is_digest",
    "load_model",
    "local_path",
    "local_roots",
    "metadata_bytes",
    "parse_metadata",
    "put_dir",
    "read_bytes",
    "reason_of",
    "redact_text",
    "redact_uri",
    "sha256_bytes",
    "sha256_file",
    "store_for",
    "verify_artifact",
]
