"""The Prometheus text the canary analysis reads (prometheus_client's parser) and the counter
differencing it relies on."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from orchard.decisions import analysis as an
from orchard.decisions import metrics_text as mt
from orchard.serving.metrics import Metrics, category_label, printable
from orchard.serving.model import BatchResult, FeatureSummary, PredictionSummary


def test_parses_names_labels_values_and_skips_comments() -> None:
    text = """
# HELP orchard_requests_total HTTP requests.
# TYPE orchard_requests_total counter
orchard_requests_total{endpoint="v2_infer",code="200"} 41
orchard_requests_total{code="500",endpoint="v2_infer"} 3 1700000000000
orchard_model_ready 1
orchard_request_duration_seconds_bucket{endpoint="v2_infer",le="+Inf"} 44
"""
    assert mt.parse_scrape(text) == {
        ("orchard_requests_total", (("code", "200"), ("endpoint", "v2_infer"))): 41,
        ("orchard_requests_total", (("code", "500"), ("endpoint", "v2_infer"))): 3,
        ("orchard_model_ready", ()): 1,
        ("orchard_request_duration_seconds_bucket", (("endpoint", "v2_infer"), ("le", "+Inf"))): 44,
    }


def test_label_values_with_escapes_commas_and_braces() -> None:
    scrape = mt.parse_scrape(r'm{a="x,y}",b="say \"hi\"\nthere",c="back\\slash"} 2.5e-3')
    ((name, labels), value) = next(iter(scrape.items()))
    assert name == "m" and value == pytest.approx(0.0025)
    assert dict(labels) == {"a": "x,y}", "b": 'say "hi"\nthere', "c": "back\\slash"}


def test_special_values() -> None:
    values = list(mt.parse_scrape("a +Inf\nb -Inf\nc NaN\n").values())
    assert values[0] == math.inf and values[1] == -math.inf and math.isnan(values[2])


def test_a_series_written_twice_keeps_its_last_value() -> None:
    assert mt.parse_scrape('c{k="a"} 1\nc{k="a"} 5\n') == {("c", (("k", "a"),)): 5}


@pytest.mark.parametrize(
    "text",
    [
        'm{a="x"',
        "m{a=x} 1",
        "m",
        "m{} ",
        "m one",
        "m 1 abc",
        'orchard_requests_total{endpoint="v2_infer" 1\n',
        "good 1\n" + "x" * 1000,
        "\x00 1",
    ],
)
def test_text_not_in_the_format_raises(text: str) -> None:
    with pytest.raises(mt.MetricsTextError):
        mt.parse_scrape(text)


def test_delta_handles_counter_reset_and_missing_baseline() -> None:
    before = mt.parse_scrape('c{k="a"} 10\nc{k="b"} 50\n')
    after = mt.parse_scrape('c{k="a"} 25\nc{k="b"} 4\nc{k="new"} 7\n')
    d = mt.delta(before, after)
    key = lambda v: ("c", (("k", v),))  # noqa: E731
    assert d[key("a")] == 15  # plain increase
    assert d[key("b")] == 4  # went down: the pod restarted, all of it is new
    assert d[key("new")] == 7  # a series that appeared counts from zero
    assert mt.delta(None, after) == dict(after)


def test_merge_sums_pods() -> None:
    a = mt.parse_scrape('c{k="a"} 1\nd 2\n')
    b = mt.parse_scrape('c{k="a"} 3\n')
    assert mt.merge([a, b]) == {("c", (("k", "a"),)): 4, ("d", ()): 2}


def test_parses_the_model_servers_own_exposition() -> None:
    """The text the real server renders parses, and its counters come through intact."""
    m = Metrics("iris")
    for _ in range(7):
        m.observe_request("v2_infer", 200, 0.003)
    m.observe_request("v2_infer", 500, 0.2)
    m.observe_request("v2_health_ready", 200, None)
    m.classes.update({"setosa": 5, "virginica": 2})
    scrape = mt.parse_scrape(m.render().decode())
    assert scrape[("orchard_requests_total", (("code", "200"), ("endpoint", "v2_infer")))] == 7
    assert scrape[("orchard_requests_total", (("code", "500"), ("endpoint", "v2_infer")))] == 1
    assert scrape[("orchard_predictions_total", (("class", "setosa"),))] == 5
    inf_bucket = (
        "orchard_request_duration_seconds_bucket",
        (("endpoint", "v2_infer"), ("le", "+Inf")),
    )
    assert scrape[inf_bucket] == 8


HOSTILE = ['say "hi"\\', "new\nline", "a\rb\u2028c", "\x00\x85", "\u00e9t\u00e9 \U0001f600"]


def test_every_series_the_server_writes_comes_back_as_written() -> None:
    """All kinds of series, label values a client chose included: one series per sample
    line, each with the server's own value and label values."""
    m = Metrics("penguins")
    m.set_model(["bill", "island"], [True, False], regression=False, info={"digest": "sha256:1"})
    categories = {"island": Counter(category_label(v) for v in HOSTILE)}
    features = FeatureSummary([3, 5], [1, 0], [131.5, 0.0], [5800.25, 0.0], categories)
    m.observe_batch(BatchResult([], features, PredictionSummary(), 5, 0.002), 5, 2)
    for cls in HOSTILE:
        m.classes[cls] = 2
    for _ in range(30):
        m.observe_request("v2_infer", 200, 0.004)
    m.observe_request("v1_predict", 400, 0.001)
    m.observe_error("v1_predict", "bad_request")
    m.connection_dropped("idle")
    text = m.render().decode()

    scrape = mt.parse_scrape(text)
    assert len(scrape) == len([ln for ln in text.split("\n") if ln and not ln.startswith("#")])
    assert scrape[("orchard_feature_value_sum", (("feature", "bill"),))] == 131.5
    assert scrape[("orchard_feature_missing_total", (("feature", "bill"),))] == 1
    assert scrape[("orchard_model_info", (("digest", "sha256:1"), ("model", "penguins")))] == 1
    assert scrape[("orchard_connections_dropped_total", (("reason", "idle"),))] == 1
    assert scrape[("orchard_batch_rows_count", ())] == 1
    shown = {
        dict(labels)["category"]
        for (name, labels) in scrape
        if name == "orchard_feature_category_total"
    }
    assert shown == {category_label(v) for v in HOSTILE}
    classes = {
        dict(labels)["class"]: v
        for (name, labels), v in scrape.items()
        if name == "orchard_predictions_total"
    }
    # A class name's quotes, backslashes and newlines come back as they were; other
    # controls and line separators as the escapes the server writes (`printable`).
    assert classes == {printable(v): 2 for v in HOSTILE}
    window = an.track_window(scrape)
    assert (window.requests, window.errors) == (31, 0)  # a 400 is the client's error
    latency_p95 = window.latency_p95()
    assert latency_p95 is not None and 0.0025 < latency_p95 <= 0.005
