"""Drift against the training baseline: the population stability index over bins that
were fixed at training time.

The trainer fixes each numeric input's bins at the deciles of its training rows and
records the share of those rows in each bin (metadata.json `featureStats.<name>.bins`).
A categorical input's bins are its most frequent training categories
(`featureStats.<name>.frequencies`) and one more for everything else, where a category
training never saw lands. Production counts the same bins, and PSI compares the shares:

    PSI = sum over bins of (actual - expected) * ln(actual / expected)

with every share floored at `SHARE_FLOOR`, so that an empty bin counts as rare rather
than infinitely different. Read the way the industry does: below 0.1 no shift, 0.1 to
0.2 a moderate one, above `PSI_THRESHOLD` (0.2) the input has drifted.

Only the standard library (and orchard.contracts): the server counts bins on its request
path and the operator sums counts across pods, and neither needs numpy for it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from orchard.contracts import OTHER_CATEGORY

PSI_THRESHOLD = 0.2
SHARE_FLOOR = 1e-4
DECILES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
OTHER = OTHER_CATEGORY  # the bin of categories outside the training baseline's list


def shares(counts: Sequence[float]) -> list[float]:
    """Counts as shares of their total (all zero when there are none)."""
    total = float(sum(counts))
    return [c / total if total > 0 else 0.0 for c in counts]


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """The population stability index of `actual` against `expected`, bin by bin.

    Either may be counts or shares (each is normalised); both must have the same bins.
    No observations at all is no evidence of drift: 0.0.
    """
    if len(expected) != len(actual):
        raise ValueError(f"{len(expected)} expected bins but {len(actual)} observed")
    if sum(actual) <= 0:
        return 0.0
    total = 0.0
    for e, a in zip(shares(expected), shares(actual), strict=True):
        e, a = max(e, SHARE_FLOOR), max(a, SHARE_FLOOR)
        total += (a - e) * math.log(a / e)
    return total


def psi_by_bin(expected: Mapping[str, float], counts: Mapping[str, float]) -> tuple[float, int]:
    """PSI and the values counted, with bins named by their index ("0", "1", …): the
    expected bins are all there are (a count in any other bin is left out)."""
    bins = sorted(expected, key=int)
    observed = [counts.get(b, 0.0) for b in bins]
    return psi([expected[b] for b in bins], observed), int(sum(observed))


def psi_by_category(
    expected: Mapping[str, float], counts: Mapping[str, float]
) -> tuple[float, int]:
    """PSI and the values counted, by category: the expected categories, then one bin
    (`OTHER`) for every other value, training's unseen ones included."""
    known = sorted(c for c in expected if c != OTHER)
    observed = [counts.get(c, 0.0) for c in known]
    observed.append(sum(n for c, n in counts.items() if c not in known))
    shares = [expected[c] for c in known] + [expected.get(OTHER, 0.0)]
    return psi(shares, observed), int(sum(observed))


@dataclass(frozen=True)
class NumericBins:
    """Bins over a number: bin i holds edges[i-1] <= value < edges[i] (the first and the
    last are open-ended), so there is one bin more than there are edges."""

    edges: tuple[float, ...]
    expected: tuple[float, ...]  # the training rows' share in each bin

    def __post_init__(self) -> None:
        if list(self.edges) != sorted(set(self.edges)):
            raise ValueError("bin edges must be strictly increasing")
        if len(self.expected) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} shares")

    def index(self, value: float) -> int:
        return bisect.bisect_right(self.edges, value)

    def count(self, values: Sequence[float]) -> list[int]:
        counts = [0] * len(self.expected)
        for value in values:
            counts[self.index(value)] += 1
        return counts


@dataclass(frozen=True)
class CategoryBins:
    """Bins over a category: each training category, then `OTHER` for the rest."""

    categories: tuple[str, ...]
    expected: tuple[float, ...]  # one share per category, then the rest's share

    def __post_init__(self) -> None:
        if len(self.expected) != len(self.categories) + 1:
            raise ValueError(
                f"{len(self.categories)} categories need {len(self.categories) + 1} shares"
            )

    @classmethod
    def from_frequencies(cls, frequencies: dict[str, float]) -> CategoryBins:
        """From the training baseline's category shares (its most frequent ones)."""
        known = tuple(frequencies)
        rest = max(0.0, 1.0 - sum(frequencies.values()))
        return cls(known, (*(frequencies[k] for k in known), rest))

    def index(self, value: str) -> int:
        try:
            return self.categories.index(value)
        except ValueError:
            return len(self.categories)

    def count(self, values: Sequence[str]) -> list[int]:
        counts = [0] * len(self.expected)
        for value in values:
            counts[self.index(value)] += 1
        return counts

    def labels(self) -> tuple[str, ...]:
        return (*self.categories, OTHER)


def drifted(score: float, threshold: float = PSI_THRESHOLD) -> bool:
    return score > threshold
