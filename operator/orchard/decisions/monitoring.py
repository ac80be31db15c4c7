"""Monitoring a served version from its pods' own metrics: pure.

Each serving pod counts its inputs in the drift bins its artifact fixed at training, and
its predictions by class (or, for a regression, in the bins of its test-row predictions),
and states that artifact's training shares beside them (see `orchard.contracts`). The
operator keeps a window of those counts summed over the stable pods (`MonitoringWindow`,
stored in a ConfigMap so that a restart of the operator loses nothing) and compares it
here with the training shares, by the population stability index
(`orchard.artifacts.drift`). Numbers are compared bin by bin; categories by the training
categories plus one bin for every other value.

The window is a list of slices, each the counters' increase over a few scrapes: a slice
ages out as a whole, so the window spans between `span - slice` and `span`. A pod's
counters going down mean its process restarted: its new values are all of the increase
(Prometheus' reset rule), so a restart loses at most what a pod counted since its last
scrape, and a pod seen for the first time counts its whole life.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from orchard.api.common import Condition, ConditionStatus, parse_timestamp, set_condition
from orchard.api.modeldeployment import (
    AccuracyMonitoring,
    InputDrift,
    LiveAccuracy,
    LiveMetric,
    Monitoring,
    MonitoringStatus,
    PredictionDrift,
    TrackMonitoring,
)
from orchard.artifacts.calibration import estimate
from orchard.artifacts.drift import PSI_THRESHOLD, psi_by_bin, psi_by_category
from orchard.contracts import (
    BIN_LABEL,
    CATEGORY_LABEL,
    CLASS_LABEL,
    CONFIDENCE_ACCURACY,
    CONFIDENCE_BIN,
    FEATURE_BIN,
    FEATURE_BIN_EXPECTED,
    FEATURE_CATEGORY,
    FEATURE_CATEGORY_EXPECTED,
    FEATURE_LABEL,
    FEATURE_MISSING,
    FEATURE_OBSERVATIONS,
    FEATURE_OUT_OF_RANGE,
    FEEDBACK_ABSOLUTE_ERROR,
    FEEDBACK_CLASS_CORRECT,
    FEEDBACK_CLASS_ROWS,
    FEEDBACK_CORRECT,
    FEEDBACK_ROWS,
    FEEDBACK_SQUARED_ERROR,
    FEEDBACK_UNMATCHED,
    PREDICTED_CLASS,
    PREDICTED_VALUE,
    PREDICTION_BIN,
    PREDICTION_EXPECTED,
)

from .metrics_text import Labels, Scrape, delta, merge

DRIFT_DETECTED = "DriftDetected"
# Reasons of the DriftDetected condition and the events of its transitions.
DRIFTED = "Drifted"
NO_DRIFT = "NoDrift"
NOT_ENOUGH_SAMPLES = "NotEnoughSamples"
NO_BASELINE = "NoBaseline"  # an artifact older than drift bins
DRIFT_RESOLVED = "DriftResolved"
ACCURACY_DEGRADED = "AccuracyDegraded"
# Reasons of the AccuracyDegraded condition and the events of its transitions.
DEGRADED = "Degraded"
WITHIN_THRESHOLD = "WithinThreshold"
NO_THRESHOLD = "NoThreshold"  # no threshold given and no registered value to derive one
ACCURACY_RECOVERED = "AccuracyRecovered"
MONITORING_CONDITIONS = (DRIFT_DETECTED, ACCURACY_DEGRADED)

MAX_SLICES = 12  # slices per window: the window's resolution
MAX_INPUTS_SHOWN = 5  # inputs listed in status, most drifted first
# The counters a window keeps: the rest of a scrape is not monitoring's.
WINDOW_COUNTERS = frozenset(
    {
        FEATURE_BIN,
        FEATURE_CATEGORY,
        FEATURE_OBSERVATIONS,
        FEATURE_MISSING,
        FEATURE_OUT_OF_RANGE,
        PREDICTED_CLASS,
        PREDICTION_BIN,
        f"{PREDICTED_VALUE}_count",
        FEEDBACK_ROWS,
        FEEDBACK_CORRECT,
        FEEDBACK_CLASS_ROWS,
        FEEDBACK_CLASS_CORRECT,
        FEEDBACK_ABSOLUTE_ERROR,
        FEEDBACK_SQUARED_ERROR,
        FEEDBACK_UNMATCHED,
        CONFIDENCE_BIN,
    }
)
Counts = dict[tuple[str, Labels], float]


# --- Drift of a window against the training baseline -------------------------------------


@dataclass(frozen=True)
class FeatureDrift:
    """One input's drift over a window: its PSI and how many values it rests on."""

    feature: str
    psi: float
    samples: int

    def drifted(self, threshold: float = PSI_THRESHOLD, min_samples: int = 1) -> bool:
        return self.samples >= min_samples and self.psi > threshold


def _by_label(scrape: Scrape, name: str, key: str) -> dict[str, float]:
    return {
        found[key]: value
        for (metric, labels), value in scrape.items()
        if metric == name and key in (found := dict(labels))
    }


def _by_feature(scrape: Scrape, name: str, key: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (metric, labels), value in scrape.items():
        if metric != name:
            continue
        found = dict(labels)
        if FEATURE_LABEL in found and key in found:
            out.setdefault(found[FEATURE_LABEL], {})[found[key]] = value
    return out


def feature_drift(window: Scrape, baseline: Scrape) -> list[FeatureDrift]:
    """Every input with a training baseline, most drifted first.

    `window`: the counts of a version's pods over the window, summed; `baseline`: a scrape
    of one of its pods (every pod of a version states the same training shares).
    """
    drift: list[FeatureDrift] = []
    numeric = _by_feature(window, FEATURE_BIN, BIN_LABEL)
    for feature, expected in _by_feature(baseline, FEATURE_BIN_EXPECTED, BIN_LABEL).items():
        score, samples = psi_by_bin(expected, numeric.get(feature, {}))
        drift.append(FeatureDrift(feature, score, samples))
    categories = _by_feature(window, FEATURE_CATEGORY, CATEGORY_LABEL)
    expected_categories = _by_feature(baseline, FEATURE_CATEGORY_EXPECTED, CATEGORY_LABEL)
    for feature, expected in expected_categories.items():
        score, samples = psi_by_category(expected, categories.get(feature, {}))
        drift.append(FeatureDrift(feature, score, samples))
    return sorted(drift, key=lambda d: (-d.psi, d.feature))


def prediction_drift(window: Scrape, baseline: Scrape) -> PredictionDrift | None:
    """The predictions' PSI against the test rows' at training: class shares (a class
    training never predicted counts as other), or a regression's value bins. None when
    the pods state no prediction baseline (an artifact older than it)."""
    by_class = _by_label(baseline, PREDICTION_EXPECTED, CLASS_LABEL)
    if by_class:
        score, samples = psi_by_category(by_class, _by_label(window, PREDICTED_CLASS, CLASS_LABEL))
        return PredictionDrift(psi=round(score, 4), samples=samples)
    by_bin = _by_label(baseline, PREDICTION_EXPECTED, BIN_LABEL)
    if by_bin:
        score, samples = psi_by_bin(by_bin, _by_label(window, PREDICTION_BIN, BIN_LABEL))
        return PredictionDrift(psi=round(score, 4), samples=samples)
    return None


def predicted_rows(window: Scrape) -> int:
    """Rows the pods predicted in the window (classes counted, or values observed)."""
    return int(
        sum(v for (name, _), v in window.items() if name == PREDICTED_CLASS)
        + sum(v for (name, _), v in window.items() if name == f"{PREDICTED_VALUE}_count")
    )


def input_drift(window: Scrape, baseline: Scrape) -> list[InputDrift]:
    """Each input with a baseline, most drifted first, with its missing and out-of-range
    shares (of the window's rows and of a number's present values)."""
    present = _by_label(window, FEATURE_OBSERVATIONS, FEATURE_LABEL)
    missing = _by_label(window, FEATURE_MISSING, FEATURE_LABEL)
    outside = _by_label(window, FEATURE_OUT_OF_RANGE, FEATURE_LABEL)

    def share(part: float | None, whole: float) -> float | None:
        return None if part is None or whole <= 0 else round(min(part / whole, 1.0), 4)

    return [
        InputDrift(
            feature=d.feature,
            psi=round(d.psi, 4),
            samples=d.samples,
            missing_share=share(
                missing.get(d.feature), present.get(d.feature, 0.0) + missing.get(d.feature, 0.0)
            ),
            out_of_range_share=share(outside.get(d.feature), present.get(d.feature, 0.0)),
        )
        for d in feature_drift(window, baseline)
    ]


# --- Live accuracy from feedback ----------------------------------------------------------


def _total(window: Scrape, name: str) -> float:
    return sum(v for (metric, _), v in window.items() if metric == name)


def higher_is_better(metric: LiveMetric) -> bool:
    return metric == "accuracy"


def default_metric(settings: AccuracyMonitoring, task: str | None) -> LiveMetric:
    """The spec's metric, else accuracy for a classifier and rmse for a regression."""
    return settings.metric or ("rmse" if task == "regression" else "accuracy")


def threshold(
    settings: AccuracyMonitoring, metric: LiveMetric, registered: float | None
) -> float | None:
    """The spec's bound, else the registered test value worsened by maxDegradation."""
    if settings.threshold is not None:
        return settings.threshold
    if registered is None:
        return None
    factor = (
        1 - settings.max_degradation if higher_is_better(metric) else 1 + settings.max_degradation
    )
    return round(registered * factor, 6)


def estimated_accuracy(window: Scrape, baseline: Scrape) -> tuple[float | None, int]:
    """The accuracy the window's sampled confidences imply, by the held-out accuracy of
    each confidence bin the pods state (`orchard.artifacts.calibration`), and the rows."""
    accuracy = _by_label(baseline, CONFIDENCE_ACCURACY, BIN_LABEL)
    counts = _by_label(window, CONFIDENCE_BIN, BIN_LABEL)
    bins = sorted(accuracy, key=int)
    observed = [counts.get(b, 0.0) for b in bins]
    value = estimate(observed, [accuracy[b] for b in bins]) if bins else None
    return (None if value is None else round(value, 4)), int(sum(observed))


def live_accuracy(
    window: Scrape,
    metric: LiveMetric,
    bound: float | None,
    registered: float | None,
    baseline: Scrape | None = None,
) -> LiveAccuracy:
    """The metric over the window's labelled rows (None without any), recall per class,
    and for accuracy the estimate from confidence."""
    rows = _total(window, FEEDBACK_ROWS)
    value: float | None = None
    if rows > 0:
        if metric == "accuracy":
            value = _total(window, FEEDBACK_CORRECT) / rows
        elif metric == "mae":
            value = _total(window, FEEDBACK_ABSOLUTE_ERROR) / rows
        else:
            value = (_total(window, FEEDBACK_SQUARED_ERROR) / rows) ** 0.5
    by_class = _by_label(window, FEEDBACK_CLASS_ROWS, CLASS_LABEL)
    right = _by_label(window, FEEDBACK_CLASS_CORRECT, CLASS_LABEL)
    estimated, sampled = (
        estimated_accuracy(window, baseline) if metric == "accuracy" and baseline else (None, 0)
    )
    return LiveAccuracy(
        metric=metric,
        value=None if value is None else round(value, 4),
        labels=int(rows),
        unmatched=int(_total(window, FEEDBACK_UNMATCHED)),
        threshold=bound,
        registered=registered,
        recall={c: round(right.get(c, 0.0) / n, 4) for c, n in sorted(by_class.items()) if n > 0},
        estimated=estimated,
        estimated_from=sampled,
    )


# --- The window ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Slice:
    """The counters' increase, summed over pods, from `start` to the next slice."""

    start: dt.datetime
    counts: Counts


@dataclass(frozen=True)
class MonitoringWindow:
    """The counts of one version's pods over the window, and each pod's last counters
    (what its next scrape is differenced against)."""

    version: str | None = None
    pods: Mapping[str, Counts] = field(default_factory=dict)
    slices: tuple[Slice, ...] = ()

    def totals(self) -> Counts:
        return merge(s.counts for s in self.slices)

    def start(self) -> dt.datetime | None:
        return self.slices[0].start if self.slices else None


def _kept(scrape: Scrape) -> Counts:
    return {key: value for key, value in scrape.items() if key[0] in WINDOW_COUNTERS}


def advance(
    window: MonitoringWindow,
    version: str,
    scrapes: Mapping[str, Scrape],
    now: dt.datetime,
    span: float,
    interval: float,
) -> MonitoringWindow:
    """The window after this tick's scrapes of the version's pods (by pod name).

    Another version restarts the window; a pod not scraped this tick keeps its last
    counters (it may answer again), a pod that is gone leaves what it counted behind.
    """
    if window.version != version:
        window = MonitoringWindow(version=version)
    pods = dict(window.pods)
    increase: Counts = {}
    for pod, scrape in scrapes.items():
        now_counts = _kept(scrape)
        for key, value in delta(pods.get(pod), now_counts).items():
            if value > 0:
                increase[key] = increase.get(key, 0.0) + value
        pods[pod] = now_counts
    slices = [s for s in window.slices if (now - s.start).total_seconds() < span]
    step = max(interval, span / MAX_SLICES)
    if slices and (now - slices[-1].start).total_seconds() < step:
        slices[-1] = Slice(slices[-1].start, merge([slices[-1].counts, increase]))
    elif increase or slices:
        slices.append(Slice(now, increase))
    return MonitoringWindow(version, pods, tuple(slices))


@dataclass(frozen=True)
class TrackSeen:
    """One track's pods this tick: the version they serve, their scrapes, who exists."""

    version: str
    scrapes: Mapping[str, Scrape]
    alive: set[str]


def advance_tracks(
    windows: Mapping[str, MonitoringWindow],
    seen: Mapping[str, TrackSeen],
    now: dt.datetime,
    span: float,
    interval: float,
) -> dict[str, MonitoringWindow]:
    """Every serving track's window after this tick (a track that no longer serves, a
    rolled-out canary say, leaves its window; a promoted canary's becomes stable's)."""
    out: dict[str, MonitoringWindow] = {}
    for track, this in seen.items():
        window = carried_over(windows, track, this.version)
        window = advance(window, this.version, this.scrapes, now, span, interval)
        out[track] = forget_pods(window, this.alive)
    return out


def forget_pods(window: MonitoringWindow, alive: set[str]) -> MonitoringWindow:
    """Drop the last counters of pods that no longer exist (what they counted stays)."""
    return MonitoringWindow(
        window.version, {p: c for p, c in window.pods.items() if p in alive}, window.slices
    )


def _wire(counts: Mapping[tuple[str, Labels], float]) -> list[list[Any]]:
    return [[name, [list(kv) for kv in labels], value] for (name, labels), value in counts.items()]


def _unwire(rows: Any) -> Counts:
    out: Counts = {}
    for name, labels, value in rows:
        key = (str(name), tuple(sorted((str(k), str(v)) for k, v in labels)))
        out[key] = float(value)
    return out


def _window_wire(window: MonitoringWindow) -> dict[str, Any]:
    return {
        "version": window.version,
        "pods": {pod: _wire(c) for pod, c in sorted(window.pods.items())},
        "slices": [
            {"start": s.start.isoformat().replace("+00:00", "Z"), "counts": _wire(s.counts)}
            for s in window.slices
        ],
    }


def _window_unwire(data: Any) -> MonitoringWindow:
    return MonitoringWindow(
        version=str(data["version"]) if data.get("version") else None,
        pods={str(p): _unwire(c) for p, c in data.get("pods", {}).items()},
        slices=tuple(
            Slice(parse_timestamp(str(s["start"])), _unwire(s["counts"]))
            for s in data.get("slices", [])
        ),
    )


TRACKS = ("stable", "canary")


def dumps(windows: Mapping[str, MonitoringWindow]) -> str:
    """Each track's window as the JSON the operator stores."""
    data = {t: _window_wire(w) for t, w in windows.items() if t in TRACKS}
    return json.dumps(data, separators=(",", ":"))


def loads(text: str | None) -> dict[str, MonitoringWindow]:
    """The stored windows by track; none for text that is not theirs (written by hand,
    say): monitoring starts counting again rather than stop."""
    if not text:
        return {}
    try:
        data = json.loads(text)
        return {t: _window_unwire(data[t]) for t in TRACKS if t in data}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}


def carried_over(
    windows: Mapping[str, MonitoringWindow], track: str, version: str | None
) -> MonitoringWindow:
    """The window a track counts on: its own while it serves the same version, else the
    other track's when that served it (a promoted canary keeps what it counted)."""
    own = windows.get(track)
    if own is not None and own.version == version:
        return own
    other = windows.get("canary" if track == "stable" else "stable")
    if other is not None and other.version == version and version is not None:
        return other
    return MonitoringWindow()


# --- The verdict ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MonitoringDecision:
    """What one evaluation writes: status.monitoring, the conditions, and events."""

    monitoring: MonitoringStatus
    conditions: list[Condition]
    events: list[tuple[str, str, str]]  # (type, reason, message)


def _drift_verdict(
    status: MonitoringStatus, settings: Monitoring
) -> tuple[ConditionStatus, str, str]:
    if status.samples < settings.min_samples:
        return (
            "Unknown",
            NOT_ENOUGH_SAMPLES,
            f"{status.samples} rows predicted in the window, fewer than the "
            f"{settings.min_samples} drift is judged on",
        )
    if status.drift_score is None:
        return "Unknown", NO_BASELINE, f"{status.version} states no training baseline"
    limit = settings.drift_threshold
    drifted = [f"{d.feature} (PSI {d.psi:.2f})" for d in status.inputs if d.psi > limit]
    prediction = status.prediction_drift
    if prediction is not None and prediction.psi > limit:
        drifted.append(f"predictions (PSI {prediction.psi:.2f})")
    if drifted:
        return (
            "True",
            DRIFTED,
            f"{', '.join(drifted)} above {limit} over {status.samples} rows",
        )
    return (
        "False",
        NO_DRIFT,
        f"highest PSI {status.drift_score:.2f}, at most {limit}, over {status.samples} rows",
    )


def track_status(
    window: MonitoringWindow,
    baseline: Scrape,
    pods: int,
    settings: Monitoring,
    version: VersionFacts,
) -> TrackMonitoring:
    """One track's window against the baseline its pods state and its registered metric."""
    totals = window.totals()
    inputs = input_drift(totals, baseline)
    prediction = prediction_drift(totals, baseline)
    scores = [d.psi for d in inputs] + ([prediction.psi] if prediction else [])
    metric = default_metric(settings.accuracy, version.task)
    registered = version.metrics.get(metric)
    return TrackMonitoring(
        version=window.version,
        window_start=window.start(),
        samples=predicted_rows(totals),
        drift_score=max(scores) if scores else None,
        inputs=inputs[:MAX_INPUTS_SHOWN],
        prediction_drift=prediction,
        accuracy=live_accuracy(
            totals, metric, threshold(settings.accuracy, metric, registered), registered, baseline
        ),
        pods=pods,
    )


def _accuracy_verdict(
    accuracy: LiveAccuracy, settings: AccuracyMonitoring
) -> tuple[ConditionStatus, str, str]:
    metric, value, bound = accuracy.metric, accuracy.value, accuracy.threshold
    if accuracy.labels < settings.min_labels or value is None:
        return (
            "Unknown",
            NOT_ENOUGH_SAMPLES,
            f"{accuracy.labels} labelled rows in the window, fewer than the "
            f"{settings.min_labels} {metric} is judged on",
        )
    if bound is None:
        return (
            "Unknown",
            NO_THRESHOLD,
            f"live {metric} {value:.4f}: no threshold given and no registered {metric}",
        )
    worse = value < bound if higher_is_better(metric) else value > bound
    side = "below" if higher_is_better(metric) else "above"
    if worse:
        return (
            "True",
            DEGRADED,
            f"live {metric} {value:.4f} {side} {bound} over {accuracy.labels} labels",
        )
    return (
        "False",
        WITHIN_THRESHOLD,
        f"live {metric} {value:.4f} within {bound} over {accuracy.labels} labels",
    )


def _transition(
    type_: str, verdict: ConditionStatus, before: list[Condition], reasons: tuple[str, str]
) -> tuple[str, str] | None:
    """The event of a change into (True) or out of (False) a condition: (type, reason)."""
    old = next((c for c in before if c.type == type_), None)
    if verdict == "True" and (old is None or old.status != "True"):
        return "Warning", reasons[0]
    if verdict == "False" and old is not None and old.status == "True":
        return "Normal", reasons[1]
    return None


@dataclass(frozen=True)
class VersionFacts:
    """What the stable ModelVersion registered: its task and test metrics."""

    task: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


def evaluate(
    window: MonitoringWindow,
    baseline: Scrape,
    pods: int,
    settings: Monitoring,
    conditions: list[Condition],
    generation: int | None,
    now: dt.datetime,
    version: VersionFacts = VersionFacts(),
    canary: TrackMonitoring | None = None,
    collection: str | None = None,
) -> MonitoringDecision:
    """Judge the window against the baseline a pod states and the version's registered
    metrics: status, conditions and the events of a transition (into drift or
    degradation, or out of it)."""
    track = track_status(window, baseline, pods, settings, version)
    status = MonitoringStatus(
        **dict(track), collection=collection, canary=canary, last_evaluated=now
    )
    accuracy = track.accuracy or LiveAccuracy(
        metric=default_metric(settings.accuracy, version.task)
    )
    events: list[tuple[str, str, str]] = []
    new_conditions = conditions
    judged = (
        (DRIFT_DETECTED, _drift_verdict(status, settings), (DRIFTED, DRIFT_RESOLVED)),
        (
            ACCURACY_DEGRADED,
            _accuracy_verdict(accuracy, settings.accuracy),
            (ACCURACY_DEGRADED, ACCURACY_RECOVERED),
        ),
    )
    for type_, (verdict, reason, message), reasons in judged:
        event = _transition(type_, verdict, conditions, reasons)
        if event is not None:
            events.append((*event, f"{window.version}: {message}"))
        new_conditions = set_condition(
            new_conditions, type_, verdict, reason, message, generation=generation, at=now
        )
    return MonitoringDecision(status, new_conditions, events)


def switched_off(conditions: list[Condition]) -> list[Condition]:
    """Monitoring turned off: its conditions go (status.monitoring goes with it)."""
    return [c for c in conditions if c.type not in MONITORING_CONDITIONS]
