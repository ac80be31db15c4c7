"""Which runtime serves a model (serving/runtime.py): the pipeline's ONNX graph when it
answers the held-out rows as the pipeline does, else the pipeline, with the reason.

Real models throughout: the trainer's own pipelines (trained by `orchard.trainer.train`
on penguins.csv, numbers and categories with missing values), converted by skl2onnx and
run by ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_serving_support import (
    MIXED_INPUTS,
    forest_artifact,
    iris_artifact,
    mixed_frame,
    write_artifact,
)

from orchard.api.trainingjob import Preprocessing, TrainingJob
from orchard.serving.app import App
from orchard.serving.artifact import Column, verify
from orchard.serving.main import build_runner
from orchard.serving.model import ModelRunner
from orchard.serving.runtime import (
    PROBABILITY_TOLERANCE,
    VALUE_RTOL,
    OnnxModel,
    RuntimeRefused,
    compare,
    convert,
    heldout_frame,
    probe_rows,
    rows_of,
)
from orchard.trainer.estimators import build_estimator
from orchard.trainer.preprocess import build_pipeline, build_preprocessor
from orchard.trainer.train import train

PENGUINS = Path(__file__).parent.parent / "data" / "penguins.csv"
COLUMNS = [Column(c["name"], c["type"]) for c in MIXED_INPUTS]


def trained(
    tmp_path: Path, estimator: str, params: dict[str, Any] | None = None, scale: str = "standard"
) -> Path:
    """An artifact the trainer writes for penguins.csv (heldout.parquet included)."""
    body = {
        "model": "penguins",
        "preprocessing": {"numeric": {"scale": scale}},
        "dataset": {"uri": f"file://{PENGUINS}", "target": "species"},
        "estimator": {"name": estimator, "params": params or {}},
        "evaluation": {"testSize": 0.3},
        "artifacts": {"uri": "file:///unused"},
    }
    job = TrainingJob.model_validate({"metadata": {"name": "p"}, "spec": body})
    train(job, f"file://{tmp_path}/{estimator}")
    return tmp_path / estimator


def raw_rows() -> pd.DataFrame:
    """Every penguin, with some inputs knocked out and an island nobody saw."""
    frame = pd.read_csv(PENGUINS).drop(columns=["species"])
    frame.loc[::9, "island"] = None
    frame.loc[::13, "island"] = "Atlantis"
    frame.loc[::7, "bill_length_mm"] = np.nan
    return frame


@pytest.mark.parametrize(
    ("estimator", "params", "scale"),
    [
        ("LogisticRegression", {"max_iter": 500}, "standard"),
        ("RandomForestClassifier", {"n_estimators": 30}, "none"),
        ("GradientBoostingClassifier", {"n_estimators": 20}, "none"),
        ("DecisionTreeClassifier", {}, "none"),
        ("KNeighborsClassifier", {}, "standard"),
    ],
)
def test_the_trainers_classifiers_serve_through_onnx_with_the_pipelines_answers(
    tmp_path: Path, estimator: str, params: dict[str, Any], scale: str
) -> None:
    artifact = verify(trained(tmp_path, estimator, params, scale))
    runner = build_runner(artifact)
    assert runner.runtime.name == "onnx", runner.runtime.reason
    assert runner.native is not None and runner.runtime.rows > 0
    assert "labels as the pipeline's" in runner.runtime.reason
    frame = raw_rows()
    rows = rows_of(frame, artifact.columns)
    pipeline = runner.model
    np.testing.assert_array_equal(runner.predict(rows), pipeline.predict(frame))
    np.testing.assert_allclose(
        runner.probabilities(rows), pipeline.predict_proba(frame), atol=PROBABILITY_TOLERANCE
    )
    # The batch path too: several requests in one call, each its own answer.
    parts = [rows_of(frame.iloc[i : i + 5], artifact.columns) for i in range(0, 15, 5)]
    result = runner.predict_batch(parts, [5, 5, 5], proba=[True, False, True])
    for i, out in enumerate(result.outputs):
        assert isinstance(out, np.ndarray)
        np.testing.assert_array_equal(out, pipeline.predict(frame.iloc[5 * i : 5 * i + 5]))
    assert result.probabilities[1] is None and isinstance(result.probabilities[2], np.ndarray)


@pytest.mark.parametrize(
    ("estimator", "scale"), [("Ridge", "standard"), ("RandomForestRegressor", "none")]
)
def test_regressors_serve_through_onnx_within_the_value_tolerance(
    tmp_path: Path, estimator: str, scale: str
) -> None:
    frame, _ = mixed_frame(300)
    target = frame["flipper_length_mm"] * 0.3 + frame["bill_length_mm"].fillna(40)
    spec = Preprocessing.model_validate({"numeric": {"scale": scale}})
    pre = build_preprocessor(MIXED_INPUTS, spec)
    pipeline = build_pipeline(pre, build_estimator(estimator, {}, 0)).fit(frame[:200], target[:200])
    runner = ModelRunner(pipeline, COLUMNS, "regression")
    assert runner.use_runtime("auto", frame[200:]).name == "onnx", runner.runtime.reason
    fresh, _ = mixed_frame(100, seed=3)
    np.testing.assert_allclose(
        runner.predict(rows_of(fresh, COLUMNS)), pipeline.predict(fresh),
        rtol=VALUE_RTOL, atol=PROBABILITY_TOLERANCE,
    )  # fmt: skip


def test_what_skl2onnx_cannot_convert_is_served_by_the_pipeline(tmp_path: Path) -> None:
    artifact = verify(trained(tmp_path, "HistGradientBoostingClassifier", {"max_iter": 20}))
    runner = build_runner(artifact)
    assert runner.runtime.name == "sklearn" and runner.native is None
    assert runner.runtime.reason.startswith("no ONNX graph: ")
    frame = raw_rows()
    np.testing.assert_array_equal(
        runner.predict(rows_of(frame, artifact.columns)), runner.model.predict(frame)
    )
    with pytest.raises(RuntimeRefused, match="--runtime onnx: no ONNX graph"):
        build_runner(artifact, "onnx")


def test_a_forest_behind_a_float32_scaler_falls_back(tmp_path: Path) -> None:
    """The graph scales in float32, the pipeline in float64 before its trees round to
    float32: penguins land on the other side of a split, and the check sees it."""
    artifact = verify(trained(tmp_path, "RandomForestClassifier", {"n_estimators": 30}))
    runner = build_runner(artifact)
    assert runner.runtime.name == "sklearn" and runner.native is None
    assert runner.runtime.reason.startswith("probabilities differ by "), runner.runtime.reason
    assert runner.runtime.reason.endswith(" on held-out rows")


def test_a_custom_step_falls_back_with_the_reason() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    x = np.random.default_rng(0).normal(size=(200, 3))
    model = make_pipeline(FunctionTransformer(np.tanh), LogisticRegression())
    model.fit(x, (x[:, 0] > 0).astype(int))
    runner = ModelRunner(model, [Column(f"x{i}", "number") for i in range(3)])
    runtime = runner.use_runtime("auto", pd.DataFrame(x, columns=["x0", "x1", "x2"]))
    assert runtime.name == "sklearn" and runtime.reason.startswith("no ONNX graph: ")
    assert "FunctionTransformer" in runtime.reason


def test_a_graph_answering_otherwise_is_refused_with_the_rows_it_differs_on() -> None:
    """Categories not imputed: scikit-learn's one-hot encoder learns NaN as a category of
    its own, the graph cannot, and the rows with a missing sex say so."""
    frame, species = mixed_frame(300)
    spec = Preprocessing.model_validate({"categorical": {"impute": "none"}})
    pre = build_preprocessor(MIXED_INPUTS, spec)
    pipeline = build_pipeline(pre, build_estimator("LogisticRegression", {}, 0))
    pipeline.fit(frame[:200], species[:200])
    runner = ModelRunner(pipeline, COLUMNS, "classification")
    runtime = runner.use_runtime("auto", frame[200:])
    assert runtime.name == "sklearn" and runner.native is None
    assert "differ" in runtime.reason, runtime.reason
    with pytest.raises(RuntimeRefused, match="differ"):
        runner.use_runtime("onnx", frame[200:])


def test_the_parity_check_compares_every_row_and_names_a_difference() -> None:
    """A graph of another model (the same columns, other labels) against the pipeline."""
    from sklearn.tree import DecisionTreeClassifier

    frame, species = mixed_frame(200)
    pre = build_preprocessor(MIXED_INPUTS, Preprocessing())
    pipeline = build_pipeline(pre, DecisionTreeClassifier(random_state=0)).fit(frame, species)
    runner = ModelRunner(pipeline, COLUMNS, "classification")
    other = build_pipeline(
        build_preprocessor(MIXED_INPUTS, Preprocessing()), DecisionTreeClassifier(max_depth=1)
    ).fit(frame, species)
    graph = OnnxModel(convert(other, COLUMNS, True, 4, True), COLUMNS, True, runner.classes)
    rows = rows_of(frame, COLUMNS)
    found = compare((runner.predict, runner.probabilities), graph, probe_rows(rows, COLUMNS), True)
    assert found.difference is not None and found.difference.startswith("labels differ on ")
    assert found.difference.endswith(" of 200 held-out rows")
    own = OnnxModel(convert(pipeline, COLUMNS, True, 4, True), COLUMNS, True, runner.classes)
    same = compare((runner.predict, runner.probabilities), own, probe_rows(rows, COLUMNS), True)
    # The held-out rows, then 20 of them per input missing, and per string input unseen.
    assert same.difference is None and same.rows == 200 + 20 * 6


def test_a_missing_number_the_pipeline_refuses_the_graph_refuses_too(tmp_path: Path) -> None:
    """iris without an imputer: scikit-learn raises on NaN, so must the graph (a 500 in
    both runtimes), rather than answer what the pipeline never would."""
    runner = build_runner(verify(iris_artifact(tmp_path / "iris")))
    assert runner.runtime.name == "onnx", runner.runtime.reason
    row = np.array([[5.1, np.nan, 1.4, 0.2]])
    with pytest.raises(ValueError, match="sepal_width is missing"):
        runner.predict(row)
    result = runner.predict_batch([np.array([[5.1, 3.5, 1.4, 0.2]]), row], [1, 1])
    assert isinstance(result.outputs[0], np.ndarray) and result.outputs[0].tolist() == [0]
    assert isinstance(result.outputs[1], ValueError)


def test_without_held_out_rows_the_pipeline_serves(tmp_path: Path) -> None:
    from sklearn.ensemble import RandomForestClassifier

    x = np.random.default_rng(0).normal(size=(100, 2))
    model = RandomForestClassifier(n_estimators=5, random_state=0).fit(x, x[:, 0] > 0)
    inputs = [{"name": "a", "type": "number"}, {"name": "b", "type": "number"}]
    artifact = verify(write_artifact(tmp_path / "old", model, inputs))
    assert artifact.metadata.heldout is None
    runner = build_runner(artifact)
    assert (runner.runtime.name, runner.runtime.reason) == ("sklearn", "no held-out rows")
    forced = build_runner(artifact, "onnx")
    assert (
        forced.runtime.name == "onnx" and "not checked: no held-out rows" in forced.runtime.reason
    )
    np.testing.assert_array_equal(forced.predict(x), model.predict(x))


def test_a_forest_sends_missing_numbers_down_the_branches_it_learned(tmp_path: Path) -> None:
    """scikit-learn's trees learn where NaN goes; the graph is given the same branches
    (`_split_as_trained`) and answers rows missing any input as the pipeline."""
    runner = build_runner(verify(forest_artifact(tmp_path / "forest", n_estimators=20)))
    assert runner.runtime.name == "onnx" and runner.native is not None
    assert runner.native.pipeline_missing == [], runner.runtime.reason
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data[:60].copy()
    for j in range(x.shape[1]):
        x[j :: x.shape[1], j] = np.nan
    assert np.isnan(x).any(axis=1).all()
    pipeline = runner.model
    native = runner.native
    np.testing.assert_array_equal(native.predict(x), pipeline.predict(x))
    np.testing.assert_allclose(
        native.probabilities(x), pipeline.predict_proba(x), atol=PROBABILITY_TOLERANCE
    )


def test_rows_missing_a_number_the_graph_answers_otherwise_go_to_the_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without the learned branches (an ensemble whose trees match no estimator's), the
    parity check finds the rows missing a number answered otherwise, and sends them to
    the pipeline."""
    from orchard.serving import runtime

    monkeypatch.setattr(runtime, "_split_as_trained", lambda graph, model: None)
    runner = build_runner(verify(forest_artifact(tmp_path / "forest", n_estimators=20)))
    assert runner.runtime.name == "onnx" and runner.native is not None
    assert runner.native.pipeline_missing
    assert "answered by the pipeline" in runner.runtime.reason
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data[:40].copy()
    x[::3, 0] = np.nan
    np.testing.assert_array_equal(runner.predict(x), runner.model.predict(x))
    np.testing.assert_allclose(
        runner.probabilities(x), runner.model.predict_proba(x), atol=PROBABILITY_TOLERANCE
    )


def test_held_out_rows_that_do_not_match_their_digest_are_not_used(tmp_path: Path) -> None:
    root = forest_artifact(tmp_path / "forest", n_estimators=5)
    artifact = verify(root)
    assert heldout_frame(artifact) is not None
    pd.DataFrame({"f0": [1.0]}).to_parquet(root / "heldout.parquet")  # after verification
    assert heldout_frame(artifact) is None
    assert build_runner(artifact).runtime.reason == "no held-out rows"


def test_runtime_sklearn_forces_the_pipeline(tmp_path: Path) -> None:
    runner = build_runner(verify(forest_artifact(tmp_path / "forest", n_estimators=5)), "sklearn")
    assert (runner.runtime.name, runner.runtime.reason) == ("sklearn", "--runtime sklearn")
    assert runner.native is None


def test_the_flag_and_its_environment_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    from orchard.serving.main import add_arguments

    def parsed(*argv: str) -> str:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        runtime: str = parser.parse_args(["--model-dir", "d", "--model-name", "m", *argv]).runtime
        return runtime

    assert parsed() == "auto"
    assert parsed("--runtime", "sklearn") == "sklearn"
    monkeypatch.setenv("ORCHARD_RUNTIME", "onnx")
    assert parsed() == "onnx"


def test_metadata_and_model_info_show_the_runtime(tmp_path: Path) -> None:
    onnx = App("cancer", info={"digest": "sha256:1"})
    onnx.set_runner(build_runner(verify(forest_artifact(tmp_path / "forest", n_estimators=5))))
    meta = onnx.model_metadata()
    assert meta["parameters"]["runtime"] == "onnx"
    assert "labels as the pipeline's" in meta["parameters"]["runtime_reason"]
    assert 'runtime="onnx"' in onnx.metrics.render().decode()
    plain = App("cancer", info={"digest": "sha256:1"})
    plain.set_runner(
        build_runner(verify(forest_artifact(tmp_path / "f2", n_estimators=5)), "sklearn")
    )
    assert plain.model_metadata()["parameters"] == {
        "runtime": "sklearn",
        "runtime_reason": "--runtime sklearn",
    }
    info = next(
        line for line in plain.metrics.render().decode().splitlines()
        if line.startswith("orchard_model_info{")
    )  # fmt: skip
    assert 'runtime="sklearn"' in info and 'digest="sha256:1"' in info


# --- chosen in a child process (serving/isolated.py), as `orchard serve` does ------------


def test_the_server_chooses_in_a_child_and_holds_only_the_graph(tmp_path: Path) -> None:
    """A fresh interpreter, as the server is: after loading, scikit-learn, skl2onnx and
    pandas were never imported in it, and its answers are the pipeline's."""
    import json
    import subprocess
    import sys

    import joblib

    root = forest_artifact(tmp_path / "forest", n_estimators=20)
    script = """
import json, sys
import numpy as np
from orchard.serving.artifact import verify
from orchard.serving.main import build_runner
runner = build_runner(verify(sys.argv[1]), "auto", isolate=True)
x = np.array(json.loads(sys.argv[2]))
print(json.dumps({
    "model": runner.model is None, "runtime": runner.runtime.name,
    "reason": runner.runtime.reason,
    "imported": sorted(m for m in ("sklearn", "skl2onnx", "onnx", "pandas") if m in sys.modules),
    "labels": runner.predict(x).tolist(), "proba": runner.probabilities(x).tolist(),
}))
"""
    from sklearn.datasets import load_breast_cancer

    x = load_breast_cancer().data[1::7][:30].copy()
    x[::4, 3] = np.nan
    rows = json.dumps(np.where(np.isnan(x), None, x).tolist())
    done = subprocess.run(
        [sys.executable, "-c", script, str(root), rows],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["runtime"] == "onnx", found["reason"]
    assert found["model"] is True and found["imported"] == []
    pipeline = joblib.load(root / "model.joblib")
    assert found["labels"] == pipeline.predict(x).tolist()
    np.testing.assert_allclose(
        found["proba"], pipeline.predict_proba(x), atol=PROBABILITY_TOLERANCE
    )


def test_what_the_graph_cannot_answer_the_server_loads_the_pipeline_for(tmp_path: Path) -> None:
    artifact = verify(trained(tmp_path, "HistGradientBoostingClassifier", {"max_iter": 20}))
    runner = build_runner(artifact, isolate=True)
    assert runner.runtime.name == "sklearn" and runner.native is None
    assert runner.runtime.reason.startswith("no ONNX graph: ") and runner.model is not None
    frame = raw_rows()
    np.testing.assert_array_equal(
        runner.predict(rows_of(frame, artifact.columns)), runner.model.predict(frame)
    )
    with pytest.raises(RuntimeRefused, match="--runtime onnx: no ONNX graph"):
        build_runner(artifact, "onnx", isolate=True)


def test_a_child_that_dies_leaves_the_pipeline_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    artifact = verify(forest_artifact(tmp_path / "forest", n_estimators=5))
    monkeypatch.setattr(sys, "executable", "/bin/false")
    runner = build_runner(artifact, isolate=True)
    assert (runner.runtime.name, runner.runtime.reason) == (
        "sklearn", "the runtime check exited with code 1",
    )  # fmt: skip
    assert runner.model is not None and runner.native is None
    with pytest.raises(RuntimeRefused, match="--runtime onnx: the runtime check exited"):
        build_runner(artifact, "onnx", isolate=True)


def test_an_artifact_changed_after_verification_is_refused_by_the_child(tmp_path: Path) -> None:
    from sklearn.dummy import DummyClassifier

    from orchard.serving.artifact import ArtifactRefused

    root = forest_artifact(tmp_path / "forest", n_estimators=5)
    artifact = verify(root)
    import joblib

    joblib.dump(DummyClassifier().fit([[0.0] * 30], [0]), root / "model.joblib")
    with pytest.raises(ArtifactRefused, match=r"model\.joblib"):
        build_runner(artifact, isolate=True)


# --- the ModelVersion's verification, in the server image (serving/verify.py) -------------


def _verifier_report(root: Path, tmp_path: Path) -> dict[str, Any]:
    """`python -m orchard.serving.verify`, as the verification Job runs it: its report is
    the termination message."""
    import json
    import os
    import subprocess
    import sys

    log = tmp_path / "termination-log"
    done = subprocess.run(
        [sys.executable, "-m", "orchard.serving.verify", f"file://{root}", verify(root).digest],
        capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "ORCHARD_TERMINATION_LOG": str(log)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(log.read_text())
    return report


def test_the_verification_reports_the_runtime_that_would_serve(tmp_path: Path) -> None:
    report = _verifier_report(forest_artifact(tmp_path / "forest", n_estimators=5), tmp_path)
    assert report["verified"] is True and "model.joblib" in report["files"]
    runtime = report["runtime"]
    assert runtime["name"] == "onnx" and runtime["rows"] > 0
    assert runtime["reason"].startswith("labels as the pipeline's on ")


def test_the_verification_reports_why_the_pipeline_would_serve(tmp_path: Path) -> None:
    root = trained(tmp_path, "HistGradientBoostingClassifier", {"max_iter": 5})
    report = _verifier_report(root, tmp_path)
    assert report["verified"] is True
    assert report["runtime"]["name"] == "sklearn"
    assert report["runtime"]["reason"].startswith("no ONNX graph: ")
