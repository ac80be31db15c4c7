"""ModelVersion: one immutable, registered, trained model (an artifact with its lineage).

The operator creates one when a TrainingJob succeeds; a person may create one by hand
to import a model. Its spec never changes once created (the API server refuses).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from .common import (
    AGE_COLUMN,
    GROUP,
    PHASE_COLUMN,
    READY_COLUMN,
    CamelModel,
    Conditions,
    Digest,
    DnsLabel,
    PrinterColumn,
    Resource,
    ResourceInfo,
    cel,
    validations,
)

Task = Literal["classification", "regression"]
InputType = Literal["number", "integer", "string", "boolean"]


# Set to "true" on a ModelVersion, it lets the version go although a ModelDeployment uses
# it (the way out of the in-use deletion guard).
ALLOW_DELETION = f"{GROUP}/allow-deletion"


class ModelArtifact(CamelModel):
    """The artifact directory and the digest that pins it (see docs/artifact-format.md)."""

    uri: str = Field(
        pattern=r"^(file|pvc|s3|https?)://.+$",
        max_length=2048,
        description="Location of the artifact directory: pvc://<claim>/<path>, s3://<bucket>/"
        "<prefix>, file:///<path> or https://...",
    )
    digest: Digest = Field(description="sha256:<64 hex> of the artifact's metadata.json.")
    secret_name: str | None = Field(
        default=None,
        max_length=253,
        description="Name of a Secret in the same namespace with S3 credentials, if needed; "
        "one the admin's policy lets Orchard mount (secrets.allowedNames; by default orchard-*).",
    )


class Framework(CamelModel):
    """The library the model was trained with."""

    name: str = Field(min_length=1, max_length=64, description="Framework name, e.g. scikit-learn.")
    version: str = Field(min_length=1, max_length=64, description="Framework version.")


class ModelInput(CamelModel):
    """One raw input column the model expects, in order."""

    name: str = Field(min_length=1, max_length=256, description="Column name.")
    type: InputType = Field(description="Column type: number, integer, string or boolean.")


class CollectedRef(CamelModel):
    """Collected production rows a model was trained on besides its dataset's own."""

    uri: str = Field(max_length=2048, description="The deployment's collection directory.")
    rows: int = Field(ge=0, description="Labelled rows added.")
    since: datetime | None = Field(default=None, description="Rows answered from.")
    until: datetime | None = Field(default=None, description="Rows answered before.")
    digest: Digest | None = Field(
        default=None, description="sha256 over the window and every segment read."
    )


class DatasetRef(CamelModel):
    """The dataset a model was trained on, pinned by digest."""

    uri: str = Field(max_length=2048, description="Dataset location, or builtin:<name>.")
    digest: Digest | None = Field(default=None, description="sha256 of the dataset's bytes.")
    collected: CollectedRef | None = Field(
        default=None, description="The collected production rows added (dataset.collected)."
    )


class Source(CamelModel):
    """Where the model came from."""

    training_job: str | None = Field(
        default=None, max_length=253, description="Name of the TrainingJob that produced it."
    )
    namespace: str | None = Field(
        default=None, max_length=63, description="Namespace of that TrainingJob."
    )
    trial: int | None = Field(default=None, ge=0, description="Search trial that produced it.")
    dataset: DatasetRef | None = Field(default=None, description="The training dataset.")
    deployment: str | None = Field(
        default=None,
        max_length=253,
        description="The ModelDeployment whose retraining (spec.retrain) trained it.",
    )
    trigger: str | None = Field(
        default=None,
        max_length=32,
        description="What started that retraining: drift, accuracy, schedule or labels.",
    )
    parent: str | None = Field(
        default=None,
        max_length=253,
        description="The version that served when the retraining started.",
    )


class ModelVersionSpec(CamelModel):
    """The registered model version; immutable once created."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("self == oldSelf", "spec is immutable: create a new ModelVersion instead")
        )
    )

    model: DnsLabel = Field(description="Name of the registered model (a DNS-1123 label).")
    version: int = Field(ge=1, description="Version number within the model, from 1.")
    task: Task = Field(description="classification or regression.")
    artifact: ModelArtifact = Field(description="The trained model's artifact.")
    framework: Framework = Field(description="The library it was trained with.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Test metrics recorded at training time."
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="Estimator parameters it was trained with."
    )
    inputs: list[ModelInput] = Field(
        default_factory=list, max_length=1024, description="Input schema: raw columns, in order."
    )
    source: Source | None = Field(default=None, description="Lineage: job, trial and dataset.")


ModelVersionPhase = Literal["Pending", "Verifying", "Ready", "Failed"]


class VersionEvaluation(CamelModel):
    """This version scored against a serving one on the same rows, before it took traffic."""

    deployment: str = Field(description="The ModelDeployment that asked.")
    against: str = Field(description="The version it was compared with (the stable).")
    metric: str | None = Field(default=None, description="The metric judged.")
    value: float | None = Field(default=None, description="This version's value.")
    against_value: float | None = Field(default=None, description="The other version's value.")
    rows: int | None = Field(default=None, ge=0, description="Rows both were scored on.")
    dataset_digest: str | None = Field(default=None, description="sha256 of those rows.")
    verdict: Literal["Pass", "Fail"] | None = Field(default=None, description="The verdict.")
    reason: str | None = Field(default=None, description="Its reason, in a word.")
    at: datetime | None = Field(default=None, description="When.")


class RuntimeStatus(CamelModel):
    """The runtime a server answers this version through under `--runtime auto`, as the
    verification found it (every server checks again when it loads the model)."""

    name: Literal["onnx", "sklearn"] = Field(
        description="onnx: the pipeline converted to ONNX and run by ONNX Runtime; sklearn: "
        "the pipeline itself."
    )
    reason: str = Field(
        max_length=1024,
        description="Why: the rows on which the ONNX graph's answers were compared with the "
        "pipeline's, or why the pipeline serves.",
    )
    checked_rows: int | None = Field(
        default=None, ge=0, description="Held-out rows (and probes) the comparison covered."
    )


class ModelVersionStatus(CamelModel):
    """What the operator verified about the version."""

    phase: ModelVersionPhase | None = Field(default=None, description="Where the version stands.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status reflects."
    )
    conditions: Conditions = Field(
        default_factory=list,
        description="ArtifactVerified and Ready conditions; DeletionBlocked while a "
        "deletion waits for the ModelDeployments using the version.",
    )
    verified_at: datetime | None = Field(
        default=None, description="When the artifact's digest was last verified."
    )
    used_by: list[str] = Field(
        default_factory=list,
        max_length=256,
        description="ModelDeployments serving this version. While it is not empty, "
        "deleting the version waits (condition DeletionBlocked, reason InUse) unless "
        'the annotation orchard.dev/allow-deletion is "true".',
    )
    reason: str | None = Field(default=None, description="Why the version is in its phase.")
    message: str | None = Field(default=None, description="Details, for people.")
    runtime: RuntimeStatus | None = Field(
        default=None, description="What serves the version, as its verification found."
    )
    evaluations: list[VersionEvaluation] = Field(
        default_factory=list,
        max_length=10,
        description="Champion / challenger evaluations of this version, newest last.",
    )


class ModelVersion(Resource):
    """A ModelVersion object."""

    RESOURCE: ClassVar[ResourceInfo] = ResourceInfo(
        kind="ModelVersion",
        plural="modelversions",
        singular="modelversion",
        short_names=["mv"],
        description="ModelVersion is one immutable, registered trained model: its artifact, "
        "digest, metrics and lineage.",
        printer_columns=[
            PrinterColumn(
                name="Model", type="string", json_path=".spec.model", description="Model name."
            ),
            PrinterColumn(
                name="Version",
                type="integer",
                json_path=".spec.version",
                description="Version number.",
            ),
            PrinterColumn(name="Task", type="string", json_path=".spec.task", description="Task."),
            PHASE_COLUMN,
            READY_COLUMN,
            PrinterColumn(
                name="Used-By",
                type="string",
                json_path=".status.usedBy",
                description="ModelDeployments serving it.",
            ),
            PrinterColumn(
                name="Runtime",
                type="string",
                json_path=".status.runtime.name",
                description="What serves it: onnx or sklearn.",
            ),
            PrinterColumn(
                name="Artifact",
                type="string",
                json_path=".spec.artifact.uri",
                description="Artifact location.",
                priority=1,
            ),
            AGE_COLUMN,
        ],
    )

    kind: Literal["ModelVersion"] = "ModelVersion"
    spec: ModelVersionSpec
    status: ModelVersionStatus = Field(default_factory=ModelVersionStatus)
