"""The errors of the artifact store, in one place.

Every error is an `ArtifactError`, so a caller that only wants "the artifact could
not be had" catches one type; the subclasses say why.
"""

from __future__ import annotations


class ArtifactError(Exception):
    """An artifact could not be stored, fetched or trusted."""


class UnsupportedURI(ArtifactError):
    """The URI's scheme is not one the store knows (file://, pvc://, s3://)."""


class ArtifactNotFound(ArtifactError):
    """Nothing exists at the URI."""


class VerificationError(ArtifactError):
    """The artifact's bytes do not match what its metadata (or a recorded digest) says."""


class DigestMismatch(VerificationError):
    """A file's sha256, or metadata.json's, differs from the one recorded."""
