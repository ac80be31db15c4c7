"""The improvement loop of a ModelDeployment: which registered version to follow
(`spec.track`), when to train a new one (`spec.retrain`), and what the operator found
(`status.tracking`, `status.evaluation`, `status.retraining`).

The spec says the rule, never a version number: the operator picks the version, judges
it against the one serving on the same rows, and records both in status, so a GitOps
repository never holds a number the cluster has moved past.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Self

from pydantic import ConfigDict, Field, field_validator, model_validator

from . import cron
from .common import CamelModel, DnsLabel, DnsSubdomain, Duration, cel, validations
from .trainingjob import TrainingJobSpec

SelectRule = Literal["best", "latest"]
TriggerType = Literal["drift", "accuracy", "schedule", "labels", "request"]

# A 5-field cron expression: minute hour day-of-month month day-of-week, in UTC.
CRON_PATTERN = r"^[0-9*,/-]+(\s+[0-9*,/-]+){4}$"


class Track(CamelModel):
    """Follow a registered model instead of naming a version."""

    model: DnsLabel = Field(description="The registered model (ModelVersion spec.model) to follow.")
    select: SelectRule = Field(
        default="best",
        description="best: of the Ready versions newer than the one serving, the one with the "
        "best registered metric becomes the challenger, and it is rolled out only when it "
        "beats the serving version by minImprovement on the same rows; latest: the newest "
        "Ready version, rolled out unless it is worse by more than canary.analysis."
        "maxMetricDrop on the same rows.",
    )
    metric: str | None = Field(
        default=None,
        max_length=64,
        description="The metric versions are ranked and judged by; by default accuracy for "
        "a classifier and rmse for a regression.",
    )
    min_improvement: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="With select best: how much better than the serving version a challenger "
        "must score on the same rows (absolute for scores such as accuracy, relative for "
        "errors such as rmse).",
    )


class TrainingJobRef(CamelModel):
    """A TrainingJob in the deployment's namespace whose spec is the template."""

    name: DnsSubdomain = Field(description="Name of the TrainingJob.")


class RetrainTemplate(CamelModel):
    """What a retraining trains: a TrainingJob spec, written here or taken from one."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.spec) != has(self.trainingJobRef)",
                "retrain.template: set exactly one of spec or trainingJobRef",
                reason="FieldValueInvalid",
            )
        )
    )

    spec: TrainingJobSpec | None = Field(
        default=None, description="The TrainingJob spec each retraining starts from."
    )
    training_job_ref: TrainingJobRef | None = Field(
        default=None,
        alias="trainingJobRef",
        description="A TrainingJob whose spec each retraining starts from (read when it starts).",
    )

    @model_validator(mode="after")
    def _one(self) -> Self:
        if (self.spec is None) == (self.training_job_ref is None):
            raise ValueError("retrain.template: set exactly one of spec or trainingJobRef")
        return self


class RetrainTriggers(CamelModel):
    """What starts a retraining (any one of them)."""

    drift: bool = Field(default=True, description="When DriftDetected turns True.")
    accuracy: bool = Field(default=True, description="When AccuracyDegraded turns True.")
    schedule: str | None = Field(
        default=None,
        max_length=128,
        pattern=CRON_PATTERN,
        description="A cron schedule in UTC (minute hour day-of-month month day-of-week, "
        "e.g. '0 3 * * 1'), checked every monitoring interval.",
    )
    new_labels: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000_000,
        description="When the monitoring window holds at least this many labelled rows.",
    )

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None:
            cron.parse(value)
        return value


class Retrain(CamelModel):
    """Train a new version by itself: a TrainingJob owned by the deployment, on the
    template's dataset plus the collected, labelled production rows of a window."""

    template: RetrainTemplate = Field(description="What each retraining trains.")
    triggers: RetrainTriggers = Field(
        default_factory=RetrainTriggers, description="What starts a retraining."
    )
    cooldown: Duration = Field(
        default="1h",
        description="Least time between the starts of two retrainings, whatever started them.",
    )
    window: Duration = Field(
        default="168h",
        description="The collected production rows answered within this span before a "
        "retraining starts are added to its dataset (spec.monitoring.collection).",
    )
    min_collected_rows: int = Field(
        default=0,
        ge=0,
        le=1_000_000_000,
        description="Fewest labelled collected rows a retraining needs; fewer fail it with "
        "DataCheckFailed.",
    )


# --- status ------------------------------------------------------------------------------


class RefusedVersion(CamelModel):
    """A challenger judged and not rolled out."""

    version: str = Field(description="The ModelVersion refused.")
    against: str = Field(description="The version it was judged against (the stable).")
    reason: str = Field(description="Why, in a word.")
    message: str = Field(default="", description="Details, for people.")
    at: datetime | None = Field(default=None, description="When.")


class TrackingStatus(CamelModel):
    """What spec.track selected, and why."""

    model: str = Field(description="The model followed.")
    target: str | None = Field(default=None, description="The version selected.")
    reason: str | None = Field(default=None, description="Why that one, in a word.")
    message: str | None = Field(default=None, description="Why that one, for people.")
    refused: list[RefusedVersion] = Field(
        default_factory=list, max_length=10, description="Challengers not rolled out, newest last."
    )


class EvaluationStatus(CamelModel):
    """The champion / challenger evaluation: both versions scored on the same rows."""

    candidate: str = Field(description="The version to roll out (the challenger).")
    baseline: str = Field(description="The version serving (the champion).")
    job: str | None = Field(default=None, description="The evaluation Job.")
    phase: Literal["Running", "Succeeded", "Failed"] = Field(
        default="Running", description="Where the evaluation stands."
    )
    verdict: Literal["Pass", "Fail"] | None = Field(
        default=None, description="Whether the candidate may take traffic."
    )
    metric: str | None = Field(default=None, description="The metric judged.")
    candidate_value: float | None = Field(default=None, description="The candidate's value.")
    baseline_value: float | None = Field(default=None, description="The baseline's value.")
    improvement: float | None = Field(
        default=None,
        description="How much better the candidate scored (absolute for scores, relative for "
        "errors; negative: worse).",
    )
    rows: int | None = Field(default=None, ge=0, description="Rows both were scored on.")
    heldout_rows: int | None = Field(
        default=None, ge=0, description="Of them, the candidate's held-out training rows."
    )
    production_rows: int | None = Field(
        default=None, ge=0, description="Of them, labelled production rows."
    )
    dataset_digest: str | None = Field(
        default=None, description="sha256 of the rows, so the comparison can be repeated."
    )
    reason: str | None = Field(default=None, description="The verdict's reason, in a word.")
    message: str | None = Field(default=None, description="The verdict, for people.")
    started_at: datetime | None = Field(default=None, description="When the Job was asked for.")
    at: datetime | None = Field(default=None, description="When the verdict was given.")


class ReplayStatus(CamelModel):
    """Rows replayed against both tracks so that a quiet canary step can be judged."""

    version: str = Field(description="The canary version whose evaluation rows were sent.")
    step: int = Field(ge=0, description="The canary step it was for.")
    job: str | None = Field(default=None, description="The replay Job.")
    phase: Literal["Running", "Succeeded", "Failed"] = Field(
        default="Running", description="Where the replay stands."
    )
    rows: int | None = Field(default=None, ge=0, description="Rows sent to each pod.")
    reason: str | None = Field(default=None, description="Why it failed, in a word.")
    message: str | None = Field(default=None, description="Details, for people.")
    started_at: datetime | None = Field(default=None, description="When it was asked for.")


class RetrainTrigger(CamelModel):
    """What started a retraining."""

    type: TriggerType = Field(
        description="drift, accuracy, schedule, labels, or request (the "
        "orchard.dev/retrain-request annotation)."
    )
    message: str = Field(default="", description="What was seen.")
    at: datetime | None = Field(default=None, description="When.")


class RetrainingStatus(CamelModel):
    """The last retraining the deployment started, and what came of it."""

    count: int = Field(default=0, ge=0, description="Retrainings started.")
    last_trigger: RetrainTrigger | None = Field(default=None, description="The last trigger.")
    training_job: str | None = Field(default=None, description="Its TrainingJob.")
    phase: Literal["Running", "Succeeded", "Failed"] | None = Field(
        default=None, description="Where that TrainingJob stands."
    )
    model_version: str | None = Field(default=None, description="The version it registered.")
    reason: str | None = Field(default=None, description="Why it is in its phase.")
    message: str | None = Field(default=None, description="Details, for people.")
    started_at: datetime | None = Field(default=None, description="When it started.")
    next_scheduled: datetime | None = Field(
        default=None, description="When the schedule fires next."
    )
