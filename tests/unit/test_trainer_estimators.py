"""The estimator allowlist and the hyperparameter check that runs before training."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchard.api import trainingjob as api
from orchard.api.trainingjob import TrainingJob
from orchard.trainer.errors import InvalidSpec
from orchard.trainer.estimators import ESTIMATORS, build_estimator, task_of
from orchard.trainer.train import train


def test_the_allowlist_is_the_apis() -> None:
    assert set(ESTIMATORS) == set(api.CLASSIFIERS) | set(api.REGRESSORS)
    for name in api.CLASSIFIERS:
        assert task_of(name) == "classification"
    for name in api.REGRESSORS:
        assert task_of(name) == "regression"
    for name, (cls, _) in ESTIMATORS.items():
        assert cls.__name__ == name


@pytest.mark.parametrize("name", ["os.system", "sklearn.svm.SVC", "MLPClassifier", "svc"])
def test_unknown_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidSpec, match="not allowed"):
        build_estimator(name, {})


@pytest.mark.parametrize(
    ("name", "params", "match", "parameter"),
    [
        (
            "RandomForestClassifier",
            {"n_estimator": 10},
            "has no parameter 'n_estimator'",
            "n_estimator",
        ),
        ("RandomForestClassifier", {"n_estimators": -1}, "n_estimators", "n_estimators"),
        ("RandomForestClassifier", {"n_estimators": "many"}, "n_estimators", "n_estimators"),
        ("LogisticRegression", {"C": 0}, "'C'", "C"),
        ("SVC", {"kernel": "quantum"}, "kernel", "kernel"),
        ("Ridge", {"alpha": {"nested": 1}}, "must be a number", "alpha"),
    ],
)
def test_bad_hyperparameters_are_refused(
    name: str, params: dict[str, object], match: str, parameter: str
) -> None:
    with pytest.raises(InvalidSpec, match=match) as info:
        build_estimator(name, params)
    assert info.value.details.get("parameter") == parameter


def test_good_hyperparameters_and_the_seed() -> None:
    est = build_estimator("RandomForestClassifier", {"n_estimators": 7, "max_depth": None}, 3)
    assert est.get_params()["n_estimators"] == 7
    assert est.get_params()["random_state"] == 3
    assert (
        build_estimator("RandomForestClassifier", {"random_state": 9}, 3).get_params()[
            "random_state"
        ]
        == 9
    )
    assert "random_state" not in build_estimator("KNeighborsClassifier", {}, 3).get_params()


def test_refused_before_any_data_is_read(tmp_path: Path) -> None:
    """The dataset does not exist: the error must still be about the parameter."""
    job = TrainingJob.model_validate(
        {
            "spec": {
                "model": "m",
                "dataset": {"uri": f"file://{tmp_path}/absent.csv", "target": "y"},
                "estimator": {"name": "Ridge", "params": {"alpah": 1.0}},
                "artifacts": {"uri": f"file://{tmp_path}/out"},
            }
        }
    )
    with pytest.raises(InvalidSpec, match="alpah"):
        train(job)
