"""The champion / challenger gate: pure.

Before any traffic moves, an evaluation Job (`orchard evaluate`, in the trainer image)
scores the candidate and the stable version on the same rows: the candidate's held-out
rows plus the labelled production rows collected since it was trained. This module reads
that Job's outcome and judges it:

- `improve` (a tracking deployment with select best): the candidate must beat the stable
  version by at least `minImprovement`;
- `no-drop` (select latest, or a version named by hand): it must not be worse by more
  than `canary.analysis.maxMetricDrop`.

For scores (accuracy, f1, r2) the difference is absolute; for errors and losses (rmse,
mae, log_loss), which have no fixed scale, it is relative to the stable's value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import ValidationError

from orchard.api.improvement import EvaluationStatus
from orchard.contracts import EvaluationReport

from . import jobs
from .analysis import lower_is_better

Rule = Literal["improve", "no-drop"]

EVALUATING = "Evaluating"
BETTER = "Better"
NOT_BETTER = "NotBetter"
WITHIN_LIMIT = "WithinLimit"
METRIC_DROP = "MetricDrop"
METRIC_MISSING = "MetricMissing"
EVALUATION_FAILED = "EvaluationFailed"
EVALUATION_CONTAINER = "evaluate"


@dataclass(frozen=True)
class Seen:
    """The evaluation Job's outcome, as read from it and its pod: once it succeeded,
    what `orchard evaluate` reported (both versions' metrics on the same rows)."""

    phase: jobs.JobPhase
    figures: EvaluationReport | None = None
    reason: str = ""
    message: str = ""


def figures_from(data: Mapping[str, Any]) -> EvaluationReport | None:
    """The report (None: not an `EvaluationReport`)."""
    try:
        return EvaluationReport.model_validate(dict(data))
    except ValidationError:
        return None


def job_outcome(job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]) -> Seen:
    """Where the evaluation Job stands: its pod's report once it ended, a failure with the
    reason the evaluator gave (or the Job's), else Running."""
    done = jobs.outcome(job, pods, EVALUATION_CONTAINER, figures_from, EVALUATION_FAILED)
    return Seen(done.phase, done.report, done.reason, done.message)


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reason: str
    message: str
    metric: str
    candidate: float | None = None
    baseline: float | None = None
    improvement: float | None = None


def improvement(metric: str, candidate: float, baseline: float) -> float:
    """How much better the candidate is: absolute for scores, relative for errors."""
    if lower_is_better(metric):
        return (baseline - candidate) / abs(baseline) if baseline != 0 else baseline - candidate
    return candidate - baseline


def judge(figures: EvaluationReport, metric: str, rule: Rule, bound: float) -> Verdict:
    """Whether the candidate may take traffic (see the module's docstring)."""
    cand, base = figures.candidate.get(metric), figures.baseline.get(metric)
    rows = f"on the same {figures.rows} rows"
    if cand is None or base is None:
        measured = ", ".join(sorted(figures.candidate)) or "nothing"
        text = f"{metric} was not measured for both versions (measured: {measured})"
        return Verdict(False, METRIC_MISSING, text, metric)
    gain = improvement(metric, cand, base)
    figures_text = f"{metric} {cand:.4g} against {base:.4g} {rows} ({gain:+.4g})"
    if rule == "improve":
        ok = gain >= bound - 1e-12
        reason = BETTER if ok else NOT_BETTER
        text = (
            f"{figures_text}: {'at least' if ok else 'less than'} the {bound:g} improvement asked"
        )
    else:
        ok = gain >= -bound - 1e-12
        reason = WITHIN_LIMIT if ok else METRIC_DROP
        text = f"{figures_text}: {'within' if ok else 'beyond'} the {bound:g} drop allowed"
    return Verdict(ok, reason, text, metric, cand, base, round(gain, 6))


def status_of(
    previous: EvaluationStatus,
    seen: Seen,
    verdict: Verdict | None,
    now: datetime,
) -> EvaluationStatus:
    """status.evaluation after a look at the Job."""
    update: dict[str, Any] = {"phase": seen.phase}
    if seen.phase == "Failed":
        update.update(reason=seen.reason, message=seen.message, at=now)
    if seen.figures is not None:
        update.update(
            rows=seen.figures.rows,
            heldout_rows=seen.figures.heldout_rows,
            production_rows=seen.figures.production_rows,
            dataset_digest=seen.figures.dataset_digest,
        )
    if verdict is not None:
        update.update(
            verdict="Pass" if verdict.passed else "Fail",
            metric=verdict.metric,
            candidate_value=verdict.candidate,
            baseline_value=verdict.baseline,
            improvement=verdict.improvement,
            reason=verdict.reason,
            message=verdict.message,
            at=now,
        )
    return previous.model_copy(update=update)


@dataclass(frozen=True)
class Judging:
    """How a candidate is judged: the metric, the rule and its bound."""

    metric: str
    rule: Rule
    bound: float

    def describe(self) -> str:
        if self.rule == "improve":
            return f"{self.metric} at least {self.bound:g} better"
        return f"{self.metric} at most {self.bound:g} worse"
