"""`orchard replay`: a real artifact written by the trainer's own `train()`, its rows sent
to real `orchard serve` apps on loopback as replayed requests, which answer every one and
count it as a request but in none of their drift counters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from collected_segments import START, write_segments
from test_serving_support import app_for, free_port, mixed_frame, running_server

from orchard.api.trainingjob import TrainingJob
from orchard.artifacts import sha256_file
from orchard.contracts import (
    REPLAY_PREDICTED_CLASS,
    REPLAY_REQUESTS,
    REQUESTS,
    ReplayReport,
    TrainerFailureReport,
    TrainerReport,
)
from orchard.decisions.metrics_text import parse_scrape
from orchard.trainer.data import load_builtin
from orchard.trainer.errors import ArtifactVerificationFailed, InvalidSpec, NoReplayRows
from orchard.trainer.replay import replay, request_bodies

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
OK = ("code", "200"), ("endpoint", "v2_infer")
DRIFT = (
    "orchard_feature_observations_total",
    "orchard_feature_missing_total",
    "orchard_feature_bin_total",
    "orchard_feature_out_of_range_total",
    "orchard_feature_category_total",
    "orchard_predictions_total",
    "orchard_prediction_bin_total",
    "orchard_confidence_bin_total",
)


def trained(tmp_path: Path, name: str, dataset: dict[str, Any]) -> TrainerReport:
    from orchard.trainer.train import train

    body = {
        "model": "iris",
        "dataset": dataset,
        "estimator": {"name": "LogisticRegression", "params": {"max_iter": 500}},
    }
    job = TrainingJob.model_validate({"metadata": {"name": name}, "spec": body})
    return train(job, f"file://{tmp_path}/{name}")


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainerReport, Path]:
    root = tmp_path_factory.mktemp("replay")
    return trained(root, "iris", {"builtin": "iris"}), root / "iris"


def scrape(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return parse_scrape(httpx.get(f"{base}/metrics").text)


def total(got: dict[tuple[str, Any], float], name: str) -> float:
    return sum(v for (n, _), v in got.items() if n == name)


def test_every_row_reaches_every_target_as_a_replayed_request(
    iris: tuple[TrainerReport, Path],
) -> None:
    report, directory = iris
    with (
        running_server(app_for(directory, "iris")) as stable,
        running_server(app_for(directory, "iris")) as canary,
    ):
        result = replay(report.artifact_uri, report.digest, "iris", [stable, canary + "/"])
        assert result.rows == result.heldout_rows == 30 and result.production_rows == 0
        assert result.targets == {
            stable: {"sent": 30, "ok": 30, "errors": 0},
            canary: {"sent": 30, "ok": 30, "errors": 0},
        }
        for base in (stable, canary):
            got = scrape(base)
            assert got[(REQUESTS, OK)] == 30  # one request per row: rows x targets in all
            assert got[(REPLAY_REQUESTS, OK)] == 30
            assert total(got, REPLAY_PREDICTED_CLASS) == 30
            for name in DRIFT:
                assert total(got, name) == 0, name
    wire = ReplayReport.model_validate_json(json.dumps(result.wire()))
    assert wire == result


def test_max_rows_takes_the_first_rows_and_collected_rows_follow_the_heldout_ones(
    iris: tuple[TrainerReport, Path], tmp_path: Path
) -> None:
    report, directory = iris
    frame = load_builtin("iris")
    collected = tmp_path / "collected" / "ml" / "iris"
    write_segments(collected, "iris-v1", frame.iloc[::5].head(20), FEATURES, "target")
    write_segments(
        collected, "iris-v1", frame.iloc[1::5].head(20), FEATURES, "target", seq=2,
        start=START + timedelta(hours=1),
    )  # fmt: skip
    with running_server(app_for(directory, "iris")) as base:
        capped = replay(report.artifact_uri, report.digest, "iris", [base], max_rows=7)
        assert capped.rows == capped.heldout_rows == 7
        both = replay(
            report.artifact_uri, report.digest, "iris", [base],
            collected=f"file://{collected}", since=START + timedelta(minutes=30), max_rows=45,
        )  # fmt: skip
        assert (both.rows, both.heldout_rows, both.production_rows) == (45, 30, 15)
        assert scrape(base)[(REQUESTS, OK)] == 7 + 45


def test_answers_that_are_errors_are_counted_and_do_not_fail_the_run(
    iris: tuple[TrainerReport, Path],
) -> None:
    report, directory = iris
    nobody = f"http://127.0.0.1:{free_port()}"
    with running_server(app_for(directory, "iris")) as base:
        result = replay(
            report.artifact_uri, report.digest, "other-model", [base, nobody], max_rows=3,
            timeout=2,
        )  # fmt: skip
    assert result.targets[base] == {"sent": 3, "ok": 0, "errors": 3}  # 404: not served
    assert result.targets[nobody] == {"sent": 3, "ok": 0, "errors": 3}  # refused


def test_a_model_with_string_columns_gets_one_named_tensor_per_column(tmp_path: Path) -> None:
    frame, species = mixed_frame(90)
    frame["species"] = species
    data = tmp_path / "penguins.csv"
    frame.to_csv(data, index=False)
    report = trained(tmp_path, "penguins", {"uri": f"file://{data}", "target": "species"})
    from orchard.artifacts import load_model

    _, metadata = load_model(tmp_path / "penguins", report.digest)
    body = json.loads(request_bodies(frame.head(1), metadata.inputs)[0])
    kinds = {t["name"]: (t["datatype"], t["shape"]) for t in body["inputs"]}
    assert kinds["island"] == ("BYTES", [1]) and kinds["bill_length_mm"] == ("FP64", [1])
    with running_server(app_for(tmp_path / "penguins", "penguins")) as base:
        result = replay(report.artifact_uri, report.digest, "penguins", [base])
        assert result.rows > 0 and result.targets[base]["ok"] == result.rows
        got = scrape(base)
        assert total(got, "orchard_feature_category_total") == 0
        assert total(got, "orchard_feature_missing_total") == 0
        assert got[(REPLAY_REQUESTS, OK)] == result.rows


def test_nothing_to_send_and_a_wrong_digest_are_failures(
    iris: tuple[TrainerReport, Path], tmp_path: Path
) -> None:
    report, directory = iris
    with pytest.raises(ArtifactVerificationFailed):
        replay(report.artifact_uri, "sha256:" + "0" * 64, "iris", ["http://127.0.0.1:1"])
    with pytest.raises(InvalidSpec, match="not an http"):
        replay(report.artifact_uri, report.digest, "iris", ["ftp://somewhere"])
    stripped = tmp_path / "stripped"
    stripped.mkdir()
    for f in directory.iterdir():
        if f.name != "heldout.parquet":
            (stripped / f.name).write_bytes(f.read_bytes())
    metadata = json.loads((stripped / "metadata.json").read_text())
    metadata.pop("heldout")
    metadata["files"].pop("heldout.parquet")
    (stripped / "metadata.json").write_text(json.dumps(metadata))
    digest = sha256_file(stripped / "metadata.json")
    with pytest.raises(NoReplayRows, match="no held-out rows"):
        replay(f"file://{stripped}", digest, "iris", ["http://127.0.0.1:1"])


def test_the_command_reports_on_stdout_and_in_the_termination_log(
    iris: tuple[TrainerReport, Path], tmp_path: Path
) -> None:
    report, directory = iris
    log = tmp_path / "termination-log"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with running_server(app_for(directory, "iris")) as base:
        done = subprocess.run(
            [sys.executable, "-m", "orchard.cli", "replay", "--artifact", report.artifact_uri,
             "--digest", report.digest, "--model", "iris", "--target", base, "--max-rows", "5",
             "--concurrency", "2", "--termination-log", str(log)],
            capture_output=True, text=True, env=env, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = ReplayReport.model_validate_json(done.stdout)
    assert result.rows == 5 and result.targets[base]["ok"] == 5
    assert json.loads(log.read_text()) == json.loads(done.stdout)

    failed = subprocess.run(
        [sys.executable, "-m", "orchard.cli", "replay", "--artifact", report.artifact_uri,
         "--digest", "sha256:" + "1" * 64, "--model", "iris", "--target", "http://127.0.0.1:1",
         "--termination-log", str(log)],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert failed.returncode == 1
    error = TrainerFailureReport.model_validate_json(failed.stdout).error
    assert error.reason == "ArtifactVerificationFailed"
    assert json.loads(log.read_text())["error"]["reason"] == "ArtifactVerificationFailed"
