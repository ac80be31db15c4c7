"""Which version a tracking ModelDeployment moves to (`spec.track`): pure.

The rule, in the words status uses:
- only Ready versions of the tracked model count (one that failed verification, or is
  still verifying, never does);
- with nothing serving yet, the first target is the newest (`latest`) or the one with
  the best registered metric (`best`, ties to the newest);
- once a version serves, a challenger is a Ready version newer than it that has not been
  refused against it (`status.tracking.refused`); `latest` takes the newest, `best` the
  best by registered metric (ties to the newest). The registered metrics of two versions
  come from different test sets, so they only rank the challengers: whether one may take
  traffic is judged on the same rows (`orchard.decisions.evaluation`);
- with no challenger, the target is the version serving.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from orchard.api.improvement import RefusedVersion, Track, TrackingStatus

from .analysis import lower_is_better

FIRST_VERSION = "FirstVersion"
CHALLENGER = "Challenger"
SERVING = "Serving"
NO_READY_VERSION = "NoReadyVersion"
REFUSED_LIMIT = 10


@dataclass(frozen=True)
class Registered:
    """One ModelVersion of the tracked model, as the operator read it."""

    name: str
    version: int
    phase: str | None = "Ready"
    task: str | None = None
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Selection:
    target: str | None
    reason: str
    message: str


def registered(bodies: Iterable[Mapping[str, Any]], model: str) -> list[Registered]:
    """The ModelVersions of `model` among `bodies` (a namespace's list), oldest first."""
    out: list[Registered] = []
    for body in bodies:
        spec, status = body.get("spec") or {}, body.get("status") or {}
        number = spec.get("version")
        if spec.get("model") != model or not isinstance(number, int):
            continue
        metrics = {
            k: float(v)
            for k, v in (spec.get("metrics") or {}).items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        name = str((body.get("metadata") or {}).get("name"))
        out.append(Registered(name, number, status.get("phase"), spec.get("task"), metrics))
    return sorted(out, key=lambda r: (r.version, r.name))


def default_metric(task: str | None) -> str:
    """What versions are judged by when the spec names no metric."""
    return "rmse" if task == "regression" else "accuracy"


def track_metric(track: Track, versions: Sequence[Registered]) -> str:
    task = next((v.task for v in reversed(versions) if v.task), None)
    return track.metric or default_metric(task)


def _best(candidates: Sequence[Registered], metric: str) -> Registered:
    """The best registered value of `metric` (a version without it ranks last), ties to
    the newest."""
    sign = -1.0 if lower_is_better(metric) else 1.0

    def key(r: Registered) -> tuple[bool, float, int]:
        value = r.metrics.get(metric)
        return (value is not None, sign * value if value is not None else 0.0, r.version)

    return max(candidates, key=key)


def refused_against(tracking: TrackingStatus | None, stable: str | None) -> set[str]:
    """The versions already judged and refused against the version serving now."""
    if tracking is None or stable is None:
        return set()
    return {r.version for r in tracking.refused if r.against == stable}


def select(
    track: Track, versions: Sequence[Registered], stable: str | None, refused: set[str]
) -> Selection:
    """The version to move to, and why (see the module's docstring)."""
    metric = track_metric(track, versions)
    ready = [v for v in versions if v.phase == "Ready" and v.version >= 1]
    by = f"registered {metric}"
    if stable is None:
        if not ready:
            return Selection(
                None, NO_READY_VERSION, f"no Ready ModelVersion of model {track.model} yet"
            )
        pick = ready[-1] if track.select == "latest" else _best(ready, metric)
        how = "the newest" if track.select == "latest" else f"the best by {by}"
        return Selection(pick.name, FIRST_VERSION, f"{pick.name}: {how} of {len(ready)} Ready")
    serving = next((v for v in versions if v.name == stable), None)
    floor = serving.version if serving is not None else 0
    challengers = [v for v in ready if v.version > floor and v.name not in refused]
    if not challengers:
        skipped = len([v for v in ready if v.version > floor])
        note = f" ({skipped} newer refused)" if skipped else ""
        return Selection(stable, SERVING, f"{stable} serves; no newer Ready version{note}")
    pick = challengers[-1] if track.select == "latest" else _best(challengers, metric)
    how = "the newest" if track.select == "latest" else f"the best by {by}"
    return Selection(
        pick.name,
        CHALLENGER,
        f"{pick.name} challenges {stable}: {how} of {len(challengers)} newer Ready",
    )


def tracking_status(
    track: Track, selection: Selection, previous: TrackingStatus | None
) -> TrackingStatus:
    """status.tracking after a selection (the refused list carried over)."""
    return TrackingStatus(
        model=track.model,
        target=selection.target,
        reason=selection.reason,
        message=selection.message,
        refused=list(previous.refused) if previous is not None else [],
    )


def with_refusal(tracking: TrackingStatus, refusal: RefusedVersion) -> TrackingStatus:
    """The tracking status with one more refused challenger (the newest ten kept)."""
    kept = [
        r for r in tracking.refused if (r.version, r.against) != (refusal.version, refusal.against)
    ]
    return tracking.model_copy(update={"refused": [*kept, refusal][-REFUSED_LIMIT:]})
