"""Declarative data checks, run before anything is fitted.

Each failure raises `DataCheckFailed` with the check's name (the spec field) and the
column at fault, so `kubectl get tj` can say *which* column broke *which* rule.

A message names only the columns the spec named (dataset.target, dataset.features,
requiredColumns); any other column is shown by its position in the file, and no value
read from the file is ever shown: the file might not be a dataset at all (a link to
/proc/self/environ parses as CSV whose "columns" are the pod's environment), and the
message reaches `status.message` and events. Counts are shown, they say enough.
"""

from __future__ import annotations

from typing import Literal

import pandas as pd

from orchard.api.trainingjob import DataChecks
from orchard.trainer.errors import DataCheckFailed

ColumnType = Literal["number", "integer", "string", "boolean"]
_SHOW = 5  # values listed in a message


def _all_bool(values: pd.Series) -> bool:
    return len(values) > 0 and all(isinstance(v, bool) for v in values)


def column_type(series: pd.Series) -> ColumnType:
    """The schema type of a column, as the model's input schema will state it."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return "boolean"
    if pd.api.types.is_integer_dtype(series.dtype):
        return "integer"
    if pd.api.types.is_numeric_dtype(series.dtype):
        return "number"
    values = series.dropna()
    if _all_bool(values):
        return "boolean"
    return "string"


def has_type(series: pd.Series, wanted: ColumnType) -> bool:
    """Whether a column satisfies a declared type. An integer column is also a number, and
    a float column whose values are all whole still counts as integer (a missing value
    turns pandas' ints into floats)."""
    found = column_type(series)
    if wanted == found:
        return True
    if wanted == "number":
        return found == "integer"
    if wanted == "integer" and found == "number":
        values = series.dropna()
        return bool((values == values.round()).all())
    return False


def resolve_features(frame: pd.DataFrame, target: str, features: list[str] | None) -> list[str]:
    """The feature columns: as listed, or every column but the target (in file order)."""
    if features:
        return list(features)
    return [str(c) for c in frame.columns if c != target]


def _names(values: list[str]) -> str:
    shown = ", ".join(repr(v) for v in values[:_SHOW])
    return shown + (f" and {len(values) - _SHOW} more" if len(values) > _SHOW else "")


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" + ("" if count == 1 else "s")


def run_checks(
    frame: pd.DataFrame,
    target: str,
    features: list[str] | None,
    checks: DataChecks | None,
    task: Literal["classification", "regression"],
) -> list[str]:
    """Raise `DataCheckFailed` for the first rule the data breaks; return the feature
    columns if none (`features` as dataset.features lists them, None for every column
    but the target)."""
    count = _plural(len(frame.columns), "column")
    if target not in frame.columns:
        raise DataCheckFailed(
            f"target column {target!r} (dataset.target) is not among the file's {count}",
            check="targetPresent",
            column=target,
        )
    missing = [f for f in features or [] if f not in frame.columns]
    if missing:
        raise DataCheckFailed(
            f"feature column {missing[0]!r} (dataset.features) is not among the file's {count}",
            check="featuresPresent",
            column=missing[0],
        )
    if features and target in features:
        raise DataCheckFailed(
            f"column {target!r} is both the target and a feature",
            check="featuresPresent",
            column=target,
        )
    checks = checks or DataChecks()
    named = {target, *(features or []), *(r.name for r in checks.required_columns)}
    resolved = resolve_features(frame, target, features)
    for required in checks.required_columns:
        if required.name not in frame.columns:
            raise DataCheckFailed(
                f"required column {required.name!r} is not among the file's {count}",
                check="requiredColumns",
                column=required.name,
            )
        series = frame[required.name]
        if not has_type(series, required.type):
            raise DataCheckFailed(
                f"column {required.name!r} has type {column_type(series)}, "
                f"but {required.type} is required",
                check="requiredColumns",
                column=required.name,
            )
    if checks.min_rows is not None and len(frame) < checks.min_rows:
        raise DataCheckFailed(
            f"the dataset has {_plural(len(frame), 'row')}, fewer than minRows {checks.min_rows}",
            check="minRows",
        )
    if checks.max_missing_fraction is not None and len(frame) > 0:
        fractions = frame[[*resolved, target]].isna().mean()
        worst = str(fractions.idxmax())
        if fractions[worst] > checks.max_missing_fraction:
            shown = (
                f"column {worst!r}"
                if worst in named
                else f"the file's column {list(map(str, frame.columns)).index(worst) + 1} "
                "(not named in the spec, so shown by position)"
            )
            raise DataCheckFailed(
                f"{shown} has {fractions[worst]:.1%} missing values, "
                f"more than maxMissingFraction {checks.max_missing_fraction:g}",
                check="maxMissingFraction",
                column=worst if worst in named else None,
            )
    labels = frame[target].dropna()
    if checks.allowed_labels is not None:
        allowed = set(checks.allowed_labels)
        outside = ~labels.map(str).isin(allowed)
        if outside.any():
            kinds = labels[outside].map(str).nunique()
            raise DataCheckFailed(
                f"column {target!r} has {_plural(kinds, 'label')} outside allowedLabels "
                f"({_names(sorted(allowed))}), in {_plural(int(outside.sum()), 'row')}",
                check="allowedLabels",
                column=target,
            )
    if len(labels) == 0:
        raise DataCheckFailed(
            f"target column {target!r} has no values", check="targetPresent", column=target
        )
    if task == "regression" and column_type(frame[target]) not in ("number", "integer"):
        raise DataCheckFailed(
            f"target column {target!r} is {column_type(frame[target])}, "
            "but a regressor needs numbers",
            check="targetType",
            column=target,
        )
    if task == "classification" and labels.nunique() < 2:
        raise DataCheckFailed(
            f"target column {target!r} has a single class in its "
            f"{_plural(len(labels), 'labelled row')}; a classifier needs at least two",
            check="targetClasses",
            column=target,
        )
    return resolved
