"""The trial list of a hyperparameter search, the same in every pod.

An Indexed Job runs trial i in the pod with completion index i; each pod computes the
whole list and takes its own entry, so no pod needs to talk to another. The list
depends only on the spec: parameter names in sorted order (the API server does not keep
map order), values in the order given, and for `random` a generator seeded with
`evaluation.randomState`.
"""

from __future__ import annotations

import math
import random
from typing import Any

from orchard.api.trainingjob import Search
from orchard.trainer.errors import InvalidSpec


def _combination(names: list[str], values: list[list[Any]], index: int) -> dict[str, Any]:
    """The index-th combination of the grid, last name varying fastest."""
    out: dict[str, Any] = {}
    for name, options in zip(reversed(names), reversed(values), strict=True):
        index, pick = divmod(index, len(options))
        out[name] = options[pick]
    return {name: out[name] for name in names}


def grid_size(search: Search) -> int:
    """How many distinct combinations the search's values make."""
    return math.prod(len(v) for v in search.parameters.values())


def trial_list(search: Search, seed: int) -> list[dict[str, Any]]:
    """The parameter sets of every trial, in trial order.

    grid: the first maxTrials combinations in grid order. random: maxTrials distinct
    combinations drawn with a generator seeded by `seed` (all of them, shuffled, when the
    grid is smaller than maxTrials).
    """
    names = sorted(search.parameters)
    values = [list(search.parameters[n]) for n in names]
    empty = next((n for n, v in zip(names, values, strict=True) if not v), None)
    if empty is not None:
        raise InvalidSpec(f"search parameter {empty!r} lists no values", parameter=empty)
    total = grid_size(search)
    count = min(search.max_trials, total)
    if search.strategy == "grid":
        indices = list(range(count))
    else:
        indices = random.Random(seed).sample(range(total), count)
    return [_combination(names, values, i) for i in indices]


def trial_params(search: Search, seed: int, trial: int) -> dict[str, Any]:
    """The parameters of one trial; `InvalidSpec` when the index is past the list."""
    trials = trial_list(search, seed)
    if not 0 <= trial < len(trials):
        raise InvalidSpec(
            f"trial {trial} does not exist: the search has {len(trials)} trials "
            f"(0..{len(trials) - 1})",
            parameter="trial",
        )
    return trials[trial]
