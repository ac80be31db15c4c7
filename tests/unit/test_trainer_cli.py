"""`orchard train` as a real process: the contract the operator's Job relies on."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from orchard.artifacts import verify_artifact
from orchard.cli import main
from orchard.contracts import TrainerReport
from orchard.trainer.result import MAX_BYTES, fit, report

TRAININGJOB: dict[str, Any] = {
    "apiVersion": "orchard.dev/v1alpha1",
    "kind": "TrainingJob",
    "metadata": {"name": "iris-rf", "namespace": "ml"},
    "spec": {
        "model": "iris",
        "dataset": {"builtin": "iris"},
        "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 10}},
        "gate": {"metric": "accuracy", "min": 0.8},
        "artifacts": {"uri": "file:///nowhere"},
    },
}


def orchard_train(
    args: list[str], tmp_path: Path, stdin: str | None = None, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    log = tmp_path / "termination-log"
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "JOB_"))}
    full_env = {**inherited, "ORCHARD_TERMINATION_LOG": str(log), **env}
    orchard = Path(sys.executable).with_name("orchard")
    proc = subprocess.run(
        [str(orchard), "train", *args],
        input=stdin,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.stdout.count("\n") == 1, proc.stdout  # one line of JSON, progress on stderr
    return proc, json.loads(proc.stdout), log.read_text()


def test_train_from_a_yaml_file(tmp_path: Path) -> None:
    spec = tmp_path / "trainingjob.yaml"
    spec.write_text(yaml.safe_dump(TRAININGJOB))
    proc, result, message = orchard_train(
        ["-f", str(spec), "--output", f"file://{tmp_path}/out"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert message == proc.stdout.strip()
    assert list(result) == [  # the shape an operator of any version reads
        "artifactUri", "digest", "model", "task", "metrics", "framework", "dataset", "trial",
        "params", "gate", "durationSeconds", "inputs",
    ]  # fmt: skip
    assert result["artifactUri"] == f"file://{tmp_path}/out/"
    assert result["metrics"]["accuracy"] >= 0.8
    assert result["gate"]["passed"] is True
    assert result["framework"]["name"] == "scikit-learn"
    assert verify_artifact(tmp_path / "out", result["digest"]).source.training_job == "iris-rf"
    assert "INFO" in proc.stderr


def test_train_from_stdin_and_from_the_environment(tmp_path: Path) -> None:
    proc, result, _ = orchard_train(
        ["-f", "-", "--output", f"file://{tmp_path}/a"], tmp_path, stdin=json.dumps(TRAININGJOB)
    )
    assert proc.returncode == 0, proc.stderr
    search = {
        **TRAININGJOB,
        "spec": {
            **TRAININGJOB["spec"],
            "search": {
                "parameters": {"max_depth": [1, 2, 3]},
                "maxTrials": 3,
                "objective": {"metric": "accuracy"},
            },
        },
    }
    proc, result, _ = orchard_train(
        ["--output", "pvc://claim/iris/run"],
        tmp_path,
        ORCHARD_TRAININGJOB=json.dumps(search),
        ORCHARD_PVC_ROOT=str(tmp_path / "pvc"),
        JOB_COMPLETION_INDEX="2",
    )
    assert proc.returncode == 0, proc.stderr
    assert result["trial"] == 2
    assert result["params"] == {"n_estimators": 10, "max_depth": 3}
    assert result["artifactUri"] == "pvc://claim/iris/run/trial-2/"
    verify_artifact(tmp_path / "pvc" / "claim" / "iris" / "run" / "trial-2", result["digest"])


@pytest.mark.parametrize(
    ("change", "reason", "text"),
    [
        ({"dataset": {"builtin": "iris", "target": "species"}}, "DataCheckFailed", "'species'"),
        ({"gate": {"metric": "accuracy", "min": 1.01}}, "GateFailed", "gate requires >= 1.01"),
        ({"estimator": {"name": "Ridge", "params": {"alpah": 1}}}, "InvalidSpec", "alpah"),
        ({"estimator": {"name": "eval"}}, "InvalidSpec", "estimator"),
        (
            {"dataset": {"uri": "file:///no/such.csv", "target": "y"}},
            "DatasetUnavailable",
            "/no/such.csv",
        ),
    ],
)
def test_failures_end_with_a_reason(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    change: dict[str, Any],
    reason: str,
    text: str,
) -> None:
    """In process (the same `main` the console script runs), to keep the suite fast."""
    job = {**TRAININGJOB, "spec": {**TRAININGJOB["spec"], **change}}
    log = tmp_path / "termination-log"
    monkeypatch.setenv("ORCHARD_TERMINATION_LOG", str(log))
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(job)))
    code = main(["train", "-f", "-", "--output", f"file://{tmp_path}/out"])
    assert code == 1
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["error", "trial"]
    assert list(result["error"])[:2] == ["reason", "message"]
    assert result["error"]["reason"] == reason
    assert text in result["error"]["message"]
    assert json.loads(log.read_text()) == result
    assert not (tmp_path / "out").exists()


MINIMAL: dict[str, Any] = {
    **TRAININGJOB,
    "spec": {k: TRAININGJOB["spec"][k] for k in ("model", "dataset", "estimator")},
}


def test_the_minimal_trainingjob_trains_with_output_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Model, dataset and estimator: `--output` says where, no spec.artifacts needed."""
    monkeypatch.setenv("ORCHARD_TERMINATION_LOG", str(tmp_path / "log"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(MINIMAL)))
    assert main(["train", "-f", "-", "--output", f"file://{tmp_path}/out"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["artifactUri"] == f"file://{tmp_path}/out/"
    verify_artifact(tmp_path / "out", result["digest"])


def test_the_minimal_trainingjob_without_output_has_nowhere_to_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORCHARD_TERMINATION_LOG", str(tmp_path / "log"))
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(MINIMAL)))
    assert main(["train", "-f", "-"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["reason"] == "InvalidSpec"
    assert "--output" in error["message"] and "spec.artifacts.uri" in error["message"]


def test_no_spec_at_all(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ORCHARD_TRAININGJOB"}
    proc = subprocess.run(
        [sys.executable, "-m", "orchard.cli", "train"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"]["reason"] == "InvalidSpec"


def test_the_result_fits_in_a_termination_message(tmp_path: Path) -> None:
    wide = {
        "artifactUri": "pvc://a/b/",
        "digest": "sha256:" + "a" * 64,
        "metrics": {f"metric_{i}": 0.123456 for i in range(20)},
        "inputs": [
            {"name": f"a_rather_long_column_name_{i}", "type": "number"} for i in range(200)
        ],
        "params": {"n_estimators": 100},
    }
    data = fit(wide)
    assert len(data) <= MAX_BYTES
    kept = json.loads(data)
    assert "inputs" not in kept
    assert kept["params"] == {"n_estimators": 100}
    assert kept["metrics"] == wide["metrics"]
    small = {k: v for k, v in wide.items() if k != "inputs"}
    assert fit(small) == json.dumps(small, separators=(",", ":")).encode()

    huge_error = {"error": {"reason": "TrainingError", "message": "x" * 10_000}, "trial": 0}
    data = fit(huge_error)
    assert len(data) <= MAX_BYTES
    assert json.loads(data)["error"]["message"].endswith("...")

    log = tmp_path / "message"
    assert report(TrainerReport.model_validate(wide), str(log)) == log.read_bytes()


def test_the_widest_builtin_result_fits(tmp_path: Path) -> None:
    """digits has 64 inputs: the real result still fits, schema included."""
    job = {
        **TRAININGJOB,
        "spec": {**TRAININGJOB["spec"], "dataset": {"builtin": "digits"}, "gate": None},
    }
    job["spec"] = {k: v for k, v in job["spec"].items() if v is not None}
    proc, result, message = orchard_train(
        ["-f", "-", "--output", f"file://{tmp_path}/out"], tmp_path, stdin=json.dumps(job)
    )
    assert proc.returncode == 0, proc.stderr
    assert len(message.encode()) <= MAX_BYTES
    assert len(result["inputs"]) == 64
    assert result["digest"].startswith("sha256:")
    meta = verify_artifact(tmp_path / "out", result["digest"])
    assert len(meta.inputs) == 64


@pytest.mark.parametrize(
    ("content", "text"),
    [
        (None, "cannot read the TrainingJob"),
        ("spec: [unclosed", "not valid YAML"),
        ("kind: ModelVersion\n", "expected one TrainingJob"),
        ("spec: {model: Not_A_Label}\n", "spec.model"),
    ],
)
def test_unreadable_specs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: str | None,
    text: str,
) -> None:
    path = tmp_path / "tj.yaml"
    if content is not None:
        path.write_text(content)
    monkeypatch.setenv("ORCHARD_TERMINATION_LOG", str(tmp_path / "log"))
    assert main(["train", "-f", str(path)]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["reason"] == "InvalidSpec"
    assert text in error["message"]
