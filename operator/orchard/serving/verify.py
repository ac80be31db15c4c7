"""A ModelVersion's verification, in the server image: the digests, and the runtime.

    python -m orchard.serving.verify <artifact URI> <sha256:digest>

What `python -m orchard.artifacts.verify` checks and reports, plus `"runtime"`: the
runtime a server would answer through under `--runtime auto` and why
(`orchard.serving.runtime`), found as the server finds it, in this process. The operator
records it in the ModelVersion's `status.runtime`; every server checks again at load
(it may run another version of scikit-learn, or `--runtime`). A fault of the runtime
check leaves the artifact verified and says so in the runtime's reason.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from orchard.artifacts import verify as artifacts_verify


def runtime_report(directory: Path, digest: str) -> Mapping[str, Any]:
    """The report's `runtime`: name, reason, rows compared."""
    from orchard.serving.isolated import Choice, check

    try:
        found = check(str(directory), digest, "auto")
    except Exception as exc:  # the check of a verified artifact: its fault is not the artifact's
        name, reason, rows = "sklearn", f"the runtime check failed: {type(exc).__name__}: {exc}", 0
    else:
        if isinstance(found, Choice):
            name, reason, rows = found.runtime.name, found.runtime.reason, found.runtime.rows
        else:  # a Refusal: under auto, only of the artifact
            name, reason, rows = "sklearn", found.message, 0
    return {"runtime": {"name": name, "reason": " ".join(reason.split())[:500], "rows": rows}}


def main() -> int:
    return artifacts_verify.main(inspect=runtime_report, prog="python -m orchard.serving.verify")


if __name__ == "__main__":
    sys.exit(main())
