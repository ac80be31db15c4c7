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
