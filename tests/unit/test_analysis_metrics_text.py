"""The Prometheus text parser and counter differencing the canary analysis relies on."""

from __future__ import annotations

import math

import pytest

from orchard.decisions import metrics_text as mt
from orchard.serving.metrics import Metrics


def test_parses_names_labels_values_and_skips_comments() -> None:
    text = """
# HELP orchard_requests_total HTTP requests.
# TYPE orchard_requests_total counter
orchard_requests_total{endpoint="v2_infer",code="200"} 41
orchard_requests_total{code="500",endpoint="v2_infer"} 3 1700000000000
orchard_model_ready 1
orchard_request_duration_seconds_bucket{endpoint="v2_infer",le="+Inf"} 44
"""
    samples = mt.parse(text)
    assert [s.name for s in samples] == [
        "orchard_requests_total",
        "orchard_requests_total",
        "orchard_model_ready",
        "orchard_request_duration_seconds_bucket",
    ]
    assert samples[0].labels == (("code", "200"), ("endpoint", "v2_infer"))
    assert samples[1].label("code") == "500" and samples[1].value == 3
    assert samples[2].labels == () and samples[2].value == 1
    assert samples[3].label("le") == "+Inf"


def test_label_values_with_escapes_commas_and_braces() -> None:
    sample = mt.parse_line(r'm{a="x,y}",b="say \"hi\"\nthere",c="back\\slash"} 2.5e-3')
    assert sample is not None
    assert sample.label("a") == "x,y}"
    assert sample.label("b") == 'say "hi"\nthere'
    assert sample.label("c") == "back\\slash"
    assert sample.value == pytest.approx(0.0025)


def test_special_values() -> None:
    values = [s.value for s in mt.parse("a +Inf\nb -Inf\nc NaN\n")]
    assert values[0] == math.inf and values[1] == -math.inf and math.isnan(values[2])


@pytest.mark.parametrize(
    "line",
    ['m{a="x"', "m{a=x} 1", "m", "m{} ", "m one", "m 1 2 3"],
)
def test_malformed_lines_raise(line: str) -> None:
    with pytest.raises(mt.MetricsTextError):
        mt.parse_line(line)


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
