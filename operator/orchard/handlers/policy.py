"""The admin's policy as the controllers read it: from a file in the operator's pod.

The file (a ConfigMap mounted at `DEFAULT_POLICY_FILE`, or `$ORCHARD_POLICY_FILE`) is
re-read when it changes, so an edited ConfigMap takes effect without a restart. No file
means the default policy; a file that does not parse stops the operator at startup
(a typo must not loosen anything) and is ignored with an error log after that.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from orchard.api.policy import DEFAULT_POLICY_FILE, POLICY_FILE_ENV, Policy

log = logging.getLogger(__name__)

_cache: tuple[Path, float, Policy] | None = None


def policy_path() -> Path:
    return Path(os.environ.get(POLICY_FILE_ENV) or DEFAULT_POLICY_FILE)


def load(path: Path) -> Policy:
    """The policy in `path` (the default policy when there is no such file)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return Policy()
    return Policy.from_yaml(text)


def current() -> Policy:
    """The policy in force: the file's, re-read when its modification time changes."""
    global _cache
    path = policy_path()
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        mtime = -1.0
    if _cache is not None and _cache[:2] == (path, mtime):
        return _cache[2]
    try:
        policy = load(path)
    except ValueError as exc:
        if _cache is None:
            raise
        log.error("keeping the previous policy: %s: %s", path, exc)
        return _cache[2]
    _cache = (path, mtime, policy)
    return policy
