"""This pod's own view of what it served: `GET /v2/models/{m}/monitoring`.

The same figures the operator works out for a deployment (drift of each input and of the
predictions against the training baseline, live accuracy from feedback, the estimate
from confidence), here from this process's counters alone, since it started: for a
person who asks one pod, or a script that reads it without Prometheus. The operator does
not read it; it sums the pods' `/metrics` over its own window (`orchard.decisions.monitoring`).
"""

from __future__ import annotations

import time
from typing import Any

from orchard.artifacts.calibration import estimate
from orchard.artifacts.drift import PSI_THRESHOLD, psi_by_bin, psi_by_category
from orchard.serving.metrics import Metrics

STARTED = time.time()


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _inputs(metrics: Metrics) -> list[dict[str, Any]]:
    out = []
    for j, name in enumerate(metrics.features):
        if (bins := metrics.expected_bins.get(name)) is not None:
            counts = metrics.f_bins.get(j, [])
            score, samples = psi_by_bin(
                {str(b): share for b, share in enumerate(bins)},
                {str(b): float(n) for b, n in enumerate(counts)},
            )
        elif (shares := metrics.expected_categories.get(name)) is not None:
            seen = {c: float(n) for c, n in metrics.f_categories.get(name, {}).items()}
            score, samples = psi_by_category(shares, seen)
        else:
            continue
        present = metrics.f_count[j] if j < len(metrics.f_count) else 0
        missing = metrics.f_missing[j] if j < len(metrics.f_missing) else 0
        entry: dict[str, Any] = {
            "feature": name,
            "psi": round(score, 4),
            "samples": samples,
            "missingShare": _round(missing / (present + missing)) if present + missing else None,
        }
        if j in metrics.f_out_of_range and present:
            entry["outOfRangeShare"] = _round(metrics.f_out_of_range[j] / present)
        out.append(entry)
    return sorted(out, key=lambda d: (-d["psi"], d["feature"]))


def _predictions(metrics: Metrics) -> dict[str, Any] | None:
    expected = metrics.expected_predictions
    if not expected:
        return None
    if metrics.regression:
        counts = {str(b): float(n) for b, n in enumerate(metrics.prediction_bins)}
        score, samples = psi_by_bin(expected, counts)
    else:
        classes = {c: float(n) for c, n in metrics.classes.items()}
        score, samples = psi_by_category(expected, classes)
    return {"psi": round(score, 4), "samples": samples}


def _accuracy(metrics: Metrics) -> dict[str, Any]:
    rows = metrics.feedback_rows
    out: dict[str, Any] = {"labels": rows, "unmatched": metrics.feedback_unmatched}
    if metrics.regression:
        out["mae"] = _round(metrics.feedback_absolute_error / rows) if rows else None
        out["rmse"] = _round((metrics.feedback_squared_error / rows) ** 0.5) if rows else None
        return out
    out["accuracy"] = _round(metrics.feedback_correct / rows) if rows else None
    out["recall"] = {
        label: round(correct / n, 4)
        for label, (n, correct) in sorted(metrics.feedback_by_class.items())
        if n
    }
    if metrics.confidence_accuracy:
        out["estimated"] = _round(estimate(metrics.confidence_counts, metrics.confidence_accuracy))
        out["estimatedFrom"] = sum(metrics.confidence_counts)
    return out


def pod_view(metrics: Metrics, version: str | None) -> dict[str, Any]:
    """This process's monitoring figures since it started, as JSON."""
    inputs = _inputs(metrics)
    prediction = _predictions(metrics)
    scores = [d["psi"] for d in inputs] + ([prediction["psi"]] if prediction else [])
    samples = sum(metrics.classes.values()) if not metrics.regression else metrics.values.count
    return {
        "model_name": metrics.model,
        "model_version": version,
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(STARTED)),
        "samples": samples,
        "driftScore": max(scores) if scores else None,
        "driftThreshold": PSI_THRESHOLD,
        "inputs": inputs,
        "predictionDrift": prediction,
        "accuracy": _accuracy(metrics),
    }
