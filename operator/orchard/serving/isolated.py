"""The runtime chosen in a child process, so that the server holds only what answers.

Choosing the runtime (`orchard.serving.runtime.select`) unpickles the pipeline, imports
scikit-learn, skl2onnx and onnx, converts, and predicts the held-out rows both ways:
about 90 MB of a server's memory that none of its requests need once the graph is
chosen, and that a Python process does not give back. `choose` runs that in a child
(`python -m orchard.serving.isolated`), which checks the artifact again, pinned to the
same metadata digest, and reports a `Choice`: the runtime and why, the graph's bytes,
what the parity check found, and the facts the server reads off the model
(`ModelFacts`). When the graph answers every row alone, the server never unpickles the
model at all; otherwise it loads the pipeline as it would without a child.

The report is a pickle written by this very module to a pipe the server opened: no more
trusted than the server's own code, and no less.
"""

from __future__ import annotations

import argparse
import logging
import pickle
import subprocess
import sys
from dataclasses import dataclass, field

from orchard.serving.artifact import ArtifactRefused, VerifiedArtifact
from orchard.serving.model import ModelFacts
from orchard.serving.runtime import ONNX, SKLEARN, Mode, Runtime, RuntimeRefused

log = logging.getLogger("orchard.serving")

CHILD_TIMEOUT_SECONDS = 600.0  # a large pipeline converts and checks in tens of seconds


@dataclass(frozen=True)
class Choice:
    """What the child found. `graph` is the ONNX graph's bytes when it serves;
    `no_missing` and `pipeline_missing` the parity check's column lists (`Parity`)."""

    runtime: Runtime
    facts: ModelFacts | None  # None: the child failed, and the server loads the pipeline
    graph: bytes | None = None
    no_missing: list[int] = field(default_factory=list)
    pipeline_missing: list[int] = field(default_factory=list)

    @property
    def graph_alone(self) -> bool:
        """The graph answers every row: the server needs no pipeline."""
        return (
            self.runtime.name == ONNX
            and self.graph is not None
            and self.facts is not None
            and not self.pipeline_missing
        )


@dataclass(frozen=True)
class Refusal:
    """The child refused: `kind` says which exception the server raises."""

    kind: str  # "artifact" | "runtime"
    message: str


def choose(artifact: VerifiedArtifact, mode: Mode) -> Choice:
    """The runtime for `artifact`, chosen in a child process (module docstring).

    Raises `ArtifactRefused` or `RuntimeRefused` as loading in this process would; a child
    that dies (killed, out of memory) leaves the pipeline serving under `auto`."""
    argv = [
        sys.executable, "-m", "orchard.serving.isolated",
        "--model-dir", str(artifact.directory), "--digest", artifact.digest, "--runtime", mode,
    ]  # fmt: skip
    try:
        done = subprocess.run(argv, capture_output=True, timeout=CHILD_TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        return _child_failed(mode, f"took over {CHILD_TIMEOUT_SECONDS:g} s")
    for line in done.stderr.decode(errors="replace").splitlines():
        log.info("runtime check: %s", line)
    if done.returncode != 0 or not done.stdout:
        return _child_failed(mode, f"exited with code {done.returncode}")
    found = pickle.loads(done.stdout)
    if isinstance(found, Refusal):
        if found.kind == "artifact":
            raise ArtifactRefused(found.message)
        raise RuntimeRefused(found.message)
    if not isinstance(found, Choice):
        return _child_failed(mode, f"reported a {type(found).__name__}")
    return found


def _child_failed(mode: Mode, what: str) -> Choice:
    reason = f"the runtime check {what}"
    if mode == ONNX:
        raise RuntimeRefused(f"--runtime onnx: {reason}")
    log.warning("%s; the pipeline serves", reason)
    return Choice(Runtime(SKLEARN, reason), None)


def check(model_dir: str, digest: str, mode: Mode) -> Choice | Refusal:
    """In the child: verify, unpickle and choose, in this process."""
    from orchard.serving.artifact import verify
    from orchard.serving.main import build_runner

    try:
        runner = build_runner(verify(model_dir, digest), mode, isolate=False)
    except ArtifactRefused as exc:
        return Refusal("artifact", str(exc))
    except RuntimeRefused as exc:
        return Refusal("runtime", str(exc))
    native = runner.native
    return Choice(
        runner.runtime, runner.facts,
        graph=native.graph if native is not None else None,
        no_missing=[j for j, _ in native.no_missing] if native is not None else [],
        pipeline_missing=list(native.pipeline_missing) if native is not None else [],
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m orchard.serving.isolated")
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--digest", required=True)
    parser.add_argument("--runtime", required=True, choices=["auto", "onnx"])
    args = parser.parse_args()
    logging.basicConfig(level="WARNING", format="%(levelname)s %(name)s: %(message)s")
    # Run as __main__: the report's classes must be pickled under this module's own name.
    from orchard.serving.isolated import check as checked

    found = checked(args.model_dir, args.digest, args.runtime)
    sys.stdout.buffer.write(pickle.dumps(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
