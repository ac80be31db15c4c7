"""The estimators a TrainingJob may name, and the check of their hyperparameters.

A name maps to a class in this table and nowhere else: never an import path from the
spec. Parameters are checked against the class's own `get_params()` and scikit-learn's
parameter constraints before anything is fitted, so a typo fails in a second, not after
an hour of training.
"""

from __future__ import annotations

from typing import Any, Literal

from sklearn.base import BaseEstimator
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import Lasso, LinearRegression, LogisticRegression, Ridge
from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
from sklearn.svm import SVC, SVR
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

Task = Literal["classification", "regression"]

ESTIMATORS: dict[str, tuple[type[BaseEstimator], Task]] = {
    "LogisticRegression": (LogisticRegression, "classification"),
    "RandomForestClassifier": (RandomForestClassifier, "classification"),
    "GradientBoostingClassifier": (GradientBoostingClassifier, "classification"),
    "HistGradientBoostingClassifier": (HistGradientBoostingClassifier, "classification"),
    "DecisionTreeClassifier": (DecisionTreeClassifier, "classification"),
    "KNeighborsClassifier": (KNeighborsClassifier, "classification"),
    "SVC": (SVC, "classification"),
    "LinearRegression": (LinearRegression, "regression"),
    "Ridge": (Ridge, "regression"),
    "Lasso": (Lasso, "regression"),
    "RandomForestRegressor": (RandomForestRegressor, "regression"),
    "GradientBoostingRegressor": (GradientBoostingRegressor, "regression"),
    "HistGradientBoostingRegressor": (HistGradientBoostingRegressor, "regression"),
    "DecisionTreeRegressor": (DecisionTreeRegressor, "regression"),
    "KNeighborsRegressor": (KNeighborsRegressor, "regression"),
    "SVR": (SVR, "regression"),
}

# Values a YAML/JSON spec can carry; anything else (an object, a callable) is refused.
_SCALARS = (str, int, float, bool, type(None))


def task_of(name: str) -> Task:
    """classification or regression, for an allowed estimator name."""
    return _lookup(name)[1]


def _lookup(name: str) -> tuple[type[BaseEstimator], Task]:
    from orchard.trainer.errors import InvalidSpec

    if name not in ESTIMATORS:
        raise InvalidSpec(
            f"estimator {name!r} is not allowed; choose one of {', '.join(sorted(ESTIMATORS))}",
            parameter="estimator.name",
        )
    return ESTIMATORS[name]


def _plain(value: Any) -> bool:
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return isinstance(value, _SCALARS)


def build_estimator(
    name: str, params: dict[str, Any], random_state: int | None = None
) -> BaseEstimator:
    """An unfitted estimator with validated parameters; `InvalidSpec` names the bad one.

    `random_state` is applied when the estimator has one and the spec did not set it,
    so the same spec trains the same model.
    """
    from orchard.trainer.errors import InvalidSpec

    cls, _ = _lookup(name)
    estimator = cls()
    known = estimator.get_params(deep=False)
    for key, value in params.items():
        if key not in known:
            raise InvalidSpec(
                f"{name} has no parameter {key!r}; its parameters are {', '.join(sorted(known))}",
                parameter=key,
            )
        if not _plain(value):
            raise InvalidSpec(
                f"{name} parameter {key!r} must be a number, string, boolean, null or a list "
                f"of those, not {type(value).__name__}",
                parameter=key,
            )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    if random_state is not None and "random_state" in known and "random_state" not in values:
        values["random_state"] = random_state
    try:
        estimator.set_params(**values)
        validate = getattr(estimator, "_validate_params", None)
        if validate is not None:
            validate()
    except (ValueError, TypeError) as exc:
        bad = next((k for k in values if repr(k) in str(exc) or f"'{k}'" in str(exc)), None)
        raise InvalidSpec(f"{name}: invalid hyperparameter: {exc}", parameter=bad) from exc
    return estimator
