"""Fitting and judging: the hold-out split, optional cross-validation, metrics by task,
and the quality gate.

The saved model is the one fitted on the training rows, so the reported test metrics
describe exactly the model that is registered.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from sklearn.base import clone
from sklearn.model_selection import KFold, StratifiedKFold, cross_validate, train_test_split
from sklearn.pipeline import Pipeline

from orchard.api.trainingjob import Evaluation, Gate
from orchard.artifacts.calibration import calibrate
from orchard.trainer.artifact import decile_bins
from orchard.trainer.errors import GateFailed, TrainingError, without_data

Task = Literal["classification", "regression"]

CLASSIFICATION_METRICS = (
    "accuracy",
    "f1_macro",
    "precision_macro",
    "recall_macro",
    "roc_auc",
    "log_loss",
)
REGRESSION_METRICS = ("r2", "rmse", "mae")
# Metrics where lower is better (for a gate's meaning and a search's default direction).
LOWER_IS_BETTER = frozenset({"log_loss", "rmse", "mae"})
# sklearn scorer names for cross-validation (neg_* flipped back to positive below).
_CV_SCORERS: dict[Task, dict[str, str]] = {
    "classification": {"accuracy": "accuracy", "f1_macro": "f1_macro"},
    "regression": {
        "r2": "r2",
        "rmse": "neg_root_mean_squared_error",
        "mae": "neg_mean_absolute_error",
    },
}


@dataclass
class Evaluated:
    pipeline: Pipeline
    metrics: dict[str, float]
    prediction_stats: dict[str, Any]
    train_rows: int
    test_rows: int
    calibration: dict[str, Any] | None = None
    heldout: pd.DataFrame | None = None  # the test rows scored: inputs and target


def _finite(metrics: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in metrics.items() if math.isfinite(float(v))}


def classification_metrics(pipeline: Pipeline, x: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """accuracy, macro F1/precision/recall, and ROC AUC and log loss where the model can
    score probabilities (ROC AUC one-vs-rest for more than two classes)."""
    predicted = pipeline.predict(x)
    out = {
        "accuracy": skm.accuracy_score(y, predicted),
        "f1_macro": skm.f1_score(y, predicted, average="macro", zero_division=0),
        "precision_macro": skm.precision_score(y, predicted, average="macro", zero_division=0),
        "recall_macro": skm.recall_score(y, predicted, average="macro", zero_division=0),
    }
    classes = list(pipeline.classes_)
    proba = pipeline.predict_proba(x) if hasattr(pipeline, "predict_proba") else None
    try:
        if len(classes) == 2:
            score = proba[:, 1] if proba is not None else pipeline.decision_function(x)
            out["roc_auc"] = skm.roc_auc_score(y, score)
        elif proba is not None:
            out["roc_auc"] = skm.roc_auc_score(y, proba, multi_class="ovr", labels=classes)
    except (ValueError, AttributeError):
        pass  # undefined, e.g. a class absent from the test rows
    if proba is not None:
        with contextlib.suppress(ValueError):  # undefined, e.g. a label the model never saw
            out["log_loss"] = skm.log_loss(y, proba, labels=classes)
    return _finite(out)


def regression_metrics(pipeline: Pipeline, x: pd.DataFrame, y: pd.Series) -> dict[str, float]:
    """R², RMSE and MAE."""
    predicted = pipeline.predict(x)
    return _finite(
        {
            "r2": skm.r2_score(y, predicted),
            "rmse": skm.root_mean_squared_error(y, predicted),
            "mae": skm.mean_absolute_error(y, predicted),
        }
    )


def prediction_stats(predicted: np.ndarray, task: Task) -> dict[str, Any]:
    """The distribution of predictions on the test rows: the prediction-shift baseline
    (classes: their shares, which are also the drift bins; values: decile drift bins)."""
    if task == "classification":
        labels, counts = np.unique(np.asarray(predicted).astype(str), return_counts=True)
        total = counts.sum()
        return {
            "classes": {
                str(k): round(float(c / total), 6) for k, c in zip(labels, counts, strict=True)
            }
        }
    values = np.asarray(predicted, dtype=float)
    return {
        "mean": round(float(values.mean()), 6),
        "std": round(float(values.std()), 6),
        "quantiles": [round(float(q), 6) for q in np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])],
        "bins": decile_bins(values),
    }


def calibration(pipeline: Pipeline, x: pd.DataFrame, y: pd.Series) -> dict[str, Any] | None:
    """A classifier's held-out accuracy per confidence bin (`orchard.artifacts.calibration`);
    None for a model without `predict_proba`."""
    if not hasattr(pipeline, "predict_proba"):
        return None
    confidence = np.asarray(pipeline.predict_proba(x), dtype=float).max(axis=1)
    correct = np.asarray(pipeline.predict(x)) == np.asarray(y)
    bins = calibrate(confidence.tolist(), correct.tolist())
    return {"edges": list(bins.edges), "accuracy": list(bins.accuracy), "rows": list(bins.rows)}


def _stratify(y: pd.Series, test_size: float) -> pd.Series | None:
    """Stratify when every class can appear on both sides of the split."""
    counts = y.value_counts()
    n_test = math.ceil(test_size * len(y))
    if counts.min() >= 2 and n_test >= len(counts) and len(y) - n_test >= len(counts):
        return y
    return None


def fit_and_evaluate(
    pipeline: Pipeline,
    x: pd.DataFrame,
    y: pd.Series,
    task: Task,
    evaluation: Evaluation,
    *,
    named: Iterable[str] = (),
) -> Evaluated:
    """Split, optionally cross-validate on the training rows, fit, and score the test rows.

    A failure is a `TrainingError` whose message keeps scikit-learn's words but none of
    the values it quotes from the data (`without_data`), except the texts in `named`: what
    the spec itself named.
    """
    stratify = _stratify(y, evaluation.test_size) if task == "classification" else None
    metrics: dict[str, float] = {}
    try:
        x_train, x_test, y_train, y_test = train_test_split(
            x,
            y,
            test_size=evaluation.test_size,
            random_state=evaluation.random_state,
            stratify=stratify,
        )
        if evaluation.cv_folds >= 2:
            metrics.update(_cross_validate(pipeline, x_train, y_train, task, evaluation))
        pipeline.fit(x_train, y_train)
        scored = (classification_metrics if task == "classification" else regression_metrics)(
            pipeline, x_test, y_test
        )
        predicted = pipeline.predict(x_test)
        calibrated = calibration(pipeline, x_test, y_test) if task == "classification" else None
    except (ValueError, TypeError, ArithmeticError, MemoryError) as exc:
        raise TrainingError(
            f"fitting {type(pipeline.steps[-1][1]).__name__} failed: "
            f"{without_data(str(exc), named)}"
        ) from exc
    return Evaluated(
        pipeline=pipeline,
        metrics={**scored, **metrics},
        prediction_stats=prediction_stats(predicted, task),
        train_rows=len(x_train),
        test_rows=len(x_test),
        calibration=calibrated,
        heldout=pd.concat([x_test, y_test], axis=1).reset_index(drop=True),
    )


def _cross_validate(
    pipeline: Pipeline, x: pd.DataFrame, y: pd.Series, task: Task, evaluation: Evaluation
) -> dict[str, float]:
    """Mean and spread of k-fold scores, as cv_<metric> and cv_<metric>_std."""
    folds = evaluation.cv_folds
    splitter: KFold | StratifiedKFold
    if task == "classification" and y.value_counts().min() >= folds:
        splitter = StratifiedKFold(folds, shuffle=True, random_state=evaluation.random_state)
    else:
        splitter = KFold(folds, shuffle=True, random_state=evaluation.random_state)
    scorers = _CV_SCORERS[task]
    result = cross_validate(
        clone(pipeline), x, y, cv=splitter, scoring=scorers, error_score="raise"
    )
    out: dict[str, float] = {}
    for name, scorer in scorers.items():
        scores = result[f"test_{name}"] * (-1 if scorer.startswith("neg_") else 1)
        out[f"cv_{name}"] = float(np.mean(scores))
        out[f"cv_{name}_std"] = float(np.std(scores))
    return _finite(out)


def gate_verdict(gate: Gate, metrics: dict[str, float]) -> dict[str, Any]:
    """Whether the metrics pass the gate, with the values that decided it."""
    value = metrics.get(gate.metric)
    passed = (
        value is not None
        and (gate.min is None or value >= gate.min)
        and (gate.max is None or value <= gate.max)
    )
    verdict: dict[str, Any] = {"passed": passed, "metric": gate.metric, "value": value}
    if gate.min is not None:
        verdict["min"] = gate.min
    if gate.max is not None:
        verdict["max"] = gate.max
    return verdict


def check_gate(gate: Gate, metrics: dict[str, float]) -> None:
    """Raise `GateFailed` unless the metrics pass the gate."""
    v = gate_verdict(gate, metrics)
    if v["passed"]:
        return
    bounds = " and ".join(
        f"{op} {b:g}" for op, b in ((">=", gate.min), ("<=", gate.max)) if b is not None
    )
    if v["value"] is None:
        message = (
            f"gate metric {gate.metric!r} was not computed; metrics: {', '.join(sorted(metrics))}"
        )
    else:
        message = f"{gate.metric} = {v['value']:.4g}, but the gate requires {bounds}"
    raise GateFailed(message, metric=gate.metric, value=v["value"], min=gate.min, max=gate.max)
