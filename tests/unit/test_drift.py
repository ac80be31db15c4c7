"""Drift against the training baseline (orchard.artifacts.drift): PSI on known
distributions, the bins the trainer fixes, empty bins and categories training never saw."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from orchard.artifacts.drift import (
    OTHER,
    PSI_THRESHOLD,
    CategoryBins,
    NumericBins,
    drifted,
    psi,
)
from orchard.artifacts.metadata import FeatureStats
from orchard.trainer.artifact import decile_bins, feature_stats
from orchard.trainer.evaluate import prediction_stats


def test_psi_by_hand() -> None:
    assert psi([0.5, 0.5], [50, 50]) == 0.0  # counts or shares, the same distribution
    expected = 0.4 * math.log(0.9 / 0.5) + (-0.4) * math.log(0.1 / 0.5)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(expected)
    assert psi([0.5, 0.5], [0.9, 0.1]) == pytest.approx(0.8789, abs=1e-4)
    assert psi([1, 1, 1], [0, 0, 0]) == 0.0  # nothing observed: no evidence of drift
    with pytest.raises(ValueError, match="2 expected bins but 3 observed"):
        psi([0.5, 0.5], [1, 1, 1])


def test_an_empty_bin_is_rare_not_infinite() -> None:
    score = psi([0.5, 0.5], [100, 0])
    assert math.isfinite(score) and score > 2  # floored at 1e-4: large, but a number
    assert psi([0.0, 1.0], [0, 100]) == pytest.approx(0.0, abs=1e-3)  # empty on both sides


def test_training_deciles_fix_the_bins_and_their_shares() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(0.0, 1.0, 10_000)
    bins = decile_bins(train)
    assert len(bins["edges"]) == 9 and len(bins["shares"]) == 10
    assert all(s == pytest.approx(0.1, abs=0.002) for s in bins["shares"])
    numeric = NumericBins(tuple(bins["edges"]), tuple(bins["shares"]))

    same = rng.normal(0.0, 1.0, 2_000)
    shifted = rng.normal(0.5, 1.0, 2_000)  # half a standard deviation
    assert psi(numeric.expected, numeric.count(same)) < 0.02
    assert psi(numeric.expected, numeric.count(shifted)) > PSI_THRESHOLD
    assert not drifted(psi(numeric.expected, numeric.count(same)))


def test_ties_merge_bins_and_an_edge_value_counts_in_the_bin_above() -> None:
    bins = decile_bins(np.array([0.0] * 50 + [1.0] * 30 + [2.0] * 20))
    assert bins["edges"] == [0.0, 1.0, 2.0]
    # [< 0), [0, 1), [1, 2), [>= 2): the training rows by the same rule production uses
    assert bins["shares"] == [0.0, 0.5, 0.3, 0.2]
    numeric = NumericBins(tuple(bins["edges"]), tuple(bins["shares"]))
    assert numeric.count([-1.0, 0.0, 0.5, 1.0, 2.0, 9.0]) == [1, 2, 1, 2]
    assert decile_bins(np.array([np.nan, np.inf])) == {"edges": [], "shares": [1.0]}


def test_bins_must_be_well_formed() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        NumericBins((1.0, 0.0), (0.3, 0.3, 0.4))
    with pytest.raises(ValueError, match="2 edges need 3 shares"):
        NumericBins((0.0, 1.0), (0.5, 0.5))
    with pytest.raises(ValueError, match="1 categories need 2 shares"):
        CategoryBins(("a",), (1.0,))


def test_categories_training_never_saw_share_one_bin() -> None:
    bins = CategoryBins.from_frequencies({"Adelie": 0.45, "Gentoo": 0.35, "Chinstrap": 0.2})
    assert bins.labels() == ("Adelie", "Gentoo", "Chinstrap", OTHER)
    assert bins.expected[-1] == pytest.approx(0.0)
    production = ["Adelie"] * 45 + ["Gentoo"] * 35 + ["Chinstrap"] * 10 + ["Emperor"] * 10
    counts = bins.count(production)
    assert counts == [45, 35, 10, 10]
    assert psi(bins.expected, counts) > PSI_THRESHOLD  # a new species is drift
    assert (
        psi(bins.expected, bins.count(["Adelie"] * 45 + ["Gentoo"] * 35 + ["Chinstrap"] * 20))
        < 1e-3
    )


def test_the_trainers_baseline_carries_the_bins_of_every_input() -> None:
    frame = pd.DataFrame(
        {
            "bill": np.linspace(30.0, 60.0, 200),
            "island": ["Biscoe"] * 120 + ["Dream"] * 80,
        }
    )
    schema = [{"name": "bill", "type": "number"}, {"name": "island", "type": "string"}]
    stats = {k: FeatureStats.model_validate(v) for k, v in feature_stats(frame, schema).items()}
    bill, island = stats["bill"].drift_bins(), stats["island"].drift_bins()
    assert isinstance(bill, NumericBins) and len(bill.expected) == 10
    assert isinstance(island, CategoryBins) and island.categories == ("Biscoe", "Dream")
    assert psi(bill.expected, bill.count(list(np.linspace(30.0, 60.0, 100)))) < 0.02
    assert FeatureStats(type="number", count=0, missing=0).drift_bins() is None  # older artifact


def test_prediction_baselines_have_bins_for_values_and_shares_for_classes() -> None:
    regression = prediction_stats(np.linspace(0.0, 1.0, 101), "regression")
    assert len(regression["bins"]["edges"]) == 9
    classes = prediction_stats(np.array(["a", "a", "b", "a"]), "classification")
    assert CategoryBins.from_frequencies(classes["classes"]).expected == (0.75, 0.25, 0.0)


# --- The server counts production in the same bins ---------------------------------------


def test_the_server_counts_inputs_in_the_training_bins_and_psi_finds_the_shifted_one() -> None:
    """A real model behind the server's own runner and metrics; the exposition read back
    with prometheus_client's parser, as the operator reads it."""
    from prometheus_client.parser import text_string_to_metric_families
    from sklearn.linear_model import LogisticRegression

    from orchard.contracts import FEATURE_BIN, FEATURE_OUT_OF_RANGE
    from orchard.serving.artifact import Column
    from orchard.serving.metrics import Metrics
    from orchard.serving.model import ModelRunner

    rng = np.random.default_rng(7)
    train = pd.DataFrame({"a": rng.normal(0, 1, 5_000), "b": rng.uniform(0, 10, 5_000)})
    schema = [{"name": "a", "type": "number"}, {"name": "b", "type": "number"}]
    baseline = {k: FeatureStats.model_validate(v) for k, v in feature_stats(train, schema).items()}
    model = LogisticRegression().fit(train.to_numpy(), (train["a"] > 0).to_numpy())
    runner = ModelRunner(model, [Column("a", "number"), Column("b", "number")], None, baseline)
    metrics = Metrics("m")
    metrics.set_model(["a", "b"], [True, True], False, {})

    rows = np.column_stack([rng.normal(0, 1, 1_000), rng.uniform(5, 15, 1_000)])  # b shifted
    for part in np.array_split(rows, 10):
        metrics.observe_batch(runner.predict_batch([part], [len(part)]), len(part), 1)

    bins: dict[str, dict[int, float]] = {"a": {}, "b": {}}
    out_of_range: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == FEATURE_BIN:
                bins[sample.labels["feature"]][int(sample.labels["bin"])] = sample.value
            elif sample.name == FEATURE_OUT_OF_RANGE:
                out_of_range[sample.labels["feature"]] = sample.value
    scores = {}
    for name in ("a", "b"):
        expected = baseline[name].drift_bins()
        assert isinstance(expected, NumericBins)
        counts = [bins[name].get(i, 0.0) for i in range(len(expected.expected))]
        assert sum(counts) == 1_000
        scores[name] = psi(expected.expected, counts)
    assert scores["a"] < 0.05 and scores["b"] > PSI_THRESHOLD
    assert out_of_range["a"] < 10 and 400 < out_of_range["b"] < 600  # b above 10: half


def test_the_operator_finds_the_drifted_inputs_across_pods_from_their_metrics() -> None:
    """Two pods of one version serve a real pipeline (a number, a category); their
    expositions are parsed, their window summed and compared with the training shares
    the pods state: the shifted number and the new category are found, the rest is not."""
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    from orchard.decisions.metrics_text import delta, merge, parse_scrape
    from orchard.decisions.monitoring import feature_drift
    from orchard.serving.artifact import Column
    from orchard.serving.metrics import Metrics
    from orchard.serving.model import ModelRunner

    rng = np.random.default_rng(11)
    n = 4_000
    train = pd.DataFrame(
        {
            "a": rng.normal(0, 1, n),
            "b": rng.uniform(0, 10, n),
            "island": rng.choice(["Biscoe", "Dream", "Torgersen"], n, p=[0.5, 0.3, 0.2]),
        }
    )
    schema = [
        {"name": "a", "type": "number"},
        {"name": "b", "type": "number"},
        {"name": "island", "type": "string"},
    ]
    baseline = {k: FeatureStats.model_validate(v) for k, v in feature_stats(train, schema).items()}
    pipeline = make_pipeline(
        ColumnTransformer(
            [("island", OneHotEncoder(handle_unknown="ignore"), ["island"])],
            remainder="passthrough",
        ),
        LogisticRegression(),
    ).fit(train, train["a"] > 0)
    columns = [Column("a", "number"), Column("b", "number"), Column("island", "string")]

    def pod() -> tuple[ModelRunner, Metrics]:
        runner = ModelRunner(pipeline, columns, "classification", baseline)
        metrics = Metrics("penguins")
        metrics.set_model(["a", "b", "island"], [True, True, False], False, {})
        metrics.set_baseline(runner.drift_bins)
        return runner, metrics

    def serve(runner: ModelRunner, metrics: Metrics, rows: int, shifted: bool) -> None:
        part = [
            rng.normal(0, 1, rows),
            rng.uniform(5, 15, rows) if shifted else rng.uniform(0, 10, rows),
            np.array(
                rng.choice(["Biscoe", "Dream", "Emperor"], rows, p=[0.4, 0.3, 0.3])
                if shifted
                else rng.choice(["Biscoe", "Dream", "Torgersen"], rows, p=[0.5, 0.3, 0.2]),
                dtype=object,
            ),
        ]
        metrics.observe_batch(runner.predict_batch([part], [rows]), rows, 1)

    pods = [pod(), pod()]
    for runner, metrics in pods:  # before the window: in distribution
        serve(runner, metrics, 300, shifted=False)
    start = [parse_scrape(m.render().decode()) for _, m in pods]
    assert [d.psi < 0.05 for d in feature_drift(merge(start), start[0])] == [True] * 3

    for runner, metrics in pods:
        for _ in range(4):
            serve(runner, metrics, 100, shifted=True)
    end = [parse_scrape(m.render().decode()) for _, m in pods]
    window = merge(delta(before, after) for before, after in zip(start, end, strict=True))
    drift = {d.feature: d for d in feature_drift(window, end[0])}
    assert drift["a"].samples == drift["b"].samples == drift["island"].samples == 800
    assert not drift["a"].drifted() and drift["b"].drifted() and drift["island"].drifted()
    assert not drift["island"].drifted(min_samples=1_000)  # too few values to say
