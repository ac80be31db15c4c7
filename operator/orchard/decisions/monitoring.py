"""Input drift of a served version, from its pods' own metrics: pure.

Each serving pod counts its inputs in the drift bins its artifact fixed at training and
states that artifact's training shares beside them (see `orchard.contracts`). The
operator sums the counts of a version's pods over a window (`metrics_text.delta` and
`merge`, as the canary analysis does) and compares them here with the training shares,
by the population stability index (`orchard.artifacts.drift`). Numbers are compared bin
by bin; categories by the training categories plus one bin for every other value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from orchard.artifacts.drift import PSI_THRESHOLD, psi
from orchard.contracts import (
    BIN_LABEL,
    CATEGORY_LABEL,
    FEATURE_BIN,
    FEATURE_BIN_EXPECTED,
    FEATURE_CATEGORY,
    FEATURE_CATEGORY_EXPECTED,
    FEATURE_LABEL,
    OTHER_CATEGORY,
)

from .metrics_text import Scrape


@dataclass(frozen=True)
class FeatureDrift:
    """One input's drift over a window: its PSI and how many values it rests on."""

    feature: str
    psi: float
    samples: int

    def drifted(self, threshold: float = PSI_THRESHOLD, min_samples: int = 1) -> bool:
        return self.samples >= min_samples and self.psi > threshold


def _by_feature(scrape: Scrape, name: str, key: str) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for (metric, labels), value in scrape.items():
        if metric != name:
            continue
        found = dict(labels)
        if FEATURE_LABEL in found and key in found:
            out.setdefault(found[FEATURE_LABEL], {})[found[key]] = value
    return out


def _numeric(expected: Mapping[str, float], counts: Mapping[str, float]) -> tuple[float, int]:
    bins = sorted(expected, key=int)
    observed = [counts.get(b, 0.0) for b in bins]
    return psi([expected[b] for b in bins], observed), int(sum(observed))


def _categorical(expected: Mapping[str, float], counts: Mapping[str, float]) -> tuple[float, int]:
    known = sorted(c for c in expected if c != OTHER_CATEGORY)
    observed = [counts.get(c, 0.0) for c in known]
    observed.append(sum(n for c, n in counts.items() if c not in known))
    shares = [expected[c] for c in known] + [expected.get(OTHER_CATEGORY, 0.0)]
    return psi(shares, observed), int(sum(observed))


def feature_drift(window: Scrape, baseline: Scrape) -> list[FeatureDrift]:
    """Every input with a training baseline, most drifted first.

    `window`: the counts of a version's pods over the window, summed; `baseline`: a scrape
    of one of its pods (every pod of a version states the same training shares).
    """
    drift: list[FeatureDrift] = []
    numeric = _by_feature(window, FEATURE_BIN, BIN_LABEL)
    for feature, expected in _by_feature(baseline, FEATURE_BIN_EXPECTED, BIN_LABEL).items():
        score, samples = _numeric(expected, numeric.get(feature, {}))
        drift.append(FeatureDrift(feature, score, samples))
    categories = _by_feature(window, FEATURE_CATEGORY, CATEGORY_LABEL)
    expected_categories = _by_feature(baseline, FEATURE_CATEGORY_EXPECTED, CATEGORY_LABEL)
    for feature, expected in expected_categories.items():
        score, samples = _categorical(expected, categories.get(feature, {}))
        drift.append(FeatureDrift(feature, score, samples))
    return sorted(drift, key=lambda d: (-d.psi, d.feature))
