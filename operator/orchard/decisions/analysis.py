"""Canary analysis: verdicts from the serving pods' own metrics, and the pre-traffic check.

The operator scrapes each pod's Prometheus text, takes the counter increase over the
analysis window (see `metrics_text.delta`), sums it per track (stable, canary) into a
`TrackWindow`, and asks `evaluate` for a verdict:

- Inconclusive: the canary has fewer than `minRequests` requests in the window. Too
  little traffic is never a pass.
- Fail: error rate above `maxErrorRate` (decided early when the errors alone already
  exceed the allowance at `minRequests`), p95 latency above `maxLatencyP95`, or above
  the stable p95 times `maxLatencyRatio` (once both tracks have enough requests for a
  p95 to mean something), or predictions shifted from the stable's by more than
  `maxPredictionShift` (total variation distance, beyond sampling noise).
- Pass: otherwise.

`registered_metric_check` compares the candidate's registered test metric with the
stable version's before any traffic moves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from orchard import contracts
from orchard.api.common import parse_duration
from orchard.api.modeldeployment import Analysis as AnalysisSpec

from .metrics_text import Labels, Scrape

Verdict = Literal["Pass", "Fail", "Inconclusive"]

# A latency ratio is only held against the canary when both tracks have this many
# requests in the window (a p95 of a few dozen requests is its slowest one or two: a
# cold first request decides it), and when the canary is also slower in absolute terms
# by the larger of these two: at a few milliseconds, bucket resolution and noise dominate.
LATENCY_RATIO_MIN_REQUESTS = 100
LATENCY_RATIO_FLOOR_S = 0.010
LATENCY_RATIO_FLOOR_SHARE = 0.05  # of maxLatencyP95
# Standard deviations of sampling noise allowed on the prediction shift.
SHIFT_NOISE_Z = 2.0


@dataclass(frozen=True)
class MetricNames:
    """Names and labels of the server metrics the analysis reads (`orchard.contracts`)."""

    requests: str = contracts.REQUESTS
    status_label: str = contracts.CODE_LABEL
    endpoint_label: str = contracts.ENDPOINT_LABEL
    # Only inference requests count: probes and scrapes hit the same server.
    endpoints: tuple[str, ...] = contracts.INFERENCE_ENDPOINTS
    latency: str = contracts.LATENCY
    predicted_class: str = contracts.PREDICTED_CLASS
    # Rows replayed to both tracks for a quiet step: the same rows on each side, so their
    # predictions compare the two models directly.
    replay_predicted_class: str = contracts.REPLAY_PREDICTED_CLASS
    class_label: str = contracts.CLASS_LABEL
    predicted_value: str = contracts.PREDICTED_VALUE

    def is_error(self, status: str) -> bool:
        """A request failed when the server answered 5xx: its fault, not the client's."""
        return status.startswith("5")

    def counts(self, labels: Labels) -> bool:
        endpoint = dict(labels).get(self.endpoint_label)
        return endpoint is None or endpoint in self.endpoints


@dataclass(frozen=True)
class TrackWindow:
    """One track's traffic over an analysis window, summed over its pods."""

    requests: float = 0.0
    errors: float = 0.0
    # Cumulative histogram buckets: (upper bound in seconds, count), ascending, with +Inf.
    latency_buckets: tuple[tuple[float, float], ...] = ()
    # Classification: predicted class -> count.
    classes: Mapping[str, float] = field(default_factory=dict)
    # Regression: cumulative histogram of predicted values, like latency_buckets.
    value_buckets: tuple[tuple[float, float], ...] = ()

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests > 0 else 0.0

    def latency_p95(self) -> float | None:
        return histogram_quantile(0.95, self.latency_buckets)


# The defaults are the spec's (orchard.api.modeldeployment.Analysis): declared there once.
_SPEC_DEFAULTS = AnalysisSpec()


@dataclass(frozen=True)
class Settings:
    """The analysis limits of a ModelDeployment (spec.canary.analysis), in plain units."""

    min_requests: int = _SPEC_DEFAULTS.min_requests
    max_error_rate: float = _SPEC_DEFAULTS.max_error_rate
    max_latency_p95_s: float = parse_duration(_SPEC_DEFAULTS.max_latency_p95)
    max_latency_ratio: float = _SPEC_DEFAULTS.max_latency_ratio
    max_prediction_shift: float = _SPEC_DEFAULTS.max_prediction_shift

    @classmethod
    def from_spec(cls, spec: AnalysisSpec) -> Settings:
        return cls(
            min_requests=spec.min_requests,
            max_error_rate=spec.max_error_rate,
            max_latency_p95_s=parse_duration(spec.max_latency_p95),
            max_latency_ratio=spec.max_latency_ratio,
            max_prediction_shift=spec.max_prediction_shift,
        )


@dataclass(frozen=True)
class Result:
    """A verdict, its reason (a CamelCase word), a sentence, and the values measured."""

    verdict: Verdict
    reason: str
    message: str
    canary: TrackWindow
    stable: TrackWindow | None
    prediction_shift: float | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


def _buckets(
    samples: Mapping[tuple[str, Labels], float], name: str, names: MetricNames
) -> tuple[tuple[float, float], ...]:
    """A histogram's cumulative buckets, summed over its other labels (endpoints, pods)."""
    acc: dict[float, float] = {}
    for (sample_name, labels), value in samples.items():
        if sample_name != f"{name}_bucket" or not names.counts(labels):
            continue
        le = dict(labels).get("le")
        if le is None:
            continue
        try:
            bound = float(le)  # "+Inf" included
        except ValueError:
            continue  # not a bucket bound: what a pod serves never breaks the analysis
        if math.isnan(bound):
            continue
        acc[bound] = acc.get(bound, 0.0) + value
    return tuple(sorted(acc.items()))


def track_window(samples: Scrape, names: MetricNames = MetricNames()) -> TrackWindow:
    """Sum a track's (already differenced and merged) samples into a window."""
    requests = errors = 0.0
    classes: dict[str, float] = {}
    for (name, labels), value in samples.items():
        if name == names.requests:
            if not names.counts(labels):
                continue
            requests += value
            if names.is_error(dict(labels).get(names.status_label, "")):
                errors += value
        elif name in (names.predicted_class, names.replay_predicted_class):
            cls = dict(labels).get(names.class_label, "")
            classes[cls] = classes.get(cls, 0.0) + value
    return TrackWindow(
        requests=requests,
        errors=errors,
        latency_buckets=_buckets(samples, names.latency, names),
        classes=classes,
        value_buckets=_buckets(samples, names.predicted_value, names),
    )


def histogram_quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """The q-quantile of a cumulative histogram, interpolated linearly inside a bucket.

    As in Prometheus: None without observations; a quantile in the +Inf bucket is the
    highest finite bound.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    prev_bound, prev_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return prev_bound
            if count == prev_count:
                return bound
            return prev_bound + (bound - prev_bound) * (rank - prev_count) / (count - prev_count)
        prev_bound, prev_count = bound, count
    return prev_bound


def _masses_from_buckets(buckets: tuple[tuple[float, float], ...]) -> dict[str, float]:
    out: dict[str, float] = {}
    prev = 0.0
    for bound, count in sorted(buckets):
        out[str(bound)] = max(count - prev, 0.0)
        prev = count
    return out


def total_variation(p: Mapping[str, float], q: Mapping[str, float]) -> float | None:
    """Total variation distance between two count distributions (0 same, 1 disjoint)."""
    p_total, q_total = sum(p.values()), sum(q.values())
    if p_total <= 0 or q_total <= 0:
        return None
    keys = set(p) | set(q)
    return 0.5 * sum(abs(p.get(k, 0.0) / p_total - q.get(k, 0.0) / q_total) for k in keys)


def shift_noise(p: Mapping[str, float], q: Mapping[str, float], z: float = SHIFT_NOISE_Z) -> float:
    """How much total variation sampling noise alone may show between two samples.

    Under no real shift each category's share differs between the samples with standard
    error sqrt(s(1-s)(1/n_p + 1/n_q)) (s the pooled share); the distance is half the sum
    of those differences, and z of those is allowed.
    """
    n_p, n_q = sum(p.values()), sum(q.values())
    if n_p <= 0 or n_q <= 0:
        return 0.0
    pooled = {k: p.get(k, 0.0) + q.get(k, 0.0) for k in set(p) | set(q)}
    total = n_p + n_q
    scale = 1 / n_p + 1 / n_q
    return z * 0.5 * sum(math.sqrt((c / total) * (1 - c / total) * scale) for c in pooled.values())


def prediction_distributions(
    canary: TrackWindow, stable: TrackWindow
) -> tuple[dict[str, float], dict[str, float]]:
    """The two distributions to compare: classes, or regression value buckets."""
    if canary.classes or stable.classes:
        return dict(canary.classes), dict(stable.classes)
    return _masses_from_buckets(canary.value_buckets), _masses_from_buckets(stable.value_buckets)


def _figures(
    canary: TrackWindow, stable: TrackWindow | None, shift: float | None
) -> dict[str, float]:
    out: dict[str, float] = {
        "canaryRequests": canary.requests,
        "canaryErrorRate": round(canary.error_rate, 4),
    }
    p95 = canary.latency_p95()
    if p95 is not None:
        out["canaryLatencyP95Ms"] = round(p95 * 1000, 2)
    if stable is not None:
        out["stableRequests"] = stable.requests
        out["stableErrorRate"] = round(stable.error_rate, 4)
        sp95 = stable.latency_p95()
        if sp95 is not None:
            out["stableLatencyP95Ms"] = round(sp95 * 1000, 2)
    if shift is not None:
        out["predictionShift"] = round(shift, 4)
    return out


def evaluate(canary: TrackWindow, stable: TrackWindow | None, settings: Settings) -> Result:
    """The verdict on one analysis window of the canary, against the stable track."""
    shift: float | None = None
    noise = 0.0
    if stable is not None:
        p, q = prediction_distributions(canary, stable)
        shift = total_variation(p, q)
        noise = shift_noise(p, q)
    figures = _figures(canary, stable, shift)

    def result(verdict: Verdict, reason: str, message: str) -> Result:
        return Result(verdict, reason, message, canary, stable, shift, figures)

    allowance = settings.max_error_rate * max(settings.min_requests, canary.requests)
    if canary.errors > 0 and canary.errors > allowance:
        return result(
            "Fail",
            "ErrorRate",
            f"canary error rate {canary.error_rate:.1%} over {canary.requests:.0f} requests "
            f"exceeds {settings.max_error_rate:.1%}",
        )
    if canary.requests < max(settings.min_requests, 1):
        return result(
            "Inconclusive",
            "TooFewRequests",
            f"canary served {canary.requests:.0f} requests, "
            f"at least {settings.min_requests} are needed for a verdict",
        )
    p95 = canary.latency_p95()
    if p95 is not None and p95 > settings.max_latency_p95_s:
        return result(
            "Fail",
            "LatencyP95",
            f"canary p95 latency {p95 * 1000:.1f}ms exceeds "
            f"{settings.max_latency_p95_s * 1000:.0f}ms",
        )
    stable_p95 = stable.latency_p95() if stable is not None else None
    floor = max(LATENCY_RATIO_FLOOR_S, LATENCY_RATIO_FLOOR_SHARE * settings.max_latency_p95_s)
    if (
        p95 is not None
        and stable_p95 is not None
        and stable is not None
        and min(canary.requests, stable.requests) >= LATENCY_RATIO_MIN_REQUESTS
        and p95 > stable_p95 * settings.max_latency_ratio
        and p95 - stable_p95 > floor
    ):
        return result(
            "Fail",
            "LatencyRatio",
            f"canary p95 latency {p95 * 1000:.1f}ms is more than "
            f"{settings.max_latency_ratio:g}x the stable's {stable_p95 * 1000:.1f}ms",
        )
    if shift is not None and shift - noise > settings.max_prediction_shift:
        return result(
            "Fail",
            "PredictionShift",
            f"canary predictions shifted {shift:.3f} (total variation) from the stable's, "
            f"beyond {settings.max_prediction_shift:g} (+{noise:.3f} sampling noise)",
        )
    return result(
        "Pass",
        "WithinLimits",
        f"canary served {canary.requests:.0f} requests within limits",
    )


# --- The registered-metric check, before any traffic ---------------------------------

_LOWER_IS_BETTER = ("rmse", "mse", "mae", "mape", "error", "loss", "brier")


def lower_is_better(metric: str) -> bool:
    name = metric.lower()
    return any(word in name for word in _LOWER_IS_BETTER)


@dataclass(frozen=True)
class MetricCheck:
    verdict: Verdict
    reason: str
    message: str
    metric: str | None = None
    candidate: float | None = None
    stable: float | None = None
    drop: float | None = None


def choose_metric(
    candidate: Mapping[str, float], stable: Mapping[str, float], preferred: str | None
) -> str | None:
    """The registered metric to compare: the one asked for, else the first both have."""
    if preferred is not None:
        return preferred if preferred in candidate and preferred in stable else None
    return next((name for name in candidate if name in stable), None)


def registered_metric_check(
    candidate: Mapping[str, float],
    stable: Mapping[str, float],
    max_drop: float,
    preferred: str | None = None,
) -> MetricCheck:
    """Compare the candidate's registered test metric with the stable version's.

    For scores where higher is better (accuracy, f1, r2, ...) the drop is absolute
    (stable - candidate); for errors and losses (rmse, mae, log_loss, ...) it is the
    relative increase (candidate - stable) / stable, since those have no fixed scale.
    Without a metric both versions registered there is nothing to compare: a pass that
    says so (the traffic analysis still guards the rollout).
    """
    metric = choose_metric(candidate, stable, preferred)
    if metric is None:
        wanted = f"metric {preferred!r}" if preferred else "a metric"
        return MetricCheck(
            "Pass", "NoComparableMetric", f"the versions do not both register {wanted}"
        )
    cand, stab = float(candidate[metric]), float(stable[metric])
    if lower_is_better(metric):
        drop = (cand - stab) / abs(stab) if stab != 0 else cand - stab
    else:
        drop = stab - cand
    ok = drop <= max_drop + 1e-12
    return MetricCheck(
        "Pass" if ok else "Fail",
        "MetricWithinLimit" if ok else "MetricDrop",
        f"{metric}: candidate {cand:.4g}, stable {stab:.4g}, drop {drop:.4g} "
        f"({'within' if ok else 'beyond'} {max_drop:g})",
        metric,
        cand,
        stab,
        drop,
    )


def unobserved(result: Result, unscraped: Mapping[str, str]) -> Result:
    """A verdict that did not see every serving pod: a pass becomes Inconclusive, so a
    pod whose metrics cannot be read pauses the rollout and is named, never skipped.
    A failure measured on the pods that could be read stands."""
    if not unscraped or result.verdict != "Pass":
        return result
    pods = ", ".join(f"{name} ({why})" for name, why in sorted(unscraped.items()))
    return replace(
        result,
        verdict="Inconclusive",
        reason="MetricsUnavailable",
        message=f"metrics of serving pod(s) {pods} could not be read",
    )
