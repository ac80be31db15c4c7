"""Each data check fails with its own name and the column at fault, before any fit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from orchard.api.trainingjob import DataChecks, TrainingJob
from orchard.trainer.checks import column_type, has_type, run_checks
from orchard.trainer.errors import DataCheckFailed
from orchard.trainer.train import train

PENGUINS = Path(__file__).parent.parent / "data" / "penguins.csv"
FEATURES = ["island", "bill_length_mm", "sex", "year"]


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return pd.read_csv(PENGUINS)


def check(
    frame: pd.DataFrame,
    target: str = "species",
    features: list[str] | None = None,
    task: Any = "classification",
    **checks: Any,
) -> None:
    run_checks(frame, target, features or FEATURES, DataChecks.model_validate(checks), task)


def failure(**kwargs: Any) -> DataCheckFailed:
    with pytest.raises(DataCheckFailed) as info:
        check(**kwargs)
    return info.value


def test_a_clean_dataset_passes(frame: pd.DataFrame) -> None:
    check(
        frame,
        minRows=100,
        maxMissingFraction=0.1,
        requiredColumns=[
            {"name": "island", "type": "string"},
            {"name": "body_mass_g", "type": "integer"},  # floats only because of NaN
            {"name": "flipper_length_mm", "type": "number"},
            {"name": "year", "type": "integer"},
        ],
        allowedLabels=["Adelie", "Chinstrap", "Gentoo"],
    )


CASES = [
    # checks, target, features, task -> check, column, text in message
    ({}, "kind", None, "classification", "targetPresent", "kind", "target column 'kind'"),
    ({}, "species", ["island", "beak"], "classification", "featuresPresent", "beak", "'beak'"),
    (
        {"requiredColumns": [{"name": "colour", "type": "string"}]},
        "species",
        None,
        "classification",
        "requiredColumns",
        "colour",
        "'colour' is not among the file's 8 columns",
    ),
    (
        {"requiredColumns": [{"name": "island", "type": "number"}]},
        "species",
        None,
        "classification",
        "requiredColumns",
        "island",
        "has type string, but number",
    ),
    (
        {"requiredColumns": [{"name": "bill_length_mm", "type": "integer"}]},
        "species",
        None,
        "classification",
        "requiredColumns",
        "bill_length_mm",
        "integer is required",
    ),
    ({"minRows": 1000}, "species", None, "classification", "minRows", None, "340 rows"),
    (
        {"maxMissingFraction": 0.03},
        "species",
        None,
        "classification",
        "maxMissingFraction",
        "sex",
        "'sex' has 5.3% missing",
    ),
    (
        {"allowedLabels": ["Adelie", "Gentoo"]},
        "species",
        None,
        "classification",
        "allowedLabels",
        "species",
        "1 label outside allowedLabels ('Adelie', 'Gentoo'), in 70 rows",
    ),
    ({}, "species", None, "regression", "targetType", "species", "a regressor needs numbers"),
]


@pytest.mark.parametrize(("checks", "target", "features", "task", "name", "column", "text"), CASES)
def test_each_check_names_its_column(
    frame: pd.DataFrame,
    checks: dict[str, Any],
    target: str,
    features: list[str] | None,
    task: str,
    name: str,
    column: str | None,
    text: str,
) -> None:
    err = failure(frame=frame, target=target, features=features, task=task, **checks)
    assert err.check == name
    assert err.column == column
    assert text in err.message
    assert err.to_dict()["reason"] == "DataCheckFailed"
    if column is not None:
        assert err.to_dict()["column"] == column


def test_a_single_class_cannot_train(frame: pd.DataFrame) -> None:
    one = frame[frame["species"] == "Gentoo"]
    assert failure(frame=one).check == "targetClasses"
    empty = frame.assign(species=np.nan)
    assert failure(frame=empty).check == "targetPresent"


def test_column_types() -> None:
    assert column_type(pd.Series([1, 2])) == "integer"
    assert column_type(pd.Series([1.5, None])) == "number"
    assert column_type(pd.Series(["a", None])) == "string"
    assert column_type(pd.Series([True, False])) == "boolean"
    assert column_type(pd.Series([True, None], dtype=object)) == "boolean"
    assert has_type(pd.Series([1.0, None, 3.0]), "integer")
    assert not has_type(pd.Series([1.5]), "integer")
    assert has_type(pd.Series([1]), "number")
    assert not has_type(pd.Series(["1"]), "number")


def test_a_failed_check_writes_nothing(tmp_path: Path) -> None:
    job = TrainingJob.model_validate(
        {
            "metadata": {"name": "tj"},
            "spec": {
                "model": "penguins",
                "dataset": {
                    "uri": f"file://{PENGUINS}",
                    "target": "species",
                    "checks": {"minRows": 10_000},
                },
                "estimator": {"name": "LogisticRegression"},
                "artifacts": {"uri": f"file://{tmp_path}"},
            },
        }
    )
    with pytest.raises(DataCheckFailed, match="minRows"):
        train(job)
    assert list(tmp_path.iterdir()) == []
