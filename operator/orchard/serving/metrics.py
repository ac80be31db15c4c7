"""Prometheus metrics of one server process, written by hand to stay off the request path.

Every update happens on the event loop thread, so there are no locks; `/metrics`
renders the text exposition format (version 0.0.4) on demand.

The ModelDeployment controller scrapes each pod's `/metrics` to judge a canary:
request and error counts give the error rate, the latency buckets give p95, and the
prediction counts (or value histogram) give the prediction shift against the stable
version and against the artifact's `predictionStats`. The names, labels and endpoint
values it reads are declared in `orchard.contracts`, for both sides.

=========================================  =========  ======================================
metric                                     type       meaning (labels)
=========================================  =========  ======================================
orchard_requests_total                     counter    requests (endpoint, code: the HTTP
                                                      status; a gRPC call's is that of its
                                                      answer over REST, 200 for OK)
orchard_request_errors_total               counter    requests answered >= 400 (endpoint,
                                                      reason: bad_request, invalid_value,
                                                      too_many_rows, too_large,
                                                      body_timeout, not_found,
                                                      method_not_allowed, not_ready,
                                                      prediction_failed, internal)
orchard_request_duration_seconds           histogram  latency of inference requests, from
                                                      request start to response (endpoint:
                                                      v1_predict, v2_infer, grpc_infer)
orchard_batch_rows                         histogram  rows per `predict` call
orchard_batch_requests                     histogram  requests grouped into one batch
orchard_predict_duration_seconds           histogram  time in the model per batch (retries
                                                      included)
orchard_predictions_total                  counter    predicted rows per class (class);
                                                      classification only
orchard_replay_requests_total              counter    replayed inference requests answered
                                                      (`Orchard-Replay` header; endpoint, code)
orchard_replay_predictions_total           counter    replayed rows per predicted class
                                                      (class); in no other prediction metric
orchard_prediction_value                   histogram  predicted values; regression only (fixed
                                                      buckets: ±1, 2.5, 5 x 10^-2..10^5, and 0)
orchard_prediction_bin_total               counter    predicted values per drift bin fixed at
                                                      training (bin); regression only
orchard_prediction_expected_share          gauge      the test rows' prediction shares at
                                                      training (class, or bin for regression)
orchard_feedback_rows_total                counter    rows of this pod's answers labelled by
                                                      feedback
orchard_feedback_correct_total             counter    of those, predicted right (classification)
orchard_feedback_class_rows_total          counter    labelled rows by true class (class; at
                                                      most 50, then __other__)
orchard_feedback_class_correct_total       counter    of those, predicted right (class)
orchard_feedback_absolute_error_total      counter    sum of |label - prediction| (regression)
orchard_feedback_squared_error_total       counter    sum of (label - prediction)^2
orchard_feedback_unmatched_total           counter    labels of feedback no pod of the
                                                      deployment could match to a prediction
orchard_confidence_bin_total               counter    a sample of rows (up to 32 a second) by
                                                      the classifier's confidence (bin)
orchard_confidence_bin_accuracy            gauge      each confidence bin's held-out accuracy
                                                      at training (bin): the estimate's basis
orchard_collected_rows_total               counter    request rows written to collection
                                                      segments (kind: requests | labels)
orchard_collection_dropped_rows_total      counter    request rows not collected: buffer full
orchard_collection_segments_total          counter    Parquet segments written (result: written
                                                      | failed | removed)
orchard_feature_observations_total         counter    non-missing input values (feature)
orchard_feature_missing_total              counter    missing input values (feature)
orchard_feature_value_sum                  gauge      sum of numeric input values (feature)
orchard_feature_value_sum_squares          gauge      sum of squares of numeric inputs (feature)
orchard_feature_bin_total                  counter    numeric input values per drift bin fixed
                                                      at training (feature, bin: 0..10)
orchard_feature_out_of_range_total         counter    numeric input values outside the
                                                      training rows' min..max (feature)
orchard_feature_bin_expected_share         gauge      the training rows' share per drift bin
                                                      (feature, bin)
orchard_feature_category_expected_share    gauge      the training rows' share per category,
                                                      __other__ the rest (feature, category)
orchard_feature_category_total             counter    string input values (feature, category;
                                                      at most 50 per feature, then __other__;
                                                      a value cut to 64 characters)
orchard_model_ready                        gauge      1 once the model is loaded
orchard_model_info                         gauge      1, labelled (model, digest, framework,
                                                      estimator, runtime: onnx | sklearn)
orchard_connections_open                   gauge      open HTTP connections
orchard_connections_dropped_total          counter    connections the server closed on a
                                                      client (reason: idle, header_timeout,
                                                      headers_too_large, invalid_http,
                                                      evicted, over_capacity)
=========================================  =========  ======================================

Replayed requests (`contracts.REPLAY_HEADER`) count in the request, error, latency and
batch metrics like any other; their predicted classes only in
orchard_replay_predictions_total, and their rows in no feature, prediction-drift,
confidence or feedback metric.

Whatever clients send, the text stays valid and small. Only rows that passed validation
are counted, so every number lies within float32's range (`limits.MAX_ABS_VALUE`) and
the float64 sums cannot overflow; they saturate at ±1.8e308 rather than ever become inf
or NaN. Label values have every control and line-separator character but the newline
written as `\\xHH` or `\\uHHHH` (a bare carriage return or U+2028 would end the line for
some parsers, as it once did for the operator's), and a string feature adds at most 51 series of
short label values (`limits.MAX_CATEGORIES`, `limits.MAX_LABEL_CHARS`).

Endpoints (`orchard.contracts.Endpoint`): v2_infer, v1_predict, v2_feedback,
v2_monitoring, v2_model_metadata, v2_model_ready, v2_server_metadata, v2_health_live,
v2_health_ready, v1_live, v1_model, v1_models, metrics; the gRPC service's grpc_infer,
grpc_model_metadata, grpc_model_ready, grpc_server_metadata, grpc_server_live,
grpc_server_ready (`grpc_service`); unknown (any other path or gRPC method).
"""

from __future__ import annotations

import math
import re
import sys
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

from orchard.artifacts.calibration import ConfidenceBins
from orchard.artifacts.drift import CategoryBins, NumericBins
from orchard.contracts import (
    BIN_LABEL,
    CATEGORY_LABEL,
    CLASS_LABEL,
    CODE_LABEL,
    CONFIDENCE_ACCURACY,
    CONFIDENCE_BIN,
    ENDPOINT_LABEL,
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
    LATENCY,
    OTHER_CATEGORY,
    PREDICTED_CLASS,
    PREDICTED_VALUE,
    PREDICTION_BIN,
    PREDICTION_EXPECTED,
    REPLAY_PREDICTED_CLASS,
    REPLAY_REQUESTS,
    REQUESTS,
)
from orchard.serving.limits import MAX_CATEGORIES, MAX_LABEL_CHARS

if TYPE_CHECKING:
    from orchard.serving.collection import CollectionCounts
    from orchard.serving.feedback import Scored
    from orchard.serving.model import BatchResult

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
# Predicted values: fixed 1-2.5-5 steps per decade, both signs, so that the histograms of
# two model versions (stable and canary) share their buckets and can be compared.
_STEPS = [m * 10.0**e for e in range(-2, 6) for m in (1.0, 2.5, 5.0)]
VALUE_BUCKETS = (*(-v for v in reversed(_STEPS)), 0.0, *_STEPS)
OTHER = OTHER_CATEGORY
TRUNCATED = "\u2026"  # the end of a label value cut to MAX_LABEL_CHARS
_FLOAT_MAX = sys.float_info.max
# Characters that end a line for some parser (str.splitlines: \r, \v, \f, \x1c-\x1e, \x85,
# U+2028, U+2029) or are not text (other controls, lone surrogates); \n has its own escape.
_UNPRINTABLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


def _code(match: re.Match[str]) -> str:
    point = ord(match.group())
    return f"\\x{point:02x}" if point < 0x100 else f"\\u{point:04x}"


def printable(value: str) -> str:
    """`value` with each control or line-separator character but \\n written as an escape."""
    return _UNPRINTABLE.sub(_code, value) if _UNPRINTABLE.search(value) else value


def category_label(value: str) -> str:
    """The label value a string feature's value is counted under: printable, and cut
    to MAX_LABEL_CHARS characters (values that share a beginning fold together)."""
    head = printable(value[:MAX_LABEL_CHARS])
    if len(value) > MAX_LABEL_CHARS or len(head) > MAX_LABEL_CHARS:
        return head[: MAX_LABEL_CHARS - 1] + TRUNCATED
    return head


def _escape(value: str) -> str:
    value = printable(value)
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _num(value: float) -> str:
    if not math.isfinite(value):  # never from the sums below; written validly all the same
        return "NaN" if math.isnan(value) else "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _add(total: float, value: float) -> float:
    """total + value, held at ±1.8e308 where it would overflow; a NaN adds nothing."""
    if math.isnan(value):
        return total
    out = total + value
    return out if math.isfinite(out) else math.copysign(_FLOAT_MAX, out)


class Histogram:
    """Bucket counts (non-cumulative inside, cumulative when rendered), sum and count."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float, times: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += times
        self.total = _add(self.total, value * times)
        self.count += times

    def render(self, name: str, labels: tuple[tuple[str, str], ...], out: list[str]) -> None:
        running = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else _num(bound)
            out.append(f"{name}_bucket{_labels((*labels, ('le', le)))} {running}")
        out.append(f"{name}_sum{_labels(labels)} {_num(self.total)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")


class Metrics:
    """All metrics of the server; feature names come from the model's schema."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.requests: dict[tuple[str, int], int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.batch_rows = Histogram(BATCH_BUCKETS)
        self.batch_requests = Histogram(BATCH_BUCKETS)
        self.predict_seconds = Histogram(LATENCY_BUCKETS)
        self.classes: dict[str, int] = {}
        self.replay_requests: dict[tuple[str, int], int] = {}
        self.replay_classes: dict[str, int] = {}
        self.values = Histogram(VALUE_BUCKETS)
        self.regression = False
        self.features: list[str] = []
        self.f_numeric: list[bool] = []
        self.f_count: list[int] = []
        self.f_missing: list[int] = []
        self.f_sum: list[float] = []
        self.f_squares: list[float] = []
        self.f_categories: dict[str, dict[str, int]] = {}
        self.f_bins: dict[int, list[int]] = {}  # by feature index: rows per drift bin
        self.f_out_of_range: dict[int, int] = {}
        # The artifact's training baseline: expected shares per bin or category.
        self.expected_bins: dict[str, tuple[float, ...]] = {}
        self.expected_categories: dict[str, dict[str, float]] = {}
        # The artifact's prediction baseline, and a regression's values counted in its bins.
        self.expected_predictions: dict[str, float] = {}  # by class, or by bin index
        self.prediction_bins: list[int] = []
        # Feedback: labelled rows of this pod's answers, and labels no pod could match.
        self.feedback_rows = 0
        self.feedback_correct = 0
        self.feedback_by_class: dict[str, list[int]] = {}  # true label: [rows, correct]
        self.feedback_absolute_error = 0.0
        self.feedback_squared_error = 0.0
        self.feedback_unmatched = 0
        # The estimate of accuracy: sampled rows per confidence bin, and the bins' accuracy.
        self.confidence_counts: list[int] = []
        self.confidence_accuracy: tuple[float, ...] = ()
        self.collection: CollectionCounts | None = None  # when the server collects
        self.ready = False
        self.info: tuple[tuple[str, str], ...] = (("model", model),)
        self.connections_open = 0
        self.dropped: dict[str, int] = {}

    def set_model(
        self, features: list[str], numeric: list[bool], regression: bool, info: dict[str, str]
    ) -> None:
        """Called once the model is loaded: its feature names and what it predicts."""
        self.features = list(features)
        self.f_numeric = list(numeric)
        n = len(features)
        self.f_count, self.f_missing = [0] * n, [0] * n
        self.f_sum, self.f_squares = [0.0] * n, [0.0] * n
        self.regression = regression
        self.info = (("model", self.model), *sorted(info.items()))
        self.ready = True

    def set_baseline(
        self,
        bins: Mapping[str, NumericBins | CategoryBins],
        predictions: NumericBins | CategoryBins | None = None,
        confidence: ConfidenceBins | None = None,
    ) -> None:
        """The training baseline of the loaded artifact, stated beside the counts."""
        if confidence is not None:
            self.confidence_accuracy = confidence.accuracy
            self.confidence_counts = [0] * len(confidence.accuracy)
        if isinstance(predictions, NumericBins):
            self.expected_predictions = {str(b): s for b, s in enumerate(predictions.expected)}
        elif isinstance(predictions, CategoryBins):
            self.expected_predictions = dict(
                zip(predictions.categories, predictions.expected[:-1], strict=True)
            )
        self.expected_bins = {n: b.expected for n, b in bins.items() if isinstance(b, NumericBins)}
        self.expected_categories = {
            n: {category_label(c): share for c, share in zip(b.labels(), b.expected, strict=True)}
            for n, b in bins.items()
            if isinstance(b, CategoryBins)
        }

    def observe_request(self, endpoint: str, code: int, seconds: float | None) -> None:
        key = (endpoint, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        if seconds is not None:
            hist = self.latency.get(endpoint)
            if hist is None:
                hist = self.latency[endpoint] = Histogram(LATENCY_BUCKETS)
            hist.observe(seconds)

    def observe_replay(self, endpoint: str, code: int) -> None:
        key = (endpoint, code)
        self.replay_requests[key] = self.replay_requests.get(key, 0) + 1

    def observe_error(self, endpoint: str, reason: str) -> None:
        key = (endpoint, reason)
        self.errors[key] = self.errors.get(key, 0) + 1

    # The HTTP protocol's events (protocol.ConnectionEvents).
    def connection_opened(self) -> None:
        self.connections_open += 1

    def connection_closed(self) -> None:
        self.connections_open -= 1

    def connection_dropped(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def observe_batch(self, result: BatchResult, rows: int, requests: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)
        self.predict_seconds.observe(result.predict_seconds)
        f = result.features
        if not self.features and f.count:  # no schema: name columns by position
            n = len(f.count)
            self.set_model(
                [f"x{i}" for i in range(n)], [True] * n, self.regression, dict(self.info[1:])
            )
        for j in range(min(len(self.features), len(f.count))):
            self.f_count[j] += f.count[j]
            self.f_missing[j] += f.missing[j]
            self.f_sum[j] = _add(self.f_sum[j], f.total[j])
            self.f_squares[j] = _add(self.f_squares[j], f.squares[j])
        for j, rows_per_bin in f.bins.items():
            if j >= len(self.features):
                continue
            total = self.f_bins.setdefault(j, [0] * len(rows_per_bin))
            for b, n in enumerate(rows_per_bin[: len(total)]):
                total[b] += n
        for j, n in f.out_of_range.items():
            if j < len(self.features):
                self.f_out_of_range[j] = self.f_out_of_range.get(j, 0) + n
        for name, counts in f.categories.items():  # keys are category_label()s already
            seen = self.f_categories.setdefault(name, {})
            for value, n in counts.items():
                key = value if value in seen or len(seen) < MAX_CATEGORIES else OTHER
                seen[key] = seen.get(key, 0) + n
        p = result.predictions
        for cls, n in p.classes.items():
            self.classes[cls] = self.classes.get(cls, 0) + n
        for cls, n in p.replayed.items():
            self.replay_classes[cls] = self.replay_classes.get(cls, 0) + n
        for v in p.values:
            self.values.observe(v)
        if p.bins:
            if len(self.prediction_bins) != len(p.bins):
                self.prediction_bins = [0] * len(p.bins)
            pairs = zip(self.prediction_bins, p.bins, strict=True)
            self.prediction_bins = [a + b for a, b in pairs]

    def observe_feedback(self, scored: Scored) -> None:
        self.feedback_rows += scored.rows
        self.feedback_correct += scored.correct
        for label, (rows, correct) in scored.by_class.items():
            key = category_label(label)
            if key not in self.feedback_by_class and len(self.feedback_by_class) >= MAX_CATEGORIES:
                key = OTHER
            counts = self.feedback_by_class.setdefault(key, [0, 0])
            counts[0] += rows
            counts[1] += correct
        self.feedback_absolute_error = _add(self.feedback_absolute_error, scored.abs_error)
        self.feedback_squared_error = _add(self.feedback_squared_error, scored.squared_error)

    def observe_confidence(self, counts: list[int]) -> None:
        if len(counts) == len(self.confidence_counts):
            self.confidence_counts = [
                a + b for a, b in zip(self.confidence_counts, counts, strict=True)
            ]

    def observe_unmatched(self, labels: int) -> None:
        self.feedback_unmatched += labels

    def render(self) -> bytes:
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        head(REQUESTS, "counter", "HTTP requests by endpoint and status code.")
        for (endpoint, code), n in sorted(self.requests.items()):
            labels = _labels(((ENDPOINT_LABEL, endpoint), (CODE_LABEL, str(code))))
            out.append(f"{REQUESTS}{labels} {n}")
        head(
            "orchard_request_errors_total",
            "counter",
            "Requests answered with a status >= 400, by reason.",
        )
        for (endpoint, reason), n in sorted(self.errors.items()):
            labels = _labels(((ENDPOINT_LABEL, endpoint), ("reason", reason)))
            out.append(f"orchard_request_errors_total{labels} {n}")
        head(LATENCY, "histogram", "Latency of inference requests.")
        for endpoint, hist in sorted(self.latency.items()):
            hist.render(LATENCY, ((ENDPOINT_LABEL, endpoint),), out)
        head(REPLAY_REQUESTS, "counter", "Replayed inference requests by endpoint and code.")
        for (endpoint, code), n in sorted(self.replay_requests.items()):
            labels = _labels(((ENDPOINT_LABEL, endpoint), (CODE_LABEL, str(code))))
            out.append(f"{REPLAY_REQUESTS}{labels} {n}")
        head("orchard_batch_rows", "histogram", "Rows per predict call.")
        self.batch_rows.render("orchard_batch_rows", (), out)
        head("orchard_batch_requests", "histogram", "Requests grouped into one predict call.")
        self.batch_requests.render("orchard_batch_requests", (), out)
        head("orchard_predict_duration_seconds", "histogram", "Time in the model per batch.")
        self.predict_seconds.render("orchard_predict_duration_seconds", (), out)
        if self.regression:
            head(PREDICTED_VALUE, "histogram", "Predicted values.")
            self.values.render(PREDICTED_VALUE, (), out)
        else:
            head(PREDICTED_CLASS, "counter", "Predicted rows by class.")
            for cls, n in sorted(self.classes.items()):
                out.append(f"{PREDICTED_CLASS}{_labels(((CLASS_LABEL, cls),))} {n}")
            head(REPLAY_PREDICTED_CLASS, "counter", "Replayed rows by predicted class.")
            for cls, n in sorted(self.replay_classes.items()):
                out.append(f"{REPLAY_PREDICTED_CLASS}{_labels(((CLASS_LABEL, cls),))} {n}")
        head(PREDICTION_BIN, "counter", "Predicted values per training drift bin.")
        for b, n in enumerate(self.prediction_bins):
            out.append(f"{PREDICTION_BIN}{_labels(((BIN_LABEL, str(b)),))} {n}")
        head(PREDICTION_EXPECTED, "gauge", "Test rows' prediction share per class or bin.")
        key = BIN_LABEL if self.regression else CLASS_LABEL
        for label, share in sorted(self.expected_predictions.items()):
            out.append(f"{PREDICTION_EXPECTED}{_labels(((key, label),))} {_num(share)}")
        head(CONFIDENCE_BIN, "counter", "Sampled rows by the classifier's confidence.")
        for b, n in enumerate(self.confidence_counts):
            out.append(f"{CONFIDENCE_BIN}{_labels(((BIN_LABEL, str(b)),))} {n}")
        head(CONFIDENCE_ACCURACY, "gauge", "Held-out accuracy per confidence bin at training.")
        for b, share in enumerate(self.confidence_accuracy):
            out.append(f"{CONFIDENCE_ACCURACY}{_labels(((BIN_LABEL, str(b)),))} {_num(share)}")
        if self.collection is not None:
            c = self.collection
            head("orchard_collected_rows_total", "counter", "Rows written to collection segments.")
            out.append(f'orchard_collected_rows_total{{kind="requests"}} {c.rows}')
            out.append(f'orchard_collected_rows_total{{kind="labels"}} {c.labels}')
            head("orchard_collection_dropped_rows_total", "counter", "Rows not collected.")
            out.append(f"orchard_collection_dropped_rows_total {c.dropped}")
            head("orchard_collection_segments_total", "counter", "Collection segments.")
            for result, n in (
                ("written", c.segments),
                ("failed", c.errors),
                ("removed", c.removed),
            ):
                out.append(f'orchard_collection_segments_total{{result="{result}"}} {n}')
        head(FEEDBACK_ROWS, "counter", "Rows of this pod's answers labelled by feedback.")
        out.append(f"{FEEDBACK_ROWS} {self.feedback_rows}")
        head(FEEDBACK_UNMATCHED, "counter", "Labels of feedback no pod could match.")
        out.append(f"{FEEDBACK_UNMATCHED} {self.feedback_unmatched}")
        if self.regression:
            head(FEEDBACK_ABSOLUTE_ERROR, "counter", "Sum of absolute errors on labelled rows.")
            out.append(f"{FEEDBACK_ABSOLUTE_ERROR} {_num(self.feedback_absolute_error)}")
            head(FEEDBACK_SQUARED_ERROR, "counter", "Sum of squared errors on labelled rows.")
            out.append(f"{FEEDBACK_SQUARED_ERROR} {_num(self.feedback_squared_error)}")
        else:
            head(FEEDBACK_CORRECT, "counter", "Labelled rows predicted right.")
            out.append(f"{FEEDBACK_CORRECT} {self.feedback_correct}")
            head(FEEDBACK_CLASS_ROWS, "counter", "Labelled rows by true class.")
            for label, (rows, _) in sorted(self.feedback_by_class.items()):
                out.append(f"{FEEDBACK_CLASS_ROWS}{_labels(((CLASS_LABEL, label),))} {rows}")
            head(FEEDBACK_CLASS_CORRECT, "counter", "Labelled rows predicted right, by class.")
            for label, (_, correct) in sorted(self.feedback_by_class.items()):
                labels = _labels(((CLASS_LABEL, label),))
                out.append(f"{FEEDBACK_CLASS_CORRECT}{labels} {correct}")
        series = (
            (FEATURE_OBSERVATIONS, "counter", "Non-missing inputs.", self.f_count),
            (FEATURE_MISSING, "counter", "Missing inputs.", self.f_missing),
            ("orchard_feature_value_sum", "gauge", "Sum of numeric inputs.", self.f_sum),
            ("orchard_feature_value_sum_squares", "gauge", "Sum of squares.", self.f_squares),
        )
        for name, kind, text, values in series:
            head(name, kind, text)
            for feature, numeric, v in zip(self.features, self.f_numeric, values, strict=True):
                if name.startswith("orchard_feature_value") and not numeric:
                    continue
                out.append(f"{name}{_labels((('feature', feature),))} {_num(v)}")
        head(FEATURE_BIN, "counter", "Numeric input values per training drift bin.")
        for j, per_bin in sorted(self.f_bins.items()):
            for b, n in enumerate(per_bin):
                labels = _labels(((FEATURE_LABEL, self.features[j]), (BIN_LABEL, str(b))))
                out.append(f"{FEATURE_BIN}{labels} {n}")
        head(FEATURE_OUT_OF_RANGE, "counter", "Numeric input values outside the training range.")
        for j, n in sorted(self.f_out_of_range.items()):
            out.append(f"{FEATURE_OUT_OF_RANGE}{_labels(((FEATURE_LABEL, self.features[j]),))} {n}")
        head(FEATURE_BIN_EXPECTED, "gauge", "Training rows' share per drift bin.")
        for feature, expected in sorted(self.expected_bins.items()):
            for b, share in enumerate(expected):
                labels = _labels(((FEATURE_LABEL, feature), (BIN_LABEL, str(b))))
                out.append(f"{FEATURE_BIN_EXPECTED}{labels} {_num(share)}")
        head(FEATURE_CATEGORY_EXPECTED, "gauge", "Training rows' share per category.")
        for feature, by_category in sorted(self.expected_categories.items()):
            for category, share in sorted(by_category.items()):
                labels = _labels(((FEATURE_LABEL, feature), (CATEGORY_LABEL, category)))
                out.append(f"{FEATURE_CATEGORY_EXPECTED}{labels} {_num(share)}")
        head(FEATURE_CATEGORY, "counter", "String input values by category.")
        for feature, counts in sorted(self.f_categories.items()):
            for category, n in sorted(counts.items()):
                labels = _labels(((FEATURE_LABEL, feature), (CATEGORY_LABEL, category)))
                out.append(f"{FEATURE_CATEGORY}{labels} {n}")
        head("orchard_model_ready", "gauge", "1 once the model is loaded and serving.")
        out.append(f"orchard_model_ready {int(self.ready)}")
        head("orchard_model_info", "gauge", "The served model, as labels.")
        out.append(f"orchard_model_info{_labels(self.info)} 1")
        head("orchard_connections_open", "gauge", "Open HTTP connections.")
        out.append(f"orchard_connections_open {self.connections_open}")
        head(
            "orchard_connections_dropped_total",
            "counter",
            "Connections the server closed on a client, by reason.",
        )
        for reason, n in sorted(self.dropped.items()):
            out.append(f"orchard_connections_dropped_total{_labels((('reason', reason),))} {n}")
        out.append("")
        return "\n".join(out).encode()
