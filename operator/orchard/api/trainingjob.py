"""TrainingJob: train (and optionally search over) one scikit-learn pipeline on one dataset.

On success the operator registers the result as a ModelVersion.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import AfterValidator, ConfigDict, Field, WithJsonSchema, model_validator

from .common import (
    AGE_COLUMN,
    PHASE_COLUMN,
    READY_COLUMN,
    CamelModel,
    Conditions,
    Digest,
    DnsLabel,
    DnsSubdomain,
    PrinterColumn,
    Resource,
    ResourceInfo,
    cel,
    validations,
)

BuiltinDataset = Literal["iris", "wine", "breast_cancer", "diabetes", "digits"]
ColumnType = Literal["number", "integer", "string", "boolean"]

CLASSIFIERS = (
    "LogisticRegression",
    "RandomForestClassifier",
    "GradientBoostingClassifier",
    "HistGradientBoostingClassifier",
    "DecisionTreeClassifier",
    "KNeighborsClassifier",
    "SVC",
)
REGRESSORS = (
    "LinearRegression",
    "Ridge",
    "Lasso",
    "RandomForestRegressor",
    "GradientBoostingRegressor",
    "HistGradientBoostingRegressor",
    "DecisionTreeRegressor",
    "KNeighborsRegressor",
    "SVR",
)
EstimatorName = Literal[
    "LogisticRegression",
    "RandomForestClassifier",
    "GradientBoostingClassifier",
    "HistGradientBoostingClassifier",
    "DecisionTreeClassifier",
    "KNeighborsClassifier",
    "SVC",
    "LinearRegression",
    "Ridge",
    "Lasso",
    "RandomForestRegressor",
    "GradientBoostingRegressor",
    "HistGradientBoostingRegressor",
    "DecisionTreeRegressor",
    "KNeighborsRegressor",
    "SVR",
]

URI_PATTERN = r"^(file|pvc|https?|s3)://.+$"
# A run's path is appended to the artifacts root: a query or fragment has no place there.
ARTIFACTS_URI_PATTERN = r"^(file|pvc|s3)://[^?#]+$"
# The operator's setting naming the store of a TrainingJob without spec.artifacts.
DEFAULT_ARTIFACTS_ENV = "ORCHARD_DEFAULT_ARTIFACTS"
# The container of a training pod: the operator names it so, and reads its report there.
TRAINER_CONTAINER = "trainer"
SECRET_NAME_DESC = (
    "Name of a Secret in the same namespace, one the admin's policy lets Orchard mount "
    "(secrets.allowedNames; by default orchard-*),"
)


class RequiredColumn(CamelModel):
    """A column the dataset must have, with its type."""

    name: str = Field(description="Column name.", min_length=1, max_length=256)
    type: ColumnType = Field(description="Column type: number, integer, string or boolean.")


class DataChecks(CamelModel):
    """Checks on the data before training; a failed check fails the job (DataCheckFailed)."""

    min_rows: int | None = Field(
        default=None, ge=0, description="Fewest rows the dataset must have."
    )
    max_missing_fraction: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Largest fraction of missing values allowed in any column (0..1).",
    )
    required_columns: list[RequiredColumn] = Field(
        default_factory=list,
        max_length=256,
        description="Columns that must be present, with their types.",
    )
    allowed_labels: list[str] | None = Field(
        default=None,
        max_length=1024,
        description="For classification: the only target values allowed.",
    )


# A deployment's collection directory (docs/collection.md), read in place.
COLLECTED_URI_PATTERN = r"^(pvc|s3|file)://[^?#]+$"


class CollectedRows(CamelModel):
    """Labelled production rows collected by a ModelDeployment (docs/collection.md),
    appended to the dataset's own rows."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!self.uri.split('/').exists(s, s == '..')",
                "dataset.collected.uri must not leave its claim (no '..')",
                field_path=".uri",
            ),
        )
    )

    uri: str = Field(
        pattern=COLLECTED_URI_PATTERN,
        max_length=2048,
        description="A deployment's collection directory, "
        "<collection uri>/<namespace>/<modeldeployment>/, below which each model version "
        "has its directory of requests/ and labels/ segments: pvc://<claim>/<path>/ (the "
        "claim is mounted read-only in the trainer's pod, where the admin's policy lets "
        "specs read it: claims.readable) or file://<path> for local runs. s3:// is "
        "not read yet: the run fails with InvalidSpec.",
    )
    versions: list[DnsSubdomain] | None = Field(
        default=None,
        max_length=64,
        description="Only the rows of these model versions (their directory names); by "
        "default every version's.",
    )
    since: datetime | None = Field(
        default=None,
        description="Only rows answered at or after this time (RFC 3339).",
    )
    until: datetime | None = Field(
        default=None,
        description="Only rows answered before this time (RFC 3339).",
    )
    min_rows: int = Field(
        default=0,
        ge=0,
        description="Fewest labelled collected rows the run needs; with fewer it fails "
        "with DataCheckFailed.",
    )

    @model_validator(mode="after")
    def _place(self) -> Self:
        if ".." in self.uri.split("/"):
            raise ValueError("dataset.collected.uri must not leave its claim (no '..')")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("dataset.collected.since must be before dataset.collected.until")
        return self


class Dataset(CamelModel):
    """Where the training data comes from: a built-in dataset or a file at a URI."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.builtin) != has(self.uri)",
                "dataset: set exactly one of builtin or uri",
                reason="FieldValueInvalid",
            ),
            cel(
                "!has(self.uri) || has(self.target)",
                "dataset.target is required when dataset.uri is set",
                field_path=".target",
                reason="FieldValueRequired",
            ),
        )
    )

    builtin: BuiltinDataset | None = Field(
        default=None,
        description="A dataset shipped with scikit-learn: iris, wine, breast_cancer, diabetes "
        "or digits. Its target column is named target.",
    )
    uri: str | None = Field(
        default=None,
        pattern=URI_PATTERN,
        max_length=2048,
        description="Location of a CSV or Parquet file: pvc://<claim>/<path> (the claim is "
        "mounted in the trainer's pod), s3://<bucket>/<key>, https://<host>/<path> (a "
        "presigned URL works), or file://<path> for local runs; in the cluster, file:// "
        "reaches only the mounted claims (/mnt/pvc/<claim>/...), never the pod's own files. "
        "Recorded (ModelVersion, metadata.json, logs) with every query value and password "
        "replaced by REDACTED; the digest pins the bytes.",
    )
    format: Literal["csv", "parquet"] | None = Field(
        default=None, description="File format; by default taken from the file extension."
    )
    target: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="Name of the column to predict. Required with uri; built-in datasets use "
        "target.",
    )
    features: list[str] | None = Field(
        default=None,
        max_length=1024,
        description="Columns to train on; by default every column except the target.",
    )
    secret_name: str | None = Field(
        default=None,
        max_length=253,
        description=f"{SECRET_NAME_DESC} with S3 credentials: AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY and optionally AWS_ENDPOINT_URL, AWS_REGION.",
    )
    checks: DataChecks | None = Field(
        default=None, description="Checks on the data before training."
    )
    collected: CollectedRows | None = Field(
        default=None,
        description="Labelled production rows a ModelDeployment collected, appended to "
        "the rows of builtin or uri (which also give the columns and the target): each "
        "labelled request row's inputs, with its label as the target.",
    )

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.builtin is None) == (self.uri is None):
            raise ValueError("dataset: set exactly one of builtin or uri")
        if self.uri is not None and self.target is None:
            raise ValueError("dataset.target is required when dataset.uri is set")
        return self


class NumericPreprocessing(CamelModel):
    """How numeric columns are prepared."""

    impute: Literal["mean", "median", "most_frequent", "none"] = Field(
        default="median", description="How missing numbers are filled in."
    )
    scale: Literal["standard", "minmax", "robust", "none"] = Field(
        default="standard", description="How numbers are scaled."
    )


class CategoricalPreprocessing(CamelModel):
    """How categorical (string) columns are prepared."""

    impute: Literal["most_frequent", "constant", "none"] = Field(
        default="most_frequent", description="How missing categories are filled in."
    )
    encode: Literal["onehot", "ordinal"] = Field(
        default="onehot", description="How categories are encoded."
    )


class Preprocessing(CamelModel):
    """The preprocessing steps of the pipeline, per column type."""

    numeric: NumericPreprocessing = Field(
        default_factory=NumericPreprocessing, description="Numeric columns."
    )
    categorical: CategoricalPreprocessing = Field(
        default_factory=CategoricalPreprocessing, description="Categorical columns."
    )


# What a spec may ask of an estimator, refused at admission beyond these bounds: a
# thread per core of a large node, or a forest of a million trees, is not a training run
# but a crash. name -> (lowest, highest, null allowed).
PARAM_LIMITS: dict[str, tuple[int, int, bool]] = {
    "n_jobs": (-1, 8, True),
    "n_estimators": (1, 2000, False),
    "max_depth": (1, 100, True),
    "max_iter": (1, 100_000, False),
}
# A value within those bounds that still asks for nothing: scikit-learn refuses n_jobs=0.
PARAM_REFUSED: dict[str, int] = {"n_jobs": 0}


def _limit_text(name: str) -> str:
    lo, hi, nullable = PARAM_LIMITS[name]
    but = f" but {PARAM_REFUSED[name]}" if name in PARAM_REFUSED else ""
    return f"an integer {lo}..{hi}{but}{' or null' if nullable else ''}"


def _limit_schema(name: str) -> dict[str, Any]:
    lo, hi, nullable = PARAM_LIMITS[name]
    refused = (
        {"x-kubernetes-validations": [
            {"rule": f"self != {PARAM_REFUSED[name]}", "message": f"must be {_limit_text(name)}"}
        ]}
        if name in PARAM_REFUSED
        else {}
    )  # fmt: skip
    return {
        "type": "integer",
        "minimum": lo,
        "maximum": hi,
        **({"nullable": True} if nullable else {}),
        **refused,
        "description": f"{name}: {_limit_text(name)}.",
    }


def _limit_errors(name: str, value: Any) -> str | None:
    lo, hi, nullable = PARAM_LIMITS[name]
    if value is None and nullable:
        return None
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and lo <= value <= hi
        and value != PARAM_REFUSED.get(name)
    ):
        return None
    return f"{name} must be {_limit_text(name)}, not {value!r}"


def _check_params(params: dict[str, Any]) -> dict[str, Any]:
    for name in PARAM_LIMITS.keys() & params.keys():
        if (error := _limit_errors(name, params[name])) is not None:
            raise ValueError(error)
    return params


def _check_parameters(parameters: dict[str, list[Any]]) -> dict[str, list[Any]]:
    for name in PARAM_LIMITS.keys() & parameters.keys():
        for value in parameters[name]:
            if (error := _limit_errors(name, value)) is not None:
                raise ValueError(f"search.parameters: {error}")
    return parameters


# Free-form maps whose bounded keys the API server checks too: they are declared as
# properties beside x-kubernetes-preserve-unknown-fields (the other keys stay free).
EstimatorParams = Annotated[
    dict[str, Any],
    AfterValidator(_check_params),
    WithJsonSchema(
        {
            "type": "object",
            "properties": {name: _limit_schema(name) for name in PARAM_LIMITS},
            "additionalProperties": True,
        }
    ),
]
SearchParameters = Annotated[
    dict[str, list[Any]],
    AfterValidator(_check_parameters),
    WithJsonSchema(
        {
            "type": "object",
            "minProperties": 1,
            "properties": {
                name: {
                    "type": "array",
                    "maxItems": 100,
                    "items": _limit_schema(name),
                    "description": f"Values of {name} to try.",
                }
                for name in PARAM_LIMITS
            },
            "additionalProperties": True,
        }
    ),
]


class Estimator(CamelModel):
    """The scikit-learn estimator at the end of the pipeline."""

    name: EstimatorName = Field(description="Class name of an allowed scikit-learn estimator.")
    params: EstimatorParams = Field(
        default_factory=dict,
        description="Constructor parameters of the estimator, e.g. {n_estimators: 200}. "
        "Bounded at admission: n_jobs -1..8 but 0, n_estimators 1..2000, max_depth 1..100 or "
        "null, max_iter 1..100000.",
    )

    @property
    def task(self) -> Literal["classification", "regression"]:
        """Classification or regression, from the estimator's kind."""
        return "classification" if self.name in CLASSIFIERS else "regression"


class Evaluation(CamelModel):
    """How the model is evaluated."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.cvFolds != 1",
                "evaluation.cvFolds must be 0 (no cross-validation) or 2..20",
                field_path=".cvFolds",
            )
        )
    )

    test_size: float = Field(
        default=0.2,
        gt=0,
        lt=1,
        description="Fraction of rows held out for the test metrics, between 0 and 1.",
    )
    cv_folds: int = Field(
        default=0,
        ge=0,
        le=20,
        description="Cross-validation folds on the training rows: 0 for none, or 2..20.",
    )
    random_state: int = Field(
        default=42, ge=0, description="Seed for the split and the estimator, for repeatability."
    )

    @model_validator(mode="after")
    def _folds(self) -> Self:
        if self.cv_folds == 1:
            raise ValueError("evaluation.cvFolds must be 0 (no cross-validation) or 2..20")
        return self


class Gate(CamelModel):
    """A quality bar: a model that misses it is not registered (GateFailed)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.min) || has(self.max)", "gate: set at least one of min or max")
        )
    )

    metric: str = Field(
        min_length=1, max_length=64, description="Test metric to check, e.g. f1_macro."
    )
    min: float | None = Field(default=None, description="Lowest acceptable value.")
    max: float | None = Field(default=None, description="Highest acceptable value.")

    @model_validator(mode="after")
    def _bound(self) -> Self:
        if self.min is None and self.max is None:
            raise ValueError("gate: set at least one of min or max")
        return self


class Objective(CamelModel):
    """What a search optimises."""

    metric: str = Field(min_length=1, max_length=64, description="Test metric to optimise.")
    direction: Literal["maximize", "minimize"] = Field(
        default="maximize", description="Whether higher (maximize) or lower is better."
    )


class Search(CamelModel):
    """A hyperparameter search: trials run in parallel as one Indexed Job; the best one wins."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.parallelism <= self.maxTrials",
                "search.parallelism must not exceed search.maxTrials",
                field_path=".parallelism",
            )
        )
    )

    parameters: SearchParameters = Field(
        min_length=1,
        description="Values to try per estimator parameter, e.g. {max_depth: [4, 8, null]}; "
        "each list within the bounds of estimator.params.",
    )
    strategy: Literal["grid", "random"] = Field(
        default="grid", description="grid tries combinations in order; random samples them."
    )
    max_trials: int = Field(ge=1, le=100, description="Most trials to run (1..100).")
    parallelism: int = Field(default=1, ge=1, le=100, description="Trials run at the same time.")
    objective: Objective = Field(description="The metric the best trial is chosen by.")

    @model_validator(mode="after")
    def _parallelism(self) -> Self:
        if self.parallelism > self.max_trials:
            raise ValueError("search.parallelism must not exceed search.maxTrials")
        return self


class Artifacts(CamelModel):
    """Where trained models are written."""

    uri: str = Field(
        pattern=ARTIFACTS_URI_PATTERN,
        max_length=2048,
        description="Artifact store root: pvc://<claim>/<prefix>, s3://<bucket>/<prefix>, "
        "or file:///<path> for local runs.",
    )
    secret_name: str | None = Field(
        default=None,
        max_length=253,
        description=f"{SECRET_NAME_DESC} with S3 credentials (see dataset.secretName).",
    )


class TrainingJobSpec(CamelModel):
    """What to train, on what data, how to judge it and where to put it."""

    model: DnsLabel = Field(
        description="Name of the registered model this trains a version of (a DNS-1123 label)."
    )
    dataset: Dataset = Field(description="The training data.")
    preprocessing: Preprocessing = Field(
        default_factory=Preprocessing, description="Preprocessing steps before the estimator."
    )
    estimator: Estimator = Field(description="The estimator to fit.")
    evaluation: Evaluation = Field(
        default_factory=Evaluation, description="Held-out split and cross-validation."
    )
    gate: Gate | None = Field(default=None, description="Quality bar for registration.")
    search: Search | None = Field(default=None, description="Optional hyperparameter search.")
    artifacts: Artifacts | None = Field(
        default=None,
        description="Where the trained model is written. By default the operator's default "
        f"store ({DEFAULT_ARTIFACTS_ENV}; the shipped manifests set pvc://orchard-artifacts/, "
        "the claim of that name in the TrainingJob's namespace); with neither, the "
        "TrainingJob fails with NoArtifactStore.",
    )
    image: str | None = Field(
        default=None,
        max_length=512,
        description="Trainer image; by default the one the operator is configured with. "
        "Another image only where the admin's policy allows its prefix "
        "(images.allowedPrefixes), else the TrainingJob fails with PolicyViolation.",
    )
    resources: dict[str, Any] | None = Field(
        default=None,
        description="Resource requests and limits of the trainer container; without them "
        "the operator's default (ORCHARD_TRAINER_RESOURCES: requests 250m CPU and 512Mi, "
        "limits 2 CPU and 2Gi).",
    )
    backoff_limit: int = Field(
        default=0, ge=0, le=10, description="Retries of a failed trainer pod."
    )
    active_deadline_seconds: int = Field(
        default=3600, ge=1, le=604800, description="Longest a training run may take, in seconds."
    )
    node_selector: dict[str, str] | None = Field(
        default=None,
        description="Node labels the trainer pods must run on (only where the admin's "
        "policy allows it: overrides.nodeSelector).",
    )
    tolerations: list[dict[str, Any]] | None = Field(
        default=None,
        max_length=64,
        description="Tolerations of the trainer pods (only where the admin's policy allows "
        "it: overrides.tolerations).",
    )


TrainingPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class PrimaryMetric(CamelModel):
    """The metric shown in `kubectl get`: the gate's, the search objective's, or the first."""

    name: str = Field(description="Metric name.")
    value: float = Field(description="Metric value on the test rows.")


class ArtifactRef(CamelModel):
    """A written artifact: its location and the digest of its metadata.json."""

    uri: str = Field(max_length=2048, description="Location of the artifact directory.")
    digest: Digest = Field(description="sha256:<hex> of the artifact's metadata.json.")


class Trial(CamelModel):
    """One trial of a search."""

    index: int = Field(ge=0, description="Trial index (the Indexed Job's completion index).")
    params: dict[str, Any] = Field(default_factory=dict, description="Parameters it tried.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Test metrics it got.")
    phase: TrainingPhase = Field(default="Pending", description="Where the trial stands.")


class TrainingJobStatus(CamelModel):
    """What the operator observed of the training run."""

    phase: TrainingPhase | None = Field(default=None, description="Where the job stands.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status reflects."
    )
    conditions: Conditions = Field(
        default_factory=list, description="Ready, Complete and Failed conditions."
    )
    job_name: str | None = Field(default=None, description="Name of the batch/v1 Job it runs.")
    start_time: datetime | None = Field(default=None, description="When training started.")
    completion_time: datetime | None = Field(default=None, description="When training ended.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Test metrics of the trained (best) model."
    )
    primary_metric: PrimaryMetric | None = Field(
        default=None, description="The metric shown by kubectl get."
    )
    model_version: str | None = Field(
        default=None, description="Name of the ModelVersion registered from this job."
    )
    artifact: ArtifactRef | None = Field(default=None, description="The written artifact.")
    reason: str | None = Field(default=None, description="Why the job is in its phase.")
    message: str | None = Field(default=None, description="Details, for people.")
    trials: list[Trial] = Field(
        default_factory=list, max_length=100, description="Trials of the search, if any."
    )
    best_trial: int | None = Field(default=None, ge=0, description="Index of the best trial.")
    queue_position: int | None = Field(
        default=None,
        ge=1,
        description="While Pending with reason Queued: its place in the operator's queue "
        "(1 starts next); at most ORCHARD_MAX_RUNNING_TRAININGS TrainingJobs train at once. "
        "Exact among the next twice that limit (at least 10); further back rewritten once "
        "it halves, so an upper bound there.",
    )


class TrainingJob(Resource):
    """A TrainingJob object."""

    RESOURCE: ClassVar[ResourceInfo] = ResourceInfo(
        kind="TrainingJob",
        plural="trainingjobs",
        singular="trainingjob",
        short_names=["tj"],
        description="TrainingJob trains a scikit-learn pipeline on a dataset and, when it passes "
        "its gate, registers the result as a ModelVersion.",
        printer_columns=[
            PrinterColumn(
                name="Model", type="string", json_path=".spec.model", description="Model name."
            ),
            PrinterColumn(
                name="Estimator",
                type="string",
                json_path=".spec.estimator.name",
                description="Estimator.",
            ),
            PHASE_COLUMN,
            READY_COLUMN,
            PrinterColumn(
                name="Metric",
                type="string",
                json_path=".status.primaryMetric.name",
                description="Primary metric.",
            ),
            PrinterColumn(
                name="Value",
                type="number",
                json_path=".status.primaryMetric.value",
                description="Its value.",
            ),
            PrinterColumn(
                name="Version",
                type="string",
                json_path=".status.modelVersion",
                description="ModelVersion registered.",
            ),
            PrinterColumn(
                name="Reason",
                type="string",
                json_path=".status.reason",
                description="Why the job is in its phase (e.g. DataCheckFailed, GateFailed).",
            ),
            AGE_COLUMN,
        ],
    )

    kind: Literal["TrainingJob"] = "TrainingJob"
    spec: TrainingJobSpec
    status: TrainingJobStatus = Field(default_factory=TrainingJobStatus)
