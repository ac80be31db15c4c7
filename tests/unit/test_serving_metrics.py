"""/metrics stays valid and small whatever clients send.

One value of 1e160 used to overflow the sum of squares (and /metrics answered 500 from
then on); a carriage return or U+2028 in a string feature ended a line for the
operator's parser; 50 distinct 600 KB strings made every scrape 30 MB. The text must
parse (with prometheus_client's parser, which the operator uses), hold no inf or NaN,
and stay small.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_serving_support import app_for, mixed_artifact, running_server

from orchard.decisions import analysis as an
from orchard.decisions import metrics_text as mt
from orchard.serving.app import App
from orchard.serving.limits import MAX_ABS_VALUE, MAX_CATEGORIES, MAX_LABEL_CHARS
from orchard.serving.metrics import OTHER, TRUNCATED, Metrics, category_label
from orchard.serving.model import BatchResult, FeatureSummary, PredictionSummary

# Every character some parser takes for the end of a line, and other controls.
HOSTILE = [
    "a\rb", "c\u2028d", "e\u2029f", "g\x85h", "\x0b\x0c\x1c\x1d\x1e", "nul\x00", "\x7f",
    'quote"and\\backslash', "new\nline", "tab\there", "\u00e9t\u00e9 \U0001f600",
]  # fmt: skip


def check(text: str) -> dict[tuple[str, mt.Labels], float]:
    """Parse as the operator does; every sample line is one series; no inf or NaN in sums."""
    scrape = mt.parse_scrape(text)
    lines = [ln for ln in text.split("\n") if ln and not ln.startswith("#")]
    assert scrape and len(scrape) == len(lines)
    for (name, _), value in scrape.items():
        if not name.endswith("_bucket"):
            assert math.isfinite(value), (name, value)
    return scrape


def batch(
    total: float = 0.0, squares: float = 0.0, categories: dict[str, Counter[str]] | None = None
) -> BatchResult:
    features = FeatureSummary([1, 1], [0, 0], [total, 0.0], [squares, 0.0], categories or {})
    return BatchResult([], features, PredictionSummary(), 1, 0.001)


@pytest.fixture(scope="module")
def penguins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, App]]:
    """The trainer's kind of pipeline: unseen categories are ignored, not errors."""
    root = tmp_path_factory.mktemp("mixed") / "m"
    app = app_for(mixed_artifact(root, handle_unknown="ignore"), "penguins")
    with running_server(app) as base:
        yield base, app


def row(island: str, bill: Any = 44.0) -> dict[str, Any]:
    return {"island": island, "sex": "male", "bill_length_mm": bill, "flipper_length_mm": 190}


# --- sums -------------------------------------------------------------------------------------


def test_huge_values_cannot_overflow_the_feature_sums() -> None:
    """Sums saturate instead of reaching inf, and render as numbers the parsers read."""
    m = Metrics("m")
    m.set_model(["x", "y"], [True, True], regression=True, info={})
    for _ in range(10):
        m.observe_batch(batch(total=1e308, squares=math.inf), 1, 1)
    m.observe_batch(batch(total=math.nan, squares=math.nan), 1, 1)
    for v in (1e308, 1e308, -1e308, math.inf):
        m.values.observe(v)
    scrape = check(m.render().decode())
    sums = {k: v for k, v in scrape.items() if k[0].startswith("orchard_feature_value_sum")}
    assert all(math.isfinite(v) for v in sums.values()) and len(sums) == 4
    assert scrape[("orchard_prediction_value_sum", ())] < math.inf


def test_one_value_of_1e160_cannot_break_metrics(penguins: tuple[str, App]) -> None:
    """1e160 is beyond float32, refused before it is counted; /metrics keeps answering."""
    base, _ = penguins
    r = httpx.post(f"{base}/v1/models/penguins:predict", json={"instances": [row("Dream", 1e160)]})
    assert r.status_code == 400
    assert r.json()["error"].endswith("the range a model accepts")
    top = [row("Dream", MAX_ABS_VALUE) for _ in range(1000)]
    assert httpx.post(f"{base}/v1/models/penguins:predict", json={"instances": top}).is_success
    metrics = httpx.get(f"{base}/metrics")
    assert metrics.status_code == 200
    scrape = check(metrics.text)
    key = ("orchard_feature_value_sum_squares", (("feature", "bill_length_mm"),))
    assert scrape[key] == pytest.approx(1000 * MAX_ABS_VALUE**2, rel=1e-6)  # finite, exact


# --- label values ---------------------------------------------------------------------------


def test_control_and_line_separator_characters_cannot_break_a_scrape(
    penguins: tuple[str, App],
) -> None:
    base, _ = penguins
    r = httpx.post(
        f"{base}/v1/models/penguins:predict", json={"instances": [row(v) for v in HOSTILE]}
    )
    assert r.status_code == 200, r.text
    text = httpx.get(f"{base}/metrics").text
    for separator in ("\r", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x1c", "\x00"):
        assert separator not in text
    scrape = check(text)
    islands = {
        dict(labels)["category"]
        for (name, labels) in scrape
        if name == "orchard_feature_category_total" and dict(labels)["feature"] == "island"
    }
    # Readable escapes, and what needs no escape comes through as sent.
    assert {"a\\x0db", "c\\u2028d", "g\\x85h", "nul\\x00", "tab\\x09here"} <= islands
    assert {'quote"and\\backslash', "new\nline", "\u00e9t\u00e9 \U0001f600"} <= islands
    # The canary analysis still reads the scrape.
    assert an.track_window(scrape).requests >= 1


def test_long_distinct_strings_cannot_bloat_the_metrics(penguins: tuple[str, App]) -> None:
    """50 distinct 600 KB strings: 30 MB of input, a few KB of labels."""
    base, _ = penguins
    for start in range(0, 50, 10):
        rows = [row(f"{i:02d}" + "x" * 600_000) for i in range(start, start + 10)]
        r = httpx.post(f"{base}/v1/models/penguins:predict", json={"instances": rows}, timeout=30)
        assert r.status_code == 200, r.text
    more = [row(f"island-{i}") for i in range(2 * MAX_CATEGORIES)]
    assert httpx.post(f"{base}/v1/models/penguins:predict", json={"instances": more}).is_success
    text = httpx.get(f"{base}/metrics").text
    assert len(text.encode()) < 64 * 1024
    scrape = check(text)
    islands = {
        dict(labels)["category"]: v
        for (name, labels), v in scrape.items()
        if name == "orchard_feature_category_total" and dict(labels)["feature"] == "island"
    }
    assert len(islands) <= MAX_CATEGORIES + 1
    assert OTHER in islands
    assert max(len(c) for c in islands) <= MAX_LABEL_CHARS


def test_category_labels_are_printable_and_cut_short() -> None:
    assert category_label("Dream") == "Dream"
    assert category_label("a\rb\u2028") == "a\\x0db\\u2028"
    long_a, long_b = "p" * 70 + "a", "p" * 70 + "b"
    assert category_label(long_a) == category_label(long_b) == "p" * 63 + TRUNCATED
    assert category_label("\x00" * 64).endswith(TRUNCATED)  # escapes count toward the cap
    assert len(category_label("\x00" * 64)) == MAX_LABEL_CHARS
    assert category_label("q" * MAX_LABEL_CHARS) == "q" * MAX_LABEL_CHARS


def test_metrics_text_is_bounded_by_the_category_cap() -> None:
    """However many distinct values arrive, a feature keeps at most 51 short series."""
    m = Metrics("m")
    m.set_model(["x", "s"], [True, False], regression=False, info={})
    for start in range(0, 5000, 500):
        labels = Counter(category_label(f"{i}" + "z" * 1000) for i in range(start, start + 500))
        m.observe_batch(batch(categories={"s": labels}), 500, 1)
    text = m.render().decode()
    check(text)
    assert text.count("orchard_feature_category_total{") == MAX_CATEGORIES + 1
    assert len(text) < 16 * 1024
