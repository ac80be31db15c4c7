"""A serving pod's Prometheus text as the canary analysis reads it, and counter arithmetic.

The operator scrapes each serving pod's ``/metrics`` itself (no Prometheus server is
needed for a rollout). prometheus_client's parser reads the text exposition format; a
scrape is then a plain mapping from (name, sorted labels) to value, so the analysis can
be tested from literal text. The handler bounds the text before it gets here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]

# A scrape: (name, sorted labels) -> value.
Scrape = Mapping[tuple[str, Labels], float]


class MetricsTextError(ValueError):
    """The text is not in the Prometheus exposition format."""


def parse_scrape(text: str) -> dict[tuple[str, Labels], float]:
    """Every sample of an exposition text (a series written twice keeps its last value);
    `MetricsTextError` when any line is not in the format."""
    try:
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): float(sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }
    except ValueError as exc:  # the parser's one error for text it cannot read
        raise MetricsTextError(str(exc) or "not in the exposition format") from exc


def delta(before: Scrape | None, after: Scrape) -> dict[tuple[str, Labels], float]:
    """Counter increase between two scrapes of one pod.

    A counter that went down means the process restarted: its new value is all of
    the increase (Prometheus' own reset rule). Without a ``before`` scrape, the whole
    cumulative value counts (the pod's life so far).
    """
    out: dict[tuple[str, Labels], float] = {}
    for key, value in after.items():
        prev = before.get(key, 0.0) if before is not None else 0.0
        out[key] = value if value < prev else value - prev
    return out


def merge(scrapes: Iterable[Scrape]) -> dict[tuple[str, Labels], float]:
    """Sum samples with the same name and labels over several pods."""
    out: dict[tuple[str, Labels], float] = {}
    for scrape in scrapes:
        for key, value in scrape.items():
            out[key] = out.get(key, 0.0) + value
    return out
