"""The trainer end to end on every bundled dataset: real fits, real artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import pandas as pd
import pytest

from orchard.api.trainingjob import TrainingJob
from orchard.artifacts import local_path, verify_artifact
from orchard.trainer.data import load_builtin
from orchard.trainer.train import train

PENGUINS = Path(__file__).parent.parent / "data" / "penguins.csv"


def make_job(**spec: Any) -> TrainingJob:
    body = {
        "model": "m",
        "dataset": {"builtin": "iris"},
        "estimator": {"name": "LogisticRegression"},
        "artifacts": {"uri": "file:///unused"},
        **spec,
    }
    return TrainingJob.model_validate({"metadata": {"name": "tj", "namespace": "ml"}, "spec": body})


CASES = [
    # dataset, estimator, params, metric, lowest acceptable value
    ("iris", "RandomForestClassifier", {"n_estimators": 10}, "accuracy", 0.85),
    ("wine", "LogisticRegression", {"max_iter": 500}, "f1_macro", 0.9),
    ("breast_cancer", "HistGradientBoostingClassifier", {"max_iter": 20}, "roc_auc", 0.95),
    ("digits", "KNeighborsClassifier", {"n_neighbors": 3}, "accuracy", 0.95),
    ("diabetes", "Ridge", {"alpha": 1.0}, "r2", 0.3),
]


@pytest.mark.parametrize(("dataset", "estimator", "params", "metric", "floor"), CASES)
def test_every_builtin_dataset(
    tmp_path: Path, dataset: str, estimator: str, params: dict[str, Any], metric: str, floor: float
) -> None:
    job = make_job(
        model=dataset.replace("_", "-"),
        dataset={"builtin": dataset},
        estimator={"name": estimator, "params": params},
    )
    result = train(job, f"file://{tmp_path}/out")
    assert result.artifact_uri == f"file://{tmp_path}/out/"
    assert result.metrics[metric] >= floor, result.metrics
    meta = verify_artifact(local_path(result.artifact_uri), result.digest)
    assert meta.dataset.uri == f"builtin:{dataset}"
    assert meta.dataset.digest == result.dataset["digest"]
    assert meta.estimator.params == params
    assert meta.source.training_job == "tj"

    frame = load_builtin(dataset)
    features = [c for c in frame.columns if c != "target"]
    assert [c.name for c in meta.inputs] == features
    assert set(meta.feature_stats) == set(features)
    model = joblib.load(tmp_path / "out" / "model.joblib")
    predicted = model.predict(frame[features].head(20))
    assert len(predicted) == 20
    if meta.task == "classification":
        assert set(result.metrics) >= {"accuracy", "f1_macro", "precision_macro", "recall_macro"}
        assert meta.output.classes is not None
        assert {str(p) for p in predicted} <= {str(c) for c in meta.output.classes}
        assert abs(sum(meta.prediction_stats["classes"].values()) - 1) < 1e-3
        # Trained on the training rows; the first rows of the data are mostly right.
        assert (predicted == frame["target"].head(20).to_numpy()).mean() >= 0.7
    else:
        assert set(result.metrics) == {"r2", "rmse", "mae"}
        assert set(meta.prediction_stats) == {"mean", "std", "quantiles", "bins"}


def test_builtin_frames_have_clean_names_and_string_labels() -> None:
    iris = load_builtin("iris")
    assert list(iris.columns) == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
        "target",
    ]
    assert set(iris["target"]) == {"setosa", "versicolor", "virginica"}
    assert set(load_builtin("digits")["target"]) == {str(i) for i in range(10)}
    assert load_builtin("diabetes")["target"].dtype.kind == "f"
    wine = load_builtin("wine")
    assert "od280_od315_of_diluted_wines" in wine.columns


def test_same_spec_same_model_and_fingerprint(tmp_path: Path) -> None:
    job = make_job(estimator={"name": "RandomForestClassifier", "params": {"n_estimators": 5}})
    a = train(job, f"file://{tmp_path}/a")
    b = train(job, f"file://{tmp_path}/b")
    assert a.metrics == b.metrics
    assert a.dataset["digest"] == b.dataset["digest"]


def test_cross_validation_metrics(tmp_path: Path) -> None:
    job = make_job(evaluation={"cvFolds": 3, "testSize": 0.25})
    metrics = train(job, f"file://{tmp_path}/out").metrics
    assert 0.8 <= metrics["cv_accuracy"] <= 1
    assert metrics["cv_accuracy_std"] >= 0
    assert "cv_f1_macro" in metrics
    reg = make_job(
        dataset={"builtin": "diabetes"}, estimator={"name": "Lasso"}, evaluation={"cvFolds": 2}
    )
    metrics = train(reg, f"file://{tmp_path}/reg").metrics
    assert metrics["cv_rmse"] > 0  # an error, reported positive
    assert metrics["cv_mae"] > 0


def test_load_model_unpickles_only_verified_bytes(tmp_path: Path) -> None:
    from orchard.artifacts import DigestMismatch, load_model

    result = train(make_job(), f"file://{tmp_path}/out")
    model, meta = load_model(tmp_path / "out", result.digest)
    assert meta.model == "m"
    assert len(model.predict(load_builtin("iris").drop(columns="target").head(3))) == 3
    with pytest.raises(DigestMismatch, match="recorded digest"):
        load_model(tmp_path / "out", "sha256:" + "0" * 64)
    other = train(make_job(estimator={"name": "SVC"}), f"file://{tmp_path}/other")
    (tmp_path / "out" / "model.joblib").write_bytes(
        (tmp_path / "other" / "model.joblib").read_bytes()
    )  # a valid pickle, but not the one the metadata pins
    assert other.digest != result.digest
    with pytest.raises(DigestMismatch, match="refusing to unpickle"):
        load_model(tmp_path / "out", result.digest)


def test_the_server_accepts_what_the_trainer_writes(tmp_path: Path) -> None:
    """The contract across the two halves: the serving code's own reader loads it."""
    serving = pytest.importorskip("orchard.serving.artifact")
    result = train(
        make_job(dataset={"uri": f"file://{PENGUINS}", "target": "species"}),
        f"file://{tmp_path}/out",
    )
    artifact = serving.verify(tmp_path / "out", result.digest)
    assert [(c.name, c.type) for c in artifact.columns] == [
        (i["name"], i["type"]) for i in result.inputs
    ]
    model = serving.unpickle(artifact)
    frame = pd.read_csv(PENGUINS).drop(columns="species").head(5)
    assert len(model.predict(frame)) == 5
