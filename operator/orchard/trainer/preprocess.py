"""The declared preprocessing, as a ColumnTransformer in one Pipeline with the estimator.

The saved pipeline takes raw rows (named columns, strings for categories, missing values
allowed) so the server needs nothing but the pipeline. Only scikit-learn classes are used,
so unpickling the model needs scikit-learn and nothing of Orchard.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    RobustScaler,
    StandardScaler,
)

from orchard.api.trainingjob import Preprocessing
from orchard.trainer.checks import ColumnType, column_type

MISSING_CATEGORY = "missing"


def input_schema(frame: pd.DataFrame, features: list[str]) -> list[dict[str, str]]:
    """The model's inputs: raw column names and types, in the order the pipeline expects."""
    return [{"name": f, "type": column_type(frame[f])} for f in features]


def _encoder(encode: str) -> BaseEstimator:
    if encode == "ordinal":
        return OrdinalEncoder(
            handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1
        )
    # Categories never seen in training encode as all zeros instead of failing a request.
    return OneHotEncoder(handle_unknown="ignore", sparse_output=False)


def _scaler(scale: str) -> BaseEstimator | None:
    return {
        "standard": StandardScaler(),
        "minmax": MinMaxScaler(),
        "robust": RobustScaler(),
    }.get(scale)


def _steps(*steps: tuple[str, BaseEstimator | None]) -> Pipeline | str:
    kept = [(n, s) for n, s in steps if s is not None]
    return Pipeline(kept) if kept else "passthrough"


def build_preprocessor(schema: list[dict[str, str]], spec: Preprocessing) -> ColumnTransformer:
    """Numeric columns: impute + scale. String columns: impute + one-hot (unknowns
    ignored) or ordinal. Boolean columns: most-frequent impute + the same encoder
    (a constant fill would mix strings into booleans)."""
    by_type: dict[ColumnType, list[str]] = {
        "number": [],
        "integer": [],
        "string": [],
        "boolean": [],
    }
    for col in schema:
        by_type[col["type"]].append(col["name"])  # type: ignore[index]
    numeric = by_type["number"] + by_type["integer"]
    num, cat = spec.numeric, spec.categorical
    transformers: list[tuple[str, Any, list[str]]] = []
    if numeric:
        imputer = None if num.impute == "none" else SimpleImputer(strategy=num.impute)
        transformers.append(
            ("numeric", _steps(("impute", imputer), ("scale", _scaler(num.scale))), numeric)
        )
    if by_type["string"]:
        imputer = {
            "most_frequent": SimpleImputer(strategy="most_frequent"),
            "constant": SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY),
        }.get(cat.impute)
        transformers.append(
            (
                "categorical",
                _steps(("impute", imputer), ("encode", _encoder(cat.encode))),
                by_type["string"],
            )
        )
    if by_type["boolean"]:
        imputer = None if cat.impute == "none" else SimpleImputer(strategy="most_frequent")
        transformers.append(
            (
                "boolean",
                _steps(("impute", imputer), ("encode", _encoder(cat.encode))),
                by_type["boolean"],
            )
        )
    return ColumnTransformer(transformers, remainder="drop", verbose_feature_names_out=False)


def build_pipeline(preprocessor: ColumnTransformer, estimator: BaseEstimator) -> Pipeline:
    """Preprocessing and estimator in one object: what model.joblib holds."""
    return Pipeline([("preprocess", preprocessor), ("estimator", estimator)])
