"""sha256 digests in the one spelling the project uses: ``sha256:<hex>``."""

from __future__ import annotations

import hashlib
from pathlib import Path

PREFIX = "sha256:"
_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """The digest of some bytes."""
    return PREFIX + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    """The digest of a file, read in chunks so a large model never sits in memory twice."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return PREFIX + h.hexdigest()


def is_digest(value: str) -> bool:
    """Whether a string is a well-formed ``sha256:<64 hex>`` digest."""
    hex_part = value.removeprefix(PREFIX)
    return (
        value.startswith(PREFIX)
        and len(hex_part) == 64
        and all(c in "0123456789abcdef" for c in hex_part)
    )
