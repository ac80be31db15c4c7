"""What Orchard's processes say to each other, declared once and imported by both sides.

- The model server (`orchard.serving`) writes Prometheus metrics; the operator's canary
  analysis (`orchard.decisions.analysis`) scrapes and reads them. The names, labels and
  endpoint values it reads are here.
- The trainer (`orchard.trainer`) reports its run as one JSON object on stdout and in
  its pod's termination message; the operator parses it (`orchard.decisions.training`)
  and registers a ModelVersion from it (`orchard.builders.modelversion`). A success is a
  `TrainerReport`, a failure a `TrainerFailureReport` (docs/artifact-format.md).
  `orchard evaluate`, in the same image, reports an `EvaluationReport` (or a
  `TrainerFailureReport`) the same way, and `orchard replay` a `ReplayReport`.

Every image imports this module (server, trainer, operator), so it imports only the
standard library and pydantic (an import-linter contract in pyproject.toml keeps it so).
The wire shapes stay as older images write them: the operator reads an older trainer's
report, and ignores a field it does not know.
"""

from __future__ import annotations

import math
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.alias_generators import to_camel

# --- The model server's refusal of an artifact -----------------------------------------

# `orchard serve` exits with this status, having printed one line that starts with the
# prefix, when the artifact fails its digests or cannot be read as one; the serving
# container's termination message (FallbackToLogsOnError) carries that line to the
# controller, which puts it in the ModelDeployment's Ready condition.
SERVE_EXIT_REFUSED = 2
SERVE_REFUSED_PREFIX = "orchard serve: refusing to start: "

# --- The model server's metrics, as the canary analysis reads them --------------------

REQUESTS = "orchard_requests_total"  # counter (endpoint, code)
LATENCY = "orchard_request_duration_seconds"  # histogram (endpoint, le)
PREDICTED_CLASS = "orchard_predictions_total"  # counter (class); classification
PREDICTED_VALUE = "orchard_prediction_value"  # histogram (le); regression
# Prediction drift: a regression's predicted values counted in the training drift bins of
# its test-row predictions, and each pod's statement of that baseline (class shares, or
# shares per bin), from the artifact's `predictionStats`.
PREDICTION_BIN = "orchard_prediction_bin_total"  # counter (bin); regression
PREDICTION_EXPECTED = "orchard_prediction_expected_share"  # gauge (class | bin)
# Drift: numeric inputs counted in their training bins (orchard.artifacts.drift), and
# the values outside the training rows' range.
FEATURE_OBSERVATIONS = "orchard_feature_observations_total"  # counter (feature)
FEATURE_MISSING = "orchard_feature_missing_total"  # counter (feature)
FEATURE_BIN = "orchard_feature_bin_total"  # counter (feature, bin: 0..len(edges))
FEATURE_OUT_OF_RANGE = "orchard_feature_out_of_range_total"  # counter (feature)
FEATURE_LABEL = "feature"
BIN_LABEL = "bin"
# The training baseline those counts are compared with: each pod states its artifact's
# (gauges), so the operator needs no access to the artifact store.
FEATURE_BIN_EXPECTED = "orchard_feature_bin_expected_share"  # gauge (feature, bin)
FEATURE_CATEGORY = "orchard_feature_category_total"  # counter (feature, category)
FEATURE_CATEGORY_EXPECTED = "orchard_feature_category_expected_share"  # gauge (feature, category)
CATEGORY_LABEL = "category"
OTHER_CATEGORY = "__other__"  # the label of every category beyond the counted ones

# Live accuracy: the rows of earlier requests labelled by feedback, counted by the pod
# that answered them (orchard.serving.feedback), and feedback no pod could match.
FEEDBACK_ROWS = "orchard_feedback_rows_total"  # counter
FEEDBACK_CORRECT = "orchard_feedback_correct_total"  # counter; classification
FEEDBACK_CLASS_ROWS = "orchard_feedback_class_rows_total"  # counter (class: the true label)
FEEDBACK_CLASS_CORRECT = "orchard_feedback_class_correct_total"  # counter (class)
FEEDBACK_ABSOLUTE_ERROR = "orchard_feedback_absolute_error_total"  # counter; regression
FEEDBACK_SQUARED_ERROR = "orchard_feedback_squared_error_total"  # counter; regression
FEEDBACK_UNMATCHED = "orchard_feedback_unmatched_total"  # counter: labels of no known request

# Estimated accuracy: a sample of rows counted by the classifier's confidence in them, in
# the bins of orchard.artifacts.calibration, and each bin's held-out accuracy (a gauge).
CONFIDENCE_BIN = "orchard_confidence_bin_total"  # counter (bin)
CONFIDENCE_ACCURACY = "orchard_confidence_bin_accuracy"  # gauge (bin)

# Replayed requests: rows a replay Job (`orchard replay`) sends to a canary's pods and the
# stable's when a step saw too few requests. They are answered and counted in REQUESTS
# and LATENCY like any other, for the canary analysis, but kept out of everything that
# watches production: their classes are counted apart (REPLAY_PREDICTED_CLASS, not
# PREDICTED_CLASS), and their rows in no feature, drift or confidence counter, no
# feedback memory and no collection.
REPLAY_HEADER = "orchard-replay"  # a request header (its name; any value)
REPLAY_REQUESTS = "orchard_replay_requests_total"  # counter (endpoint, code)
REPLAY_PREDICTED_CLASS = "orchard_replay_predictions_total"  # counter (class); classification

# Collection to S3: the serving pod's credentials come as these variables with this prefix
# (the operator writes them from the spec's Secret; the server reads them).
COLLECT_ENV_PREFIX = "ORCHARD_COLLECT_"

ENDPOINT_LABEL = "endpoint"
CODE_LABEL = "code"  # the HTTP status, as digits (a gRPC call: its answer's over REST)
CLASS_LABEL = "class"


class Endpoint(StrEnum):
    """The `endpoint` label of the server's request metrics: one value per route."""

    V2_INFER = "v2_infer"
    V1_PREDICT = "v1_predict"
    V2_FEEDBACK = "v2_feedback"
    V2_MONITORING = "v2_monitoring"
    V2_MODEL_METADATA = "v2_model_metadata"
    V2_MODEL_READY = "v2_model_ready"
    V2_SERVER_METADATA = "v2_server_metadata"
    V2_HEALTH_LIVE = "v2_health_live"
    V2_HEALTH_READY = "v2_health_ready"
    V1_LIVE = "v1_live"  # GET /, KServe's V1 liveness
    V1_MODEL = "v1_model"
    V1_MODELS = "v1_models"
    METRICS = "metrics"
    # The gRPC service's methods (GRPCInferenceService/ModelInfer, ...), on its own port.
    GRPC_INFER = "grpc_infer"
    GRPC_MODEL_METADATA = "grpc_model_metadata"
    GRPC_MODEL_READY = "grpc_model_ready"
    GRPC_SERVER_METADATA = "grpc_server_metadata"
    GRPC_SERVER_LIVE = "grpc_server_live"
    GRPC_SERVER_READY = "grpc_server_ready"
    UNKNOWN = "unknown"  # a path no route serves, or a gRPC method the server has not


# Only inference requests are traffic: probes and scrapes reach the same server. A gRPC
# call counts under the HTTP status its answer has over REST (`serving.grpc_service`), so
# that a 5xx is the server's fault whichever protocol carried it.
INFERENCE_ENDPOINTS: tuple[str, ...] = (
    Endpoint.V2_INFER,
    Endpoint.V1_PREDICT,
    Endpoint.GRPC_INFER,
)


# --- The trainer's report ---------------------------------------------------------------
#
# Parsing is as lenient as the operator has always been with what it does not need: a
# field of the wrong type is left out (a metric that is not a finite number, a trial that
# is not an integer), never the reason to lose a report. Only a report without its
# `artifactUri` and `digest` (strings), or whose metrics, framework or dataset are not
# objects, fails to parse.


class _Wire(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )


def _finite(value: Any) -> bool:
    """A finite number (a bool is none, nor an integer beyond a double's range)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _or_none(value: Any, kind: type | tuple[type, ...]) -> Any:
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


class TrainerReport(_Wire):
    """A successful run: where the artifact is, what it scored, what it was trained on."""

    artifact_uri: str
    digest: str
    model: str | None = None
    task: str | None = None
    metrics: dict[str, float] = Field(default_factory=dict)
    framework: dict[str, str] = Field(default_factory=dict)
    dataset: dict[str, str] = Field(default_factory=dict)  # uri, digest
    trial: int | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    gate: dict[str, Any] | None = None  # passed, metric, value, min, max
    duration_seconds: float | None = None
    inputs: list[dict[str, str]] = Field(default_factory=list)  # name, type
    # uri, rows, since, until, versions, digest: the collected rows appended to the dataset
    collected: dict[str, Any] | None = None

    @field_validator("metrics", mode="before")
    @classmethod
    def _finite_metrics(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            return value  # not an object: the report is malformed
        return {k: v for k, v in value.items() if _finite(v)}

    @field_validator("framework", "dataset", mode="before")
    @classmethod
    def _strings(cls, value: Any) -> Any:
        if value is None:
            return {}
        if not isinstance(value, dict):
            return value
        return {k: str(v) for k, v in value.items() if v is not None}

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> Any:
        return value if isinstance(value, dict) else {}

    @field_validator("inputs", mode="before")
    @classmethod
    def _inputs(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return []
        return [
            {k: str(v) for k, v in i.items() if v is not None} for i in value if isinstance(i, dict)
        ]

    @field_validator("model", "task", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _or_none(value, str)

    @field_validator("trial", mode="before")
    @classmethod
    def _trial(cls, value: Any) -> Any:
        return _or_none(value, int)

    @field_validator("duration_seconds", mode="before")
    @classmethod
    def _seconds(cls, value: Any) -> Any:
        return _or_none(value, (int, float))

    @field_validator("gate", "collected", mode="before")
    @classmethod
    def _gate(cls, value: Any) -> Any:
        return _or_none(value, dict)

    def wire(self) -> dict[str, Any]:
        """The JSON object the trainer writes (fields without a value left out)."""
        return self.model_dump(by_alias=True, exclude_none=True)


def _finite_values(value: Any) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {str(k): v for k, v in value.items() if _finite(v)}


class EvaluationReport(_Wire):
    """`orchard evaluate`: a candidate and a baseline artifact scored on the same rows
    (the candidate's held-out rows and, optionally, labelled production rows)."""

    rows: int
    heldout_rows: int = 0
    production_rows: int = 0
    dataset_digest: str  # sha256 of the evaluation rows' canonical CSV
    metric: str
    task: str | None = None
    candidate: dict[str, float] = Field(default_factory=dict)
    baseline: dict[str, float] = Field(default_factory=dict)
    seed: int | None = None  # the seed of the candidate's held-out split

    @field_validator("candidate", "baseline", mode="before")
    @classmethod
    def _metrics(cls, value: Any) -> Any:
        return _finite_values(value)

    @field_validator("heldout_rows", "production_rows", mode="before")
    @classmethod
    def _count(cls, value: Any) -> Any:
        return value if _or_none(value, int) is not None else 0

    @field_validator("task", mode="before")
    @classmethod
    def _text(cls, value: Any) -> Any:
        return _or_none(value, str)

    @field_validator("seed", mode="before")
    @classmethod
    def _seed(cls, value: Any) -> Any:
        return _or_none(value, int)

    def wire(self) -> dict[str, Any]:
        """The JSON object `orchard evaluate` writes (fields without a value left out)."""
        return self.model_dump(by_alias=True, exclude_none=True)


def _count(value: Any) -> int:
    return value if _or_none(value, int) is not None and value >= 0 else 0


class ReplayReport(_Wire):
    """`orchard replay`: rows sent to each target (a serving pod's base URL) as replayed
    requests (`REPLAY_HEADER`), one row per request. `ok` counts the 2xx answers, `errors`
    every other answer and every request that got none (the canary analysis judges them
    from the pods' own metrics). A target whose counts are not an object is left out."""

    rows: int
    heldout_rows: int = 0
    production_rows: int = 0
    targets: dict[str, dict[str, int]] = Field(default_factory=dict)  # url: sent, ok, errors

    @field_validator("heldout_rows", "production_rows", mode="before")
    @classmethod
    def _rows(cls, value: Any) -> Any:
        return _count(value)

    @field_validator("targets", mode="before")
    @classmethod
    def _targets(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return {}
        return {
            str(url): {k: _count(counts.get(k)) for k in ("sent", "ok", "errors")}
            for url, counts in value.items()
            if isinstance(counts, dict)
        }

    def wire(self) -> dict[str, Any]:
        """The JSON object `orchard replay` writes."""
        return self.model_dump(by_alias=True, exclude_none=True)


class ReportedError(_Wire):
    """Why a run failed: a CamelCase reason, a message for people, and details such as
    `check` and `column` (DataCheckFailed) or `metric`, `value`, `min`, `max` (GateFailed)."""

    model_config = ConfigDict(extra="allow")

    reason: str = ""
    message: str = ""

    @field_validator("reason", "message", mode="before")
    @classmethod
    def _text(cls, value: Any) -> str:
        return str(value) if value else ""


class TrainerFailureReport(_Wire):
    """A failed run: `{"error": {...}, "trial": N}`."""

    error: ReportedError
    trial: int | None = None

    @field_validator("trial", mode="before")
    @classmethod
    def _trial(cls, value: Any) -> Any:
        return _or_none(value, int)

    def wire(self) -> dict[str, Any]:
        """The JSON object the trainer writes (`trial` is null when the run failed before
        its trial index was known)."""
        return self.model_dump(by_alias=True)
