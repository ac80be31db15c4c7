"""The trial list of a search: every pod of the Indexed Job must compute the same one."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchard.api.trainingjob import Search, TrainingJob
from orchard.artifacts import verify_artifact
from orchard.trainer.errors import InvalidSpec
from orchard.trainer.search import grid_size, trial_list, trial_params
from orchard.trainer.train import output_uri, train

PARAMS = {"n_estimators": [5, 10], "max_depth": [2, 4, None], "criterion": ["gini", "entropy"]}


def search(strategy: str = "grid", max_trials: int = 100, **params: Any) -> Search:
    return Search.model_validate(
        {
            "parameters": params or PARAMS,
            "strategy": strategy,
            "maxTrials": max_trials,
            "objective": {"metric": "accuracy"},
        }
    )


def test_grid_is_the_product_in_sorted_name_order() -> None:
    trials = trial_list(search(), seed=0)
    names = sorted(PARAMS)
    expected = [
        dict(zip(names, combo, strict=True))
        for combo in itertools.product(*(PARAMS[n] for n in names))
    ]
    assert trials == expected
    assert len(trials) == grid_size(search()) == 12
    assert trial_list(search(max_trials=4), seed=0) == expected[:4]


def test_map_order_does_not_matter() -> None:
    reordered = search(**dict(reversed(list(PARAMS.items()))))
    assert trial_list(reordered, seed=1) == trial_list(search(), seed=1)
    assert trial_list(search("random", 5, **dict(reversed(list(PARAMS.items())))), 1) == (
        trial_list(search("random", 5), 1)
    )


def test_random_draws_distinct_combinations_from_the_seed() -> None:
    a = trial_list(search("random", 6), seed=42)
    assert len(a) == 6
    assert len({json.dumps(t, sort_keys=True) for t in a}) == 6
    assert all(t in trial_list(search(), 0) for t in a)
    assert trial_list(search("random", 6), seed=42) == a
    assert trial_list(search("random", 6), seed=43) != a
    everything = trial_list(search("random", 50), seed=42)
    assert len(everything) == 12  # no more trials than combinations


def test_random_is_the_same_in_another_process() -> None:
    code = (
        "import json, sys; from orchard.api.trainingjob import Search; "
        "from orchard.trainer.search import trial_list; "
        "s = Search.model_validate(json.loads(sys.argv[1])); "
        "print(json.dumps(trial_list(s, 42)))"
    )
    spec = search("random", 7).model_dump(by_alias=True)
    runs = [
        subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec)],
            capture_output=True,
            check=True,
            text=True,
            env={"PYTHONHASHSEED": str(seed)},
        ).stdout
        for seed in (1, 2)
    ]
    assert runs[0] == runs[1]
    assert json.loads(runs[0]) == trial_list(search("random", 7), 42)


def test_a_large_grid_is_not_materialised() -> None:
    big = search("random", 5, **{f"p{i}": list(range(10)) for i in range(12)})
    assert grid_size(big) == 10**12
    assert len(trial_list(big, 0)) == 5


def test_trial_out_of_range() -> None:
    assert trial_params(search(max_trials=3), 0, 2) == trial_list(search(), 0)[2]
    with pytest.raises(InvalidSpec, match="trial 3 does not exist"):
        trial_params(search(max_trials=3), 0, 3)


def test_a_trial_trains_its_own_parameters_into_its_own_directory(tmp_path: Path) -> None:
    job = TrainingJob.model_validate(
        {
            "metadata": {"name": "iris-search"},
            "spec": {
                "model": "iris",
                "dataset": {"builtin": "iris"},
                "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 3}},
                "search": {
                    "parameters": {"max_depth": [1, 3], "n_estimators": [4, 8]},
                    "maxTrials": 4,
                    "parallelism": 2,
                    "objective": {"metric": "accuracy"},
                },
                "gate": {"metric": "accuracy", "min": 0.99},
                "artifacts": {"uri": f"file://{tmp_path}/store"},
            },
        }
    )
    assert output_uri(job, None, 2) == f"file://{tmp_path}/store/iris/iris-search/trial-2/"
    result = train(job, None, trial=3)
    assert result.params == {"n_estimators": 8, "max_depth": 3}
    assert result.trial == 3
    meta = verify_artifact(tmp_path / "store" / "iris" / "iris-search" / "trial-3")
    assert meta.estimator.params == {"n_estimators": 8, "max_depth": 3}
    assert meta.source.trial == 3
    # In a search the gate is the operator's call on the best trial: reported, not raised.
    assert result.gate["passed"] is (result.metrics["accuracy"] >= 0.99)
