"""The errors of the artifact store, in one place.

Every error is an `ArtifactError`, so a caller that only wants "the artifact could
not be had" catches one type; the subclasses say why.
"""

from __future__ import annotations

from collections.abc import Sequence


class ArtifactError(Exception):
    """An artifact could not be stored, fetched or trusted."""


class UnsupportedURI(ArtifactError):
    """The URI's scheme is not one the store knows (file://, pvc://, s3://)."""


class OutsideLocalRoots(UnsupportedURI):
    """A local path (file://, pvc://, a plain path) outside the directories this process
    may use: in the cluster, the mounted volumes ($ORCHARD_LOCAL_ROOTS). The message names
    the URI and the rule, never what the path holds.

    `place` is the first half of the message ("<uri> is outside the mounted volumes
    (<roots>)"), for a caller that states the rule in its own words.
    """

    def __init__(self, uri: str, roots: Sequence[str], *, through_link: bool = False) -> None:
        link = " (through a symbolic link)" if through_link else ""
        self.uri = uri
        self.roots = tuple(roots)
        self.place = f"{uri}{link} is outside the mounted volumes ({', '.join(roots) or 'none'})"
        super().__init__(f"{self.place}; in the cluster, local paths are pvc://<claim>/<path>")


class ArtifactNotFound(ArtifactError):
    """Nothing exists at the URI."""


class VerificationError(ArtifactError):
    """The artifact's bytes do not match what its metadata (or a recorded digest) says."""


class DigestMismatch(VerificationError):
    """A file's sha256, or metadata.json's, differs from the one recorded."""
