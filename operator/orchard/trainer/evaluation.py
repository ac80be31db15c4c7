"""`orchard evaluate`: a candidate and a baseline artifact scored on the same rows.

    orchard evaluate \\
        --candidate pvc://orchard-artifacts/iris/run-2/ --candidate-digest sha256:... \\
        --baseline pvc://orchard-artifacts/iris/run-1/ --baseline-digest sha256:... \\
        --collected pvc://orchard-artifacts/collected/ml/iris/ --since 2026-12-01T00:00:00Z

The rows are the candidate's held-out rows (heldout.parquet, pinned by its digest) and,
with --collected, the labelled production rows under a deployment's collection directory
(every version's) answered at or after --since. Both pipelines are verified before
anything is unpickled, and scored with the trainer's own metric functions. The result is
one JSON line on stdout and in the termination message (`orchard.contracts.
EvaluationReport`), or `{"error": {...}}` with exit 1; a run without rows is a failure.
"""

from __future__ import annotations

import argparse
import io
import logging
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from orchard.contracts import EvaluationReport
from orchard.trainer.errors import (
    ArtifactVerificationFailed,
    InvalidSpec,
    NoEvaluationRows,
    TrainingError,
    without_data,
)
from orchard.trainer.result import run_reported

log = logging.getLogger("orchard.trainer")

DEFAULT_METRIC = {"classification": "accuracy", "regression": "rmse"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--candidate", required=True, help="URI of the candidate artifact")
    parser.add_argument(
        "--candidate-digest", required=True, help="sha256:<hex> of its metadata.json"
    )
    parser.add_argument("--baseline", required=True, help="URI of the baseline artifact")
    parser.add_argument(
        "--baseline-digest", required=True, help="sha256:<hex> of its metadata.json"
    )
    parser.add_argument(
        "--collected",
        default=None,
        help="a deployment's collection directory (pvc:// or file://): its labelled rows, "
        "of every version, are scored too",
    )
    parser.add_argument(
        "--since",
        default=None,
        type=moment,
        help="only collected rows answered at or after this time (RFC 3339)",
    )
    parser.add_argument(
        "--metric",
        default=None,
        help="the metric to compare (default: accuracy for a classifier, rmse for a regression)",
    )
    parser.add_argument(
        "--termination-log",
        default=None,
        help="file for the result (default: $ORCHARD_TERMINATION_LOG, else /dev/termination-log "
        "when it exists)",
    )


def moment(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an RFC 3339 time: {text!r}") from exc


@dataclass(frozen=True)
class Scored:
    """One artifact, verified: its pipeline, metadata and held-out rows (if it has them)."""

    pipeline: Any
    metadata: Any  # orchard.artifacts.Metadata
    heldout: pd.DataFrame | None


def load_scored(uri: str, digest: str, role: str, workdir: Path) -> Scored:
    """Fetch and verify an artifact, then unpickle its model and parse its held-out rows
    from the very bytes checked against metadata.json."""
    from orchard.artifacts import (
        ArtifactError,
        fetch_artifact,
        load_model,
        reason_of,
        redact_uri,
        sha256_bytes,
    )

    try:
        directory, metadata = fetch_artifact(uri, digest, workdir)
        pipeline, metadata = load_model(directory, digest)
        heldout = None
        if metadata.heldout is not None:
            name = metadata.heldout.file
            expected = metadata.files.get(name)
            if expected is None:
                raise ArtifactVerificationFailed(
                    f"the {role}'s metadata.json names held-out rows {name} without their digest",
                    artifact=role,
                )
            raw = (directory / name).read_bytes()
            if sha256_bytes(raw) != expected:
                raise ArtifactVerificationFailed(
                    f"the {role}'s {name} does not match its digest in metadata.json",
                    artifact=role,
                    cause="DigestMismatch",
                )
            heldout = pd.read_parquet(io.BytesIO(raw))
    except ArtifactError as exc:
        raise ArtifactVerificationFailed(
            f"{role} {redact_uri(uri)}: {exc}", artifact=role, cause=reason_of(exc)
        ) from exc
    except OSError as exc:
        raise ArtifactVerificationFailed(
            f"{role} {redact_uri(uri)}: cannot read it ({type(exc).__name__})", artifact=role
        ) from exc
    return Scored(pipeline=pipeline, metadata=metadata, heldout=heldout)


def target_like(scored: Scored) -> pd.Series:
    """A series in the dtype the target has: the held-out rows', else the classes'."""
    meta = scored.metadata
    name = meta.heldout.target if meta.heldout is not None else meta.output.name
    if scored.heldout is not None and name in scored.heldout.columns:
        return scored.heldout[name]
    classes = meta.output.classes or []
    if meta.task == "classification" and classes:
        if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
            return pd.Series([0], name=name, dtype="int64")
        if not all(isinstance(c, float) for c in classes):
            return pd.Series(["x"], name=name, dtype=object)
    return pd.Series([0.0], name=name)


def evaluation_rows(
    candidate: Scored,
    baseline: Scored,
    collected_uri: str | None,
    since: datetime | None,
) -> tuple[pd.DataFrame, str, int, int]:
    """The rows both are scored on (every input of either, and the target), the target's
    name, and how many came from the held-out rows and from production."""
    from orchard.trainer.collected import read_collected, training_rows

    target = target_like(candidate)
    name = str(target.name)
    columns = [c.name for c in candidate.metadata.inputs]
    columns += [c.name for c in baseline.metadata.inputs if c.name not in columns]
    parts: list[pd.DataFrame] = []
    heldout_rows = 0
    if candidate.heldout is not None:
        rows = candidate.heldout
        for column in [*columns, name]:
            if column not in rows.columns:
                raise InvalidSpec(
                    f"the candidate's held-out rows have no column {column!r}, which the "
                    "baseline needs",
                    parameter="baseline",
                )
        rows = rows.dropna(subset=[name])
        parts.append(rows[[*columns, name]])
        heldout_rows = len(rows)
    production_rows = 0
    if collected_uri is not None:
        collected = read_collected(collected_uri, since=since, parameter="--collected")
        rows = training_rows(collected, columns, target).dropna(subset=[name])
        production_rows = len(rows)
        log.info("collected %s: %d labelled rows", collected.uri, production_rows)
        if production_rows:
            parts.append(rows[[*columns, name]])
    if not heldout_rows and not production_rows:
        where = "no held-out rows (heldout.parquet)"
        where += " and no labelled collected rows" if collected_uri else "; pass --collected"
        raise NoEvaluationRows(f"nothing to score the two on: the candidate has {where}")
    frame = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0]
    return frame.reset_index(drop=True), name, heldout_rows, production_rows


def evaluate(
    candidate_uri: str,
    candidate_digest: str,
    baseline_uri: str,
    baseline_digest: str,
    *,
    collected: str | None = None,
    since: datetime | None = None,
    metric: str | None = None,
) -> EvaluationReport:
    """Score both artifacts on the same rows; raises a `TrainerError` on any failure."""
    from orchard.trainer.data import frame_fingerprint
    from orchard.trainer.evaluate import (
        CLASSIFICATION_METRICS,
        REGRESSION_METRICS,
        classification_metrics,
        regression_metrics,
    )

    with tempfile.TemporaryDirectory(prefix="orchard-evaluate-") as tmp:
        cand = load_scored(candidate_uri, candidate_digest, "candidate", Path(tmp) / "candidate")
        base = load_scored(baseline_uri, baseline_digest, "baseline", Path(tmp) / "baseline")
    task = cand.metadata.task
    if base.metadata.task != task:
        raise InvalidSpec(
            f"the candidate is a {task} model, the baseline a {base.metadata.task} one",
            parameter="baseline",
        )
    known = CLASSIFICATION_METRICS if task == "classification" else REGRESSION_METRICS
    chosen = metric or DEFAULT_METRIC[task]
    if chosen not in known:
        raise InvalidSpec(
            f"--metric {chosen!r} is not a {task} metric; choose one of {', '.join(known)}",
            parameter="metric",
        )
    rows, target, heldout_rows, production_rows = evaluation_rows(cand, base, collected, since)
    score = classification_metrics if task == "classification" else regression_metrics
    results = {}
    for role, scored in (("candidate", cand), ("baseline", base)):
        x = rows[[c.name for c in scored.metadata.inputs]]
        try:
            results[role] = score(scored.pipeline, x, rows[target])
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise TrainingError(
                f"scoring the {role} failed: {without_data(str(exc), [target])}"
            ) from exc
    seed = cand.metadata.heldout.seed if cand.metadata.heldout is not None else None
    return EvaluationReport(
        rows=len(rows),
        heldout_rows=heldout_rows,
        production_rows=production_rows,
        dataset_digest=frame_fingerprint(rows),
        metric=chosen,
        task=task,
        candidate=results["candidate"],
        baseline=results["baseline"],
        seed=seed,
    )


def run(args: argparse.Namespace) -> int:
    return run_reported(
        "evaluation",
        lambda: evaluate(
            args.candidate,
            args.candidate_digest,
            args.baseline,
            args.baseline_digest,
            collected=args.collected,
            since=args.since,
            metric=args.metric,
        ),
        args.termination_log,
    )
