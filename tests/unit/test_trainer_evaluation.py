"""`orchard evaluate`: two real pipelines, written by the trainer's own `train()`, scored
on the candidate's held-out rows and on collected production rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from collected_segments import START, write_segments

from orchard.api.trainingjob import TrainingJob
from orchard.artifacts import HELDOUT_FILE, sha256_file
from orchard.contracts import EvaluationReport, TrainerFailureReport, TrainerReport
from orchard.trainer.data import load_builtin
from orchard.trainer.errors import ArtifactVerificationFailed, NoEvaluationRows
from orchard.trainer.evaluation import evaluate
from orchard.trainer.train import train

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def trained(tmp_path: Path, name: str, dataset: dict[str, Any]) -> TrainerReport:
    body = {
        "model": "iris",
        "dataset": dataset,
        "estimator": {"name": "LogisticRegression", "params": {"max_iter": 500}},
    }
    job = TrainingJob.model_validate({"metadata": {"name": name}, "spec": body})
    return train(job, f"file://{tmp_path}/{name}")


@pytest.fixture
def models(tmp_path: Path) -> tuple[TrainerReport, TrainerReport]:
    """A candidate trained on all of iris, and a baseline that saw two species only."""
    iris = load_builtin("iris")
    narrow = tmp_path / "narrow.csv"
    iris[iris["target"] != "virginica"].to_csv(narrow, index=False)
    candidate = trained(tmp_path, "full", {"builtin": "iris"})
    baseline = trained(tmp_path, "narrow", {"uri": f"file://{narrow}", "target": "target"})
    return candidate, baseline


@pytest.fixture
def collected(tmp_path: Path) -> Path:
    """90 labelled rows of every species answered by v1, the first 30 before START+15m."""
    iris = load_builtin("iris")
    root = tmp_path / "collected" / "ml" / "iris"
    write_segments(root, "iris-v1", iris.iloc[::5].head(30), FEATURES, "target")
    write_segments(
        root,
        "iris-v1",
        iris.iloc[2::5].head(30),
        FEATURES,
        "target",
        seq=2,
        start=START + timedelta(minutes=15),
    )
    write_segments(
        root,
        "iris-v2",
        iris.iloc[4::5].head(30),
        FEATURES,
        "target",
        pod="iris-v2-x",
        start=START + timedelta(hours=1),
    )
    return root


def test_the_better_model_scores_higher_on_the_same_rows(
    tmp_path: Path, models: tuple[TrainerReport, TrainerReport], collected: Path
) -> None:
    candidate, baseline = models
    result = evaluate(
        candidate.artifact_uri, candidate.digest, baseline.artifact_uri, baseline.digest
    )
    assert result.metric == "accuracy"
    assert result.task == "classification"
    assert result.rows == result.heldout_rows == 30 and result.production_rows == 0
    assert result.seed == 42
    assert result.candidate["accuracy"] > result.baseline["accuracy"]
    assert result.baseline["accuracy"] <= 0.667  # it never says virginica (a third)
    assert "log_loss" not in result.baseline or result.baseline["log_loss"] > 0

    with_production = evaluate(
        candidate.artifact_uri,
        candidate.digest,
        baseline.artifact_uri,
        baseline.digest,
        collected=f"file://{collected}",
        since=START + timedelta(minutes=15),
    )
    assert with_production.production_rows == 60  # v1's second segment and v2
    assert with_production.rows == 30 + 60
    assert with_production.candidate["accuracy"] > with_production.baseline["accuracy"]
    assert with_production.dataset_digest != result.dataset_digest
    again = evaluate(
        candidate.artifact_uri,
        candidate.digest,
        baseline.artifact_uri,
        baseline.digest,
        collected=f"file://{collected}",
        since=START + timedelta(minutes=15),
    )
    assert again == with_production


def test_production_rows_alone_when_the_candidate_has_no_heldout_rows(
    tmp_path: Path, models: tuple[TrainerReport, TrainerReport], collected: Path
) -> None:
    candidate, baseline = models
    _strip_heldout(tmp_path / "full")
    digest = sha256_file(tmp_path / "full" / "metadata.json")
    result = evaluate(
        candidate.artifact_uri,
        digest,
        baseline.artifact_uri,
        baseline.digest,
        collected=f"file://{collected}",
        metric="f1_macro",
    )
    assert result.heldout_rows == 0 and result.production_rows == result.rows == 90
    assert result.metric == "f1_macro"
    assert result.candidate["f1_macro"] > result.baseline["f1_macro"]
    assert result.seed is None

    with pytest.raises(NoEvaluationRows, match="no held-out rows"):
        evaluate(candidate.artifact_uri, digest, baseline.artifact_uri, baseline.digest)
    with pytest.raises(NoEvaluationRows, match="no labelled collected rows"):
        evaluate(
            candidate.artifact_uri,
            digest,
            baseline.artifact_uri,
            baseline.digest,
            collected=f"file://{collected}",
            since=START + timedelta(days=1),
        )


def _strip_heldout(directory: Path) -> None:
    """The artifact as an older trainer wrote it: no heldout.parquet."""
    meta = json.loads((directory / "metadata.json").read_text())
    del meta["heldout"]
    meta["files"].pop(HELDOUT_FILE)
    (directory / HELDOUT_FILE).unlink()
    (directory / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")


def test_a_digest_mismatch_fails(
    tmp_path: Path, models: tuple[TrainerReport, TrainerReport]
) -> None:
    candidate, baseline = models
    with pytest.raises(ArtifactVerificationFailed, match="recorded digest") as exc:
        evaluate(candidate.artifact_uri, candidate.digest, baseline.artifact_uri, candidate.digest)
    assert exc.value.details == {"artifact": "baseline", "cause": "DigestMismatch"}
    # A changed heldout.parquet is refused too: the rows are pinned by the digest.
    (tmp_path / "full" / HELDOUT_FILE).write_bytes(b"PAR1 not the rows PAR1")
    with pytest.raises(ArtifactVerificationFailed, match=HELDOUT_FILE):
        evaluate(candidate.artifact_uri, candidate.digest, baseline.artifact_uri, baseline.digest)


def orchard_evaluate(args: list[str], tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    log = tmp_path / "termination-log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHARD_")}
    proc = subprocess.run(
        [
            str(Path(sys.executable).with_name("orchard")),
            "evaluate",
            *args,
            "--termination-log",
            str(log),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.count("\n") == 1, proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout), log.read_text()


def test_the_command_reports_on_stdout_and_in_the_termination_log(
    tmp_path: Path, models: tuple[TrainerReport, TrainerReport], collected: Path
) -> None:
    candidate, baseline = models
    base = [
        "--candidate",
        candidate.artifact_uri,
        "--candidate-digest",
        candidate.digest,
        "--baseline",
        baseline.artifact_uri,
    ]
    code, out, message = orchard_evaluate(
        [
            *base,
            "--baseline-digest",
            baseline.digest,
            "--collected",
            f"file://{collected}",
            "--since",
            "2026-12-02T14:15:00Z",
        ],
        tmp_path,
    )
    assert code == 0, out
    assert json.loads(message) == out
    report = EvaluationReport.model_validate(out)
    assert report.rows == out["heldoutRows"] + out["productionRows"] == 90
    assert out["datasetDigest"].startswith("sha256:")
    assert report.candidate["accuracy"] > report.baseline["accuracy"]

    code, out, message = orchard_evaluate(
        [*base, "--baseline-digest", "sha256:" + "0" * 64], tmp_path
    )
    assert code == 1
    failure = TrainerFailureReport.model_validate(json.loads(message))
    assert failure.error.reason == "ArtifactVerificationFailed"
    assert "baseline" in failure.error.message


def test_the_report_parses_leniently() -> None:
    report = EvaluationReport.model_validate(
        {
            "rows": 3,
            "datasetDigest": "sha256:x",
            "metric": "accuracy",
            "newField": 1,
            "candidate": {"accuracy": 0.9, "odd": "x"},
            "baseline": None,
            "seed": "s",
            "heldoutRows": True,
        }
    )
    assert report.candidate == {"accuracy": 0.9}
    assert report.baseline == {}
    assert report.seed is None and report.heldout_rows == 0
