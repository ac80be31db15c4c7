"""The loaded model: rows of many requests in, one `predict` call, each request's rows out.

`ModelRunner.predict_batch` runs on the single inference thread. The requests that ask
for class probabilities (`outputs.PROBABILITIES`) share one `predict_proba` call too,
beside the batch's `predict`: their labels are the model's own `predict`, whatever
the estimator derives them from. It also summarises the
batch's inputs and predictions (a few vectorised numpy calls) so that the event loop only
adds numbers into the metrics. The rows of replayed requests (`contracts.REPLAY_HEADER`)
are predicted with the rest but left out of the summaries and the confidence sample; only
their classes are counted, apart.

The model answers through the runtime `use_runtime` chose (`orchard.serving.runtime`):
its ONNX graph when that answers the held-out rows as the pipeline does, else the
pipeline; `runtime` says which and why.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchard.artifacts.calibration import ConfidenceBins
from orchard.artifacts.drift import CategoryBins, NumericBins
from orchard.artifacts.metadata import FeatureStats
from orchard.serving.artifact import Column
from orchard.serving.inputs import Array, Rows, Schema
from orchard.serving.metrics import category_label
from orchard.serving.runtime import SKLEARN, Mode, OnnxModel, PipelineRows, Runtime

log = logging.getLogger("orchard.serving")

# The estimate of accuracy rests on a sample: at most this many rows of a batch, at most
# once in this many seconds, scored again with predict_proba between batches.
ESTIMATE_ROWS = 32
ESTIMATE_EVERY = 1.0


@dataclass
class FeatureSummary:
    """Per-batch input statistics, in schema order."""

    count: list[int] = field(default_factory=list)  # non-missing values (numeric columns)
    missing: list[int] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    squares: list[float] = field(default_factory=list)
    categories: dict[str, Counter[str]] = field(default_factory=dict)  # by category_label
    # Numeric columns with a training baseline: rows per drift bin, and values outside
    # the training range, by column index.
    bins: dict[int, list[int]] = field(default_factory=dict)
    out_of_range: dict[int, int] = field(default_factory=dict)


@dataclass(frozen=True)
class NumericBaseline:
    """What a numeric input is checked against: its training bins and range."""

    edges: Array
    low: float
    high: float

    @classmethod
    def of(cls, stats: FeatureStats | None) -> NumericBaseline | None:
        if stats is None or stats.bins is None or stats.min is None or stats.max is None:
            return None  # an artifact older than drift bins, or a column with no values
        return cls(np.asarray(stats.bins.edges, dtype=float), stats.min, stats.max)


@dataclass
class PredictionSummary:
    """Per-batch prediction statistics: class counts, or values for regression."""

    classes: Counter[str] = field(default_factory=Counter)
    values: list[float] = field(default_factory=list)
    bins: list[int] = field(default_factory=list)  # values per prediction drift bin
    replayed: Counter[str] = field(default_factory=Counter)  # replayed requests' classes


@dataclass
class BatchResult:
    """What one trip to the inference thread gives back."""

    outputs: list[Array | BaseException]  # one per request, in order
    features: FeatureSummary
    predictions: PredictionSummary
    predict_calls: int
    predict_seconds: float
    sample: Rows | None = None  # rows to score for the estimate of accuracy, when due
    # One per request when some asked for class probabilities (None: this one did not).
    probabilities: list[Array | BaseException | None] = field(default_factory=list)


@dataclass(slots=True)  # not frozen: one per request, and a frozen one takes 1 µs to build
class Prediction:
    """One request's answer: its labels (or values), and the class probabilities if it
    asked for them (rows by `ModelRunner.classes`)."""

    labels: Array
    probabilities: Array | None = None


@dataclass(frozen=True)
class ModelFacts:
    """What the server reads off the fitted model, apart from predicting with it: what
    a server answering through the ONNX graph alone keeps instead of the model
    (`orchard.serving.isolated`), so that it never imports scikit-learn."""

    n_features: int | None
    fitted_columns: list[str] | None  # feature_names_in_: fitted on a DataFrame
    classes: Array | None
    has_predict_proba: bool

    @classmethod
    def of(cls, model: Any) -> ModelFacts:
        n_features = getattr(model, "n_features_in_", None)
        fitted = getattr(model, "feature_names_in_", None)
        classes = getattr(model, "classes_", None)
        return cls(
            int(n_features) if n_features is not None else None,
            [str(c) for c in fitted] if fitted is not None else None,
            np.asarray(classes) if classes is not None else None,
            hasattr(model, "predict_proba"),
        )


class ModelRunner:
    """A fitted scikit-learn estimator and the schema its rows follow.

    `model` is None when its ONNX graph answers every row (`adopt`): `facts` then say
    what the model would have."""

    def __init__(
        self,
        model: Any,
        columns: list[Column],
        task: str | None = None,
        baseline: Mapping[str, FeatureStats] | None = None,
        prediction_bins: NumericBins | CategoryBins | None = None,
        confidence_bins: ConfidenceBins | None = None,
        facts: ModelFacts | None = None,
    ) -> None:
        self.model = model
        self.facts = facts if facts is not None else ModelFacts.of(model)
        n_features = self.facts.n_features
        self.schema = Schema(columns, n_features)
        self.baselines = [NumericBaseline.of((baseline or {}).get(n)) for n in self.schema.names]
        self.drift_bins = {
            name: bins
            for name, stats in (baseline or {}).items()
            if name in self.schema.names and (bins := stats.drift_bins()) is not None
        }
        self.prediction_bins = prediction_bins
        # Calibrated at training and able to say its confidence: accuracy can be estimated.
        self.confidence_bins = confidence_bins if self.facts.has_predict_proba else None
        self._next_sample = 0.0
        # Fitted on a DataFrame (ColumnTransformer by name, say): it needs one back.
        fitted = self.facts.fitted_columns
        self.needs_frame = fitted is not None and bool(columns)
        if fitted is not None and self.needs_frame:
            if sorted(fitted) != sorted(self.schema.names):
                # Every request would fail in predict: better not to become ready at all.
                raise ValueError(
                    f"the model was fitted on columns {fitted}, "
                    f"but the metadata's inputs are {self.schema.names}"
                )
        elif n_features is not None and n_features != self.schema.width:
            raise ValueError(
                f"the model takes {n_features} features, "
                f"but the metadata lists {self.schema.width} inputs"
            )
        classes = self.facts.classes
        self.classification = task == "classification" if task else classes is not None
        self.classes = classes
        # The classes as JSON values, in the order of predict_proba's columns; None for a
        # model without class probabilities (a regressor, an SVC without probability=True).
        probabilities = self.classification and self.facts.has_predict_proba
        self.class_list: list[Any] | None = (
            self.classes.tolist() if probabilities and self.classes is not None else None
        )
        self.output_datatype = (
            output_datatype(classes) if self.classification and classes is not None
            else "FP64" if not self.classification else "BYTES"
        )  # fmt: skip
        self._frame_type: Any = None
        self.runtime = Runtime(SKLEARN, "the pipeline (no runtime selected)")
        self.native: OnnxModel | None = None

    def use_runtime(self, mode: Mode = "auto", heldout: Any = None) -> Runtime:
        """Choose what answers (`runtime.select`), checked against this pipeline on the
        held-out rows (a DataFrame, or None); one log line says which and why."""
        from orchard.serving.runtime import select

        self.native = None
        runtime, native = select(
            self.model, self.schema.columns, named=self.needs_frame, width=self.schema.width or 0,
            classes=self.classes if self.classification else None,
            classification=self.classification,
            reference=(self.predict, self.probabilities if self.has_probabilities else None),
            heldout=heldout, mode=mode,
        )  # fmt: skip
        self.runtime, self.native = runtime, native
        log.info("runtime %s: %s", runtime.name, runtime.reason)
        return runtime

    def adopt(self, runtime: Runtime, native: OnnxModel | None) -> None:
        """Answer through a runtime chosen elsewhere (`orchard.serving.isolated`)."""
        if native is None and self.model is None:
            raise ValueError("neither an ONNX graph nor the pipeline to answer with")
        self.runtime, self.native = runtime, native
        log.info("runtime %s: %s", runtime.name, runtime.reason)

    @property
    def has_probabilities(self) -> bool:
        return self.class_list is not None

    # --- inference thread ---------------------------------------------------------------

    def to_model_input(self, rows: Rows) -> Any:
        if self.needs_frame:
            if self._frame_type is None:
                import pandas as pd  # only for pipelines fitted on a DataFrame

                self._frame_type = pd.DataFrame
            names = self.schema.names
            if isinstance(rows, list):
                return self._frame_type(dict(zip(names, rows, strict=True)), copy=False)
            return self._frame_type(rows, columns=names, copy=False)
        if isinstance(rows, list):
            return np.column_stack(rows)
        return rows

    def predict(self, rows: Rows) -> Array:
        if self.native is not None:
            try:
                return self.native.predict(rows)
            except PipelineRows:
                if self.model is None:
                    raise ValueError("these rows need the pipeline, which is not loaded") from None
        out = np.asarray(self.model.predict(self.to_model_input(rows)))
        return out.reshape(len(out), -1)[:, 0] if out.ndim > 1 and out.shape[1] == 1 else out

    def probabilities(self, rows: Rows) -> Array:
        """Class probabilities: a row per row, a column per class in `classes` order."""
        if self.native is not None:
            try:
                return self.native.probabilities(rows)
            except PipelineRows:
                if self.model is None:
                    raise ValueError("these rows need the pipeline, which is not loaded") from None
        return np.asarray(self.model.predict_proba(self.to_model_input(rows)), dtype=np.float64)

    def predict_batch(
        self,
        parts: list[Rows],
        sizes: list[int],
        replayed: Sequence[bool] | None = None,
        proba: Sequence[bool] | None = None,
    ) -> BatchResult:
        """Predict all parts in one call; if that fails, each part alone so one bad part fails.

        `replayed` marks the parts of replayed requests (None: none is): their rows are
        predicted, but neither summarised nor sampled. `proba` marks the parts that ask
        for class probabilities (None: none does)."""
        import time

        rows = concat(parts)
        live = rows if replayed is None else _live(parts, replayed)
        features = self.summarise_inputs(live) if live is not None else FeatureSummary()
        start = time.perf_counter()
        outputs, calls = _each("predict", self.predict, parts, sizes, whole=rows)
        probabilities: list[Array | BaseException | None] = []
        if proba is not None and any(proba):
            asking = [i for i, p in enumerate(proba) if p]
            found, more = _each(
                "predict_proba", self.probabilities,
                [parts[i] for i in asking], [sizes[i] for i in asking],
            )  # fmt: skip
            calls += more
            probabilities = [None] * len(parts)
            for i, p in zip(asking, found, strict=True):
                probabilities[i] = p
        seconds = time.perf_counter() - start
        sample = None
        due = self.confidence_bins is not None and time.monotonic() >= self._next_sample
        if due and live is not None:
            self._next_sample = time.monotonic() + ESTIMATE_EVERY
            sample = head(live, ESTIMATE_ROWS)
        return BatchResult(
            outputs, features, self.summarise_outputs(outputs, replayed), calls, seconds, sample,
            probabilities,
        )  # fmt: skip

    def confidence_counts(self, rows: Rows) -> list[int]:
        """Rows per confidence bin (`orchard.artifacts.calibration`); [] when the model
        cannot score them (the estimate then goes without this sample)."""
        bins = self.confidence_bins
        if bins is None:
            return []
        try:
            proba = self.probabilities(rows)
        except Exception as exc:
            log.info("predict_proba failed on a sample: %s", describe(exc))
            return []
        where = np.searchsorted(np.asarray(bins.edges), proba.max(axis=1), side="right")
        counts: list[int] = np.bincount(where, minlength=len(bins.accuracy)).tolist()
        return counts

    def summarise_inputs(self, rows: Rows) -> FeatureSummary:
        s = FeatureSummary()
        cols: list[Array] = list(rows.T) if isinstance(rows, np.ndarray) else rows
        numeric = [c.numeric for c in self.schema.columns] or [True] * len(cols)
        for j, col in enumerate(cols):
            if numeric[j]:
                finite = col[~np.isnan(col)]
                s.count.append(int(finite.size))
                s.missing.append(int(col.size - finite.size))
                s.total.append(float(finite.sum()))
                s.squares.append(float(np.dot(finite, finite)))
                base = self.baselines[j] if j < len(self.baselines) else None
                if base is not None:
                    where = np.searchsorted(base.edges, finite, side="right")
                    s.bins[j] = np.bincount(where, minlength=len(base.edges) + 1).tolist()
                    s.out_of_range[j] = int(
                        np.count_nonzero((finite < base.low) | (finite > base.high))
                    )
            else:
                values: Counter[str] = Counter()
                missing = 0
                for v in col:
                    if isinstance(v, str):
                        values[v] += 1
                    else:
                        missing += 1
                labels: Counter[str] = Counter()
                for v, n in values.items():  # here, off the event loop
                    labels[category_label(v)] += n
                s.count.append(int(col.size - missing))
                s.missing.append(missing)
                s.total.append(0.0)
                s.squares.append(0.0)
                s.categories[self.schema.names[j]] = labels
        return s

    def summarise_outputs(
        self, outputs: list[Array | BaseException], replayed: Sequence[bool] | None = None
    ) -> PredictionSummary:
        """Live requests' classes or values; replayed requests' classes apart, and their
        values nowhere."""
        s = PredictionSummary()
        for i, out in enumerate(outputs):
            if isinstance(out, BaseException):
                continue
            replay = replayed is not None and replayed[i]
            if self.classification:
                values, counts = np.unique(out, return_counts=True)
                into = s.replayed if replay else s.classes
                for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                    into[str(v)] += int(c)
            elif not replay:
                s.values.extend(float(v) for v in out.tolist() if math.isfinite(float(v)))
        if isinstance(self.prediction_bins, NumericBins) and s.values:
            s.bins = self.prediction_bins.count(s.values)
        return s


def describe(exc: BaseException) -> str:
    """`Type: first line of the message`, at most 300 characters: for a response and a log."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    return text if len(text) <= 300 else text[:297] + "..."


def _each(
    what: str,
    fn: Callable[[Rows], Array],
    parts: list[Rows],
    sizes: list[int],
    whole: Rows | None = None,
) -> tuple[list[Array | BaseException], int]:
    """`fn` on all parts at once (`whole`: their rows, already joined), split back per
    part; if that fails, on each part alone, so that only a part `fn` cannot take fails.
    Also the number of calls made. `what` names `fn` in the log."""
    try:
        out = fn(concat(parts) if whole is None else whole)
        if len(out) != sum(sizes):
            raise ValueError(f"model returned {len(out)} predictions for {sum(sizes)} rows")
        return (list(np.split(out, np.cumsum(sizes)[:-1])) if len(parts) > 1 else [out]), 1
    except Exception as exc:
        if len(parts) == 1:
            log.warning("%s failed: %s", what, describe(exc))
            return [exc], 1
    results: list[Array | BaseException] = []
    for part in parts:  # alone, so only the request that breaks it fails
        try:
            results.append(fn(part))
        except Exception as one:
            log.warning("%s failed: %s", what, describe(one))
            results.append(one)
    return results, 1 + len(parts)


def _live(parts: list[Rows], replayed: Sequence[bool]) -> Rows | None:
    """The rows of the parts not replayed, in one batch; None when every part is."""
    live = [part for part, replay in zip(parts, replayed, strict=True) if not replay]
    return concat(live) if live else None


def head(rows: Rows, n: int) -> Rows:
    """The first n rows (columns of a named schema cut alike)."""
    if isinstance(rows, list):
        return [col[:n] for col in rows]
    return rows[:n]


def concat(parts: list[Rows]) -> Rows:
    """One batch from many requests' rows (all in the same form)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(parts, axis=0)
    return [np.concatenate([p[j] for p in parts]) for j in range(len(first))]


def output_datatype(values: Array) -> str:
    """The V2 datatype of a prediction array."""
    kind = values.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iu":
        return "INT64"
    if kind == "f":
        return "FP64"
    return "BYTES"


def output_data(values: Array) -> Any:
    """Predictions in a form orjson writes directly (numeric arrays) or as plain lists."""
    kind = values.dtype.kind
    if kind in "iu":
        return values.astype(np.int64, copy=False)
    if kind == "f":
        return values.astype(np.float64, copy=False)
    if kind == "b":
        return values
    return [v if isinstance(v, str) else str(v) for v in values.tolist()]
