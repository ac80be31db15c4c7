"""The typed shape of ``metadata.json`` (docs/artifact-format.md) and its verification.

The server, the ModelVersion verification and the drift checks all read an artifact
through `verify_artifact`, so none of them can load a model whose bytes were changed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from orchard.artifacts.calibration import ConfidenceBins
from orchard.artifacts.digest import sha256_bytes, sha256_file
from orchard.artifacts.drift import CategoryBins, NumericBins
from orchard.artifacts.errors import ArtifactNotFound, DigestMismatch, VerificationError

FORMAT_VERSION = 1
METADATA_FILE = "metadata.json"
MODEL_FILE = "model.joblib"
HELDOUT_FILE = "heldout.parquet"

ColumnType = Literal["number", "integer", "string", "boolean"]


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class EstimatorInfo(_Model):
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class Framework(_Model):
    name: str
    version: str


class DatasetInfo(_Model):
    uri: str
    digest: str
    rows: int
    target: str


class Column(_Model):
    name: str
    type: ColumnType


class Output(_Model):
    name: str
    type: ColumnType
    classes: list[Any] | None = None


class Bins(_Model):
    """Drift bins of a number, fixed at training (see `orchard.artifacts.drift`)."""

    edges: list[float]
    shares: list[float]


class Calibration(_Model):
    """Held-out accuracy per confidence bin (see `orchard.artifacts.calibration`)."""

    edges: list[float]
    accuracy: list[float]
    rows: list[int]

    def bins(self) -> ConfidenceBins | None:
        try:
            return ConfidenceBins(tuple(self.edges), tuple(self.accuracy), tuple(self.rows))
        except ValueError:
            return None


class FeatureStats(_Model):
    """Per-column statistics of the training data: the drift baseline."""

    type: ColumnType
    count: int
    missing: int
    mean: float | None = None
    std: float | None = None
    min: float | None = None
    max: float | None = None
    quantiles: list[float] | None = None
    bins: Bins | None = None  # numbers; absent in artifacts older than drift checks
    frequencies: dict[str, float] | None = None

    def drift_bins(self) -> NumericBins | CategoryBins | None:
        """The bins production is counted in for this input (None: no baseline)."""
        if self.bins is not None:
            return NumericBins(tuple(self.bins.edges), tuple(self.bins.shares))
        if self.frequencies:
            return CategoryBins.from_frequencies(self.frequencies)
        return None


def prediction_drift_bins(stats: dict[str, Any]) -> NumericBins | CategoryBins | None:
    """The bins production's predictions are counted in (`predictionStats`): the classes'
    shares, or a regression's value bins; None for an artifact without them."""
    classes, bins = stats.get("classes"), stats.get("bins")
    try:
        if isinstance(classes, dict) and classes:
            return CategoryBins.from_frequencies({str(k): float(v) for k, v in classes.items()})
        if isinstance(bins, dict):
            parsed = Bins.model_validate(bins)
            return NumericBins(tuple(parsed.edges), tuple(parsed.shares))
    except (TypeError, ValueError):  # pydantic's ValidationError is a ValueError
        return None
    return None


class CollectedInfo(_Model):
    """The collected production rows appended to the dataset (docs/collection.md)."""

    uri: str
    rows: int
    digest: str  # sha256 over the window and every segment read, with its sha256
    since: str | None = None
    until: str | None = None
    versions: list[str] | None = None  # None: every version's directory


class HeldoutInfo(_Model):
    """The held-out rows the metrics were computed on, saved beside the model."""

    file: str
    rows: int
    target: str
    seed: int | None = None  # evaluation.randomState of the split


class Source(_Model):
    training_job: str | None = None
    namespace: str | None = None
    trial: int | None = None


class Metadata(_Model):
    format_version: int
    model: str
    task: Literal["classification", "regression"]
    estimator: EstimatorInfo
    metrics: dict[str, float]
    framework: Framework
    libraries: dict[str, str] = Field(default_factory=dict)
    dataset: DatasetInfo
    inputs: list[Column]
    output: Output
    feature_stats: dict[str, FeatureStats] = Field(default_factory=dict)
    prediction_stats: dict[str, Any] = Field(default_factory=dict)
    calibration: Calibration | None = None  # classifiers with predict_proba
    collected: CollectedInfo | None = None  # with dataset.collected
    heldout: HeldoutInfo | None = None  # absent in older artifacts
    files: dict[str, str]
    created_at: str
    source: Source = Field(default_factory=Source)


def metadata_bytes(metadata: Metadata) -> bytes:
    """The canonical bytes of metadata.json: the artifact's digest is their sha256."""
    data = metadata.model_dump(mode="json", by_alias=True, exclude_none=True)
    return (json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n").encode()


def parse_metadata(raw: bytes) -> Metadata:
    """Parse metadata.json bytes, or say what is wrong with them: the field and the rule,
    never the value (pydantic's own text quotes the input, which may be any file a link
    pointed at)."""
    try:
        return Metadata.model_validate_json(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(document)'}: {e['msg']}"
            for e in exc.errors(include_url=False, include_input=False)[:5]
        )
        raise VerificationError(f"{METADATA_FILE} is not valid: {problems}") from exc


def _inside(root: Path, path: Path, name: str) -> Path:
    """`path` resolved, when it stays inside the artifact directory: a file of an
    artifact is a file in it, never a link to somewhere else."""
    real = path.resolve()
    if not real.is_relative_to(root):
        raise VerificationError(
            f"{name} resolves outside the artifact directory; refusing the artifact"
        )
    return real


def verify_artifact(directory: str | Path, digest: str | None = None) -> Metadata:
    """Check a local artifact directory against its metadata.json, and optionally
    metadata.json against a recorded digest; return the metadata only if all match.

    Raises `ArtifactNotFound` when a file is missing and `VerificationError` on any
    other mismatch (a file that resolves outside the directory among them), with a
    message naming the file and both digests.
    """
    root = Path(directory).resolve()
    meta_path = root / METADATA_FILE
    if not meta_path.is_file():
        raise ArtifactNotFound(f"{meta_path} does not exist")
    raw = _inside(root, meta_path, METADATA_FILE).read_bytes()
    actual = sha256_bytes(raw)
    if digest is not None and actual != digest:
        raise DigestMismatch(
            f"{METADATA_FILE} has digest {actual}, but the recorded digest is {digest}"
        )
    metadata = parse_metadata(raw)
    if metadata.format_version != FORMAT_VERSION:
        raise VerificationError(
            f"{METADATA_FILE} has formatVersion {metadata.format_version}; "
            f"this version reads {FORMAT_VERSION}"
        )
    if MODEL_FILE not in metadata.files:
        raise VerificationError(f"{METADATA_FILE} lists no digest for {MODEL_FILE}")
    for name, expected in metadata.files.items():
        path = root / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise VerificationError(f"{METADATA_FILE} lists a file outside the artifact: {name}")
        if not path.is_file():
            raise ArtifactNotFound(f"{path} is listed in {METADATA_FILE} but does not exist")
        found = sha256_file(_inside(root, path, name))
        if found != expected:
            raise DigestMismatch(
                f"{name} has digest {found}, but {METADATA_FILE} lists {expected}; "
                "refusing the artifact"
            )
    return metadata
