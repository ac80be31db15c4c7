"""Canary analysis verdicts (Pass, Fail, Inconclusive) from the server's own metrics."""

from __future__ import annotations

import pytest

from orchard.decisions import analysis as an
from orchard.decisions import metrics_text as mt
from orchard.serving.metrics import Metrics

SETTINGS = an.Settings(
    min_requests=20,
    max_error_rate=0.05,
    max_latency_p95_s=0.5,
    max_latency_ratio=2.0,
    max_prediction_shift=0.2,
)


def window(
    ok: int,
    errors: int = 0,
    latency: float = 0.004,
    classes: dict[str, int] | None = None,
    probes: int = 5,
    before: Metrics | None = None,
) -> an.TrackWindow:
    """A track's window, through the real server metrics text and the parser."""
    m = Metrics("iris")
    for _ in range(ok):
        m.observe_request("v2_infer", 200, latency)
    for _ in range(errors):
        m.observe_request("v2_infer", 500, latency)
    for _ in range(probes):  # readiness probes must not count as traffic
        m.observe_request("v2_health_ready", 200, None)
    m.classes.update(classes or {})
    after = mt.parse_scrape(m.render().decode())
    base = mt.parse_scrape(before.render().decode()) if before is not None else None
    return an.track_window(mt.delta(base, after))


STABLE = window(400, classes={"setosa": 130, "versicolor": 135, "virginica": 135})


def test_pass_within_limits() -> None:
    canary = window(60, classes={"setosa": 20, "versicolor": 19, "virginica": 21})
    result = an.evaluate(canary, STABLE, SETTINGS)
    assert result.verdict == "Pass", result.message
    assert result.prediction_shift is not None and result.prediction_shift < 0.05
    assert result.metrics["canaryRequests"] == 60


def test_too_few_requests_is_inconclusive_not_pass() -> None:
    canary = window(12, classes={"setosa": 12})
    result = an.evaluate(canary, STABLE, SETTINGS)
    assert result.verdict == "Inconclusive"
    assert result.reason == "TooFewRequests"


def test_probes_do_not_count_as_requests() -> None:
    canary = window(0, probes=500)
    assert canary.requests == 0
    assert an.evaluate(canary, STABLE, SETTINGS).verdict == "Inconclusive"


def test_error_rate_fails() -> None:
    canary = window(50, errors=10, classes={"setosa": 17, "versicolor": 17, "virginica": 16})
    result = an.evaluate(canary, STABLE, SETTINGS)
    assert result.verdict == "Fail" and result.reason == "ErrorRate"
    assert result.metrics["canaryErrorRate"] == pytest.approx(10 / 60, abs=1e-3)


def test_grpc_calls_count_as_rest_requests_do() -> None:
    """ModelInfer over gRPC is traffic: its calls are requests and its 5xx errors, its
    4xx the client's; its health calls are probes."""
    m = Metrics("iris")
    for _ in range(40):
        m.observe_request("grpc_infer", 200, 0.004)
    for _ in range(8):
        m.observe_request("grpc_infer", 500, 0.004)  # INTERNAL: prediction_failed
    for _ in range(5):
        m.observe_request("grpc_infer", 400, 0.001)  # INVALID_ARGUMENT
    m.observe_request("v2_infer", 200, 0.004)
    for endpoint in ("grpc_server_ready", "grpc_model_ready", "grpc_server_live", "unknown"):
        m.observe_request(endpoint, 200, None)
    canary = an.track_window(mt.delta(None, mt.parse_scrape(m.render().decode())))
    assert (canary.requests, canary.errors) == (54, 8)
    assert canary.latency_buckets[-1] == (float("inf"), 54)
    result = an.evaluate(canary, STABLE, SETTINGS)
    assert result.verdict == "Fail" and result.reason == "ErrorRate"


def test_clear_errors_fail_before_min_requests() -> None:
    """Errors beyond what min_requests could ever allow fail at once (fast rollback)."""
    canary = window(3, errors=4)
    assert an.evaluate(canary, STABLE, SETTINGS).verdict == "Fail"
    # but one error in a handful of requests is not yet a verdict
    assert an.evaluate(window(3, errors=1), STABLE, SETTINGS).verdict == "Inconclusive"


def test_absolute_latency_fails() -> None:
    canary = window(40, latency=0.9, classes={"setosa": 14, "versicolor": 13, "virginica": 13})
    result = an.evaluate(canary, STABLE, SETTINGS)
    assert result.verdict == "Fail" and result.reason == "LatencyP95"


def test_latency_against_stable_fails() -> None:
    classes = {"setosa": 40, "versicolor": 40, "virginica": 40}
    canary = window(120, latency=0.2, classes=classes)
    result = an.evaluate(canary, STABLE, SETTINGS)  # stable p95 is under 5ms
    assert result.verdict == "Fail" and result.reason == "LatencyRatio"


def test_latency_ratio_waits_for_enough_requests() -> None:
    """A p95 of a few dozen requests is one cold request: no ratio verdict on it."""
    canary = window(40, latency=0.2, classes={"setosa": 14, "versicolor": 13, "virginica": 13})
    assert an.evaluate(canary, STABLE, SETTINGS).verdict == "Pass"
    # the absolute limit still holds at any count
    slow = window(40, latency=0.9, classes={"setosa": 14, "versicolor": 13, "virginica": 13})
    assert an.evaluate(slow, STABLE, SETTINGS).reason == "LatencyP95"


def test_latency_ratio_ignores_a_few_milliseconds_under_a_loose_limit() -> None:
    """The case a loaded node produced: 22.7ms against 10ms, with a 500ms limit."""
    stable = window(300, latency=0.009, classes={"a": 300})
    canary = window(300, latency=0.02, classes={"a": 300})
    assert an.evaluate(canary, stable, SETTINGS).verdict == "Pass"
    strict = an.Settings(max_latency_p95_s=0.1)  # under a 100ms limit it is a regression
    assert an.evaluate(canary, stable, strict).reason == "LatencyRatio"


def test_latency_ratio_ignores_millisecond_noise() -> None:
    fast_stable = window(400, latency=0.0007, classes={"a": 400})
    canary = window(400, latency=0.004, classes={"a": 400})
    assert an.evaluate(canary, fast_stable, SETTINGS).verdict == "Pass"


def test_prediction_shift_fails() -> None:
    canary = window(100, classes={"setosa": 100})  # answers one class only
    result = an.evaluate(canary, STABLE, SETTINGS)
    assert result.verdict == "Fail" and result.reason == "PredictionShift"
    assert result.prediction_shift == pytest.approx(1 - 130 / 400, abs=1e-6)


def test_prediction_shift_within_sampling_noise_passes() -> None:
    # 20 requests: the raw distance is over the limit, but 20 draws cannot show it.
    canary = window(20, classes={"setosa": 12, "versicolor": 4, "virginica": 4})
    result = an.evaluate(canary, STABLE, SETTINGS)
    assert result.prediction_shift is not None and result.prediction_shift > 0.2
    assert result.verdict == "Pass", result.message
    # over 400 requests a shift that size is real
    many = window(400, classes={"setosa": 300, "versicolor": 50, "virginica": 50})
    assert an.evaluate(many, STABLE, SETTINGS).verdict == "Fail"


def test_window_differences_two_scrapes() -> None:
    before = Metrics("iris")
    for _ in range(30):
        before.observe_request("v2_infer", 500, 0.004)  # old errors, before the window
    after = Metrics("iris")
    for _ in range(30):
        after.observe_request("v2_infer", 500, 0.004)
    for _ in range(25):
        after.observe_request("v2_infer", 200, 0.004)
    base = mt.parse_scrape(before.render().decode())
    now = mt.parse_scrape(after.render().decode())
    w = an.track_window(mt.delta(base, now))
    assert w.requests == 25 and w.errors == 0


def test_histogram_quantile() -> None:
    buckets = ((0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (float("inf"), 100.0))
    assert an.histogram_quantile(0.5, buckets) == pytest.approx(0.01)
    assert an.histogram_quantile(0.95, buckets) == pytest.approx(0.1 + 0.9 * 0.5)
    assert an.histogram_quantile(0.95, ()) is None
    assert an.histogram_quantile(0.99, ((0.5, 1.0), (float("inf"), 100.0))) == 0.5


def test_regression_shift_uses_value_histogram() -> None:
    def reg(values: list[float]) -> an.TrackWindow:
        m = Metrics("diabetes")
        m.set_model([], [], True, {})  # the server's fixed buckets: ..., 50, 100, 250, 500, ...
        for v in values:
            m.observe_request("v2_infer", 200, 0.003)
            m.values.observe(v)
        return an.track_window(mt.parse_scrape(m.render().decode()))

    stable = reg([60, 120, 170, 220, 260] * 40)
    same = reg([61, 121, 171, 221, 261] * 10)
    shifted = reg([290] * 50)
    assert an.evaluate(same, stable, SETTINGS).verdict == "Pass"
    result = an.evaluate(shifted, stable, SETTINGS)
    assert result.verdict == "Fail" and result.reason == "PredictionShift"


@pytest.mark.parametrize(
    ("candidate", "stable", "preferred", "verdict", "reason"),
    [
        ({"accuracy": 0.95}, {"accuracy": 0.97}, None, "Pass", "MetricWithinLimit"),
        ({"accuracy": 0.80}, {"accuracy": 0.97}, None, "Fail", "MetricDrop"),
        ({"f1_macro": 0.9, "accuracy": 0.5}, {"accuracy": 0.97, "f1_macro": 0.91}, None,
         "Pass", "MetricWithinLimit"),  # first common metric of the candidate: f1_macro
        ({"f1_macro": 0.9, "accuracy": 0.5}, {"accuracy": 0.97, "f1_macro": 0.91}, "accuracy",
         "Fail", "MetricDrop"),
        ({"rmse": 52.0}, {"rmse": 50.0}, None, "Pass", "MetricWithinLimit"),  # +4 % relative
        ({"rmse": 60.0}, {"rmse": 50.0}, None, "Fail", "MetricDrop"),  # +20 %
        ({"accuracy": 0.9}, {"r2": 0.5}, None, "Pass", "NoComparableMetric"),
        ({}, {}, None, "Pass", "NoComparableMetric"),
    ],
)  # fmt: skip
def test_registered_metric_check(
    candidate: dict[str, float],
    stable: dict[str, float],
    preferred: str | None,
    verdict: str,
    reason: str,
) -> None:
    check = an.registered_metric_check(candidate, stable, 0.05, preferred)
    assert (check.verdict, check.reason) == (verdict, reason), check.message


def test_a_bucket_bound_that_is_no_number_is_skipped_not_fatal() -> None:
    """Whatever a pod serves as `le`, the analysis reads the buckets it can."""
    text = (
        'orchard_request_duration_seconds_bucket{endpoint="v2_infer",le="0.1"} 5\n'
        'orchard_request_duration_seconds_bucket{endpoint="v2_infer",le="soon"} 7\n'
        'orchard_request_duration_seconds_bucket{endpoint="v2_infer",le="NaN"} 7\n'
        'orchard_request_duration_seconds_bucket{endpoint="v2_infer",le="+Inf"} 9\n'
    )
    window = an.track_window(mt.parse_scrape(text))
    assert window.latency_buckets == ((0.1, 5.0), (float("inf"), 9.0))
