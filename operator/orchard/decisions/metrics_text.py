"""Parse the Prometheus text exposition format into samples.

The operator scrapes each serving pod's ``/metrics`` itself (no Prometheus server is
needed for a rollout), so it needs a small, strict parser of the text format: one
sample per line, ``name{label="value",...} value [timestamp]``, comments ignored.
Kept pure so the analysis can be tested from literal text.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

Labels = tuple[tuple[str, str], ...]


class MetricsTextError(ValueError):
    """The text is not in the Prometheus exposition format."""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: Labels
    value: float

    def label(self, key: str, default: str = "") -> str:
        for k, v in self.labels:
            if k == key:
                return v
        return default


# A scrape: (name, sorted labels) -> value.
Scrape = Mapping[tuple[str, Labels], float]

_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _parse_value(text: str) -> float:
    lowered = text.lower()
    if lowered in ("+inf", "inf"):
        return math.inf
    if lowered == "-inf":
        return -math.inf
    if lowered == "nan":
        return math.nan
    try:
        return float(text)
    except ValueError as exc:
        raise MetricsTextError(f"not a number: {text!r}") from exc


def _parse_labels(line: str, pos: int) -> tuple[Labels, int]:
    """Parse ``{a="x",b="y"}`` starting at ``line[pos] == '{'``; return labels and end pos."""
    labels: list[tuple[str, str]] = []
    pos += 1
    while True:
        while pos < len(line) and line[pos] in " ,":
            pos += 1
        if pos >= len(line):
            raise MetricsTextError(f"unterminated labels: {line!r}")
        if line[pos] == "}":
            return tuple(sorted(labels)), pos + 1
        eq = line.find("=", pos)
        if eq < 0 or eq + 1 >= len(line) or line[eq + 1] != '"':
            raise MetricsTextError(f"bad label in {line!r}")
        key = line[pos:eq].strip()
        pos = eq + 2
        chars: list[str] = []
        while True:
            if pos >= len(line):
                raise MetricsTextError(f"unterminated label value: {line!r}")
            ch = line[pos]
            if ch == "\\" and pos + 1 < len(line):
                chars.append(_ESCAPES.get(line[pos + 1], "\\" + line[pos + 1]))
                pos += 2
                continue
            if ch == '"':
                pos += 1
                break
            chars.append(ch)
            pos += 1
        labels.append((key, "".join(chars)))


def parse_line(line: str) -> Sample | None:
    """One exposition line to a sample; None for blank lines and comments."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    brace = line.find("{")
    space = line.find(" ")
    if brace >= 0 and (space < 0 or brace < space):
        name = line[:brace]
        labels, pos = _parse_labels(line, brace)
        rest = line[pos:].split()
    else:
        parts = line.split()
        name, labels, rest = parts[0], (), parts[1:]
    if not name or not rest or len(rest) > 2:
        raise MetricsTextError(f"bad sample line: {line!r}")
    return Sample(name=name, labels=labels, value=_parse_value(rest[0]))


def parse(text: str) -> list[Sample]:
    """Every sample of an exposition text, in order."""
    samples = []
    for line in text.splitlines():
        sample = parse_line(line)
        if sample is not None:
            samples.append(sample)
    return samples


def to_scrape(samples: Iterable[Sample]) -> dict[tuple[str, Labels], float]:
    return {(s.name, s.labels): s.value for s in samples}


def parse_scrape(text: str) -> dict[tuple[str, Labels], float]:
    return to_scrape(parse(text))


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
