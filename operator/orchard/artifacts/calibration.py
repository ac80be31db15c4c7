"""Estimated accuracy before labels arrive: the classifier's confidence, calibrated at training.

A classifier's confidence in a row is its highest class probability (`predict_proba`). The
trainer bins the held-out rows by that confidence (`CONFIDENCE_EDGES`) and records each
bin's rows and how many of them were predicted right (histogram binning, as in Zadrozny
and Elkan 2001): metadata.json `calibration`. In production the server counts a sample of
its rows in the same bins and states the bins' held-out accuracy beside the counts, so the
estimate of a window is the bins' accuracy weighted by its rows there. It rests on the
held-out rows and assumes that the relation of confidence to correctness holds in
production (drift can break it): an estimate, reported beside the measured accuracy.

A bin's accuracy is smoothed towards its mean confidence by `PRIOR_ROWS` pseudo-rows, so
a bin that held few held-out rows (or none) says what a calibrated model would.
Only the standard library: the server and the operator read it.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE_EDGES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
PRIOR_ROWS = 2.0


@dataclass(frozen=True)
class ConfidenceBins:
    """Held-out accuracy per confidence bin: bin i holds edges[i-1] <= confidence < edges[i]."""

    edges: tuple[float, ...]
    accuracy: tuple[float, ...]  # smoothed, one per bin (len(edges) + 1)
    rows: tuple[int, ...]  # held-out rows per bin, as counted

    def __post_init__(self) -> None:
        if len(self.accuracy) != len(self.edges) + 1 or len(self.rows) != len(self.accuracy):
            raise ValueError(f"{len(self.edges)} edges need {len(self.edges) + 1} bins")

    def index(self, confidence: float) -> int:
        return bisect.bisect_right(self.edges, confidence)


def bin_middles(edges: Sequence[float]) -> list[float]:
    """The confidence a calibrated model has in the middle of each bin."""
    bounds = [0.0, *edges, 1.0]
    return [(a + b) / 2 for a, b in itertools.pairwise(bounds)]


def calibrate(
    confidence: Sequence[float], correct: Sequence[bool], edges: Sequence[float] = CONFIDENCE_EDGES
) -> ConfidenceBins:
    """The bins of held-out rows' confidences and whether each was predicted right."""
    n = len(edges) + 1
    rows, right, total = [0] * n, [0] * n, [0.0] * n
    for conf, ok in zip(confidence, correct, strict=True):
        i = bisect.bisect_right(edges, conf)
        rows[i] += 1
        right[i] += int(ok)
        total[i] += conf
    middles = bin_middles(edges)
    accuracy = []
    for i in range(n):
        prior = total[i] / rows[i] if rows[i] else middles[i]
        accuracy.append(round((right[i] + PRIOR_ROWS * prior) / (rows[i] + PRIOR_ROWS), 6))
    return ConfidenceBins(tuple(edges), tuple(accuracy), tuple(rows))


def estimate(counts: Sequence[float], accuracy: Sequence[float]) -> float | None:
    """The accuracy a window's confidence counts imply (None without any)."""
    total = sum(counts)
    if total <= 0:
        return None
    return sum(c * a for c, a in zip(counts, accuracy, strict=True)) / total
