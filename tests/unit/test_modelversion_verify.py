"""`python -m orchard.artifacts.verify`: the check a ModelVersion's verification Job runs,
against a real artifact directory (a fitted pipeline and its metadata.json)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import joblib
import pytest
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from orchard.artifacts import FORMAT_VERSION, Metadata, metadata_bytes, sha256_bytes, sha256_file
from orchard.artifacts.verify import main


def report(uri: str, digest: str) -> tuple[int, dict[str, Any]]:
    """Run the entry point in-process; its report is the JSON line it prints."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main([uri, digest])
    body: dict[str, Any] = json.loads(out.getvalue())
    return code, body


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[Path, str]:
    """A real artifact: a fitted model and the metadata.json pinning it; returns its digest."""
    directory = tmp_path / "iris" / "run-1"
    directory.mkdir(parents=True)
    x, y = load_iris(return_X_y=True)
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), directory / "model.joblib")
    metadata = Metadata.model_validate(
        {
            "formatVersion": FORMAT_VERSION,
            "model": "iris",
            "task": "classification",
            "estimator": {"name": "LogisticRegression", "params": {"max_iter": 500}},
            "metrics": {"accuracy": 0.97},
            "framework": {"name": "scikit-learn", "version": "1"},
            "dataset": {
                "uri": "builtin:iris",
                "digest": "sha256:" + "0" * 64,
                "rows": 150,
                "target": "target",
            },
            "inputs": [{"name": f"x{i}", "type": "number"} for i in range(4)],
            "output": {"name": "target", "type": "integer", "classes": [0, 1, 2]},
            "files": {"model.joblib": sha256_file(directory / "model.joblib")},
            "createdAt": "2026-11-27T10:00:00Z",
        }
    )
    raw = metadata_bytes(metadata)
    (directory / "metadata.json").write_bytes(raw)
    return directory, sha256_bytes(raw)


def test_intact_artifact_verifies(artifact: tuple[Path, str]) -> None:
    directory, digest = artifact
    code, body = report(f"file://{directory}", digest)
    assert code == 0
    assert body["verified"] is True
    assert set(body["files"]) == {"model.joblib"}


def test_pvc_uri_is_read_under_the_mount_root(
    artifact: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, digest = artifact
    monkeypatch.setenv("ORCHARD_PVC_ROOT", str(directory.parents[2]))
    claim = directory.parents[1].name
    code, body = report(f"pvc://{claim}/iris/run-1/", digest)
    assert code == 0, body


def test_wrong_digest_is_refused(artifact: tuple[Path, str]) -> None:
    directory, _ = artifact
    code, body = report(f"file://{directory}", "sha256:" + "1" * 64)
    assert code == 1
    assert body["error"]["reason"] == "DigestMismatch"


def test_swapped_model_file_is_refused(artifact: tuple[Path, str]) -> None:
    directory, digest = artifact
    joblib.dump({"not": "the model"}, directory / "model.joblib")
    code, body = report(f"file://{directory}", digest)
    assert (code, body["error"]["reason"]) == (1, "DigestMismatch")
    assert "model.joblib" in body["error"]["message"]


def test_missing_artifact(tmp_path: Path) -> None:
    code, body = report(f"file://{tmp_path}/nothing", "sha256:" + "1" * 64)
    assert (code, body["error"]["reason"]) == (1, "ArtifactNotFound")


def test_module_entry_point_writes_the_termination_message(
    artifact: tuple[Path, str], tmp_path: Path
) -> None:
    directory, digest = artifact
    log = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "orchard.artifacts.verify", f"file://{directory}", digest],
        capture_output=True,
        text=True,
        env={"ORCHARD_TERMINATION_LOG": str(log), "PATH": "/usr/bin:/bin"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(log.read_text())["verified"] is True
    assert json.loads(proc.stdout)["digest"] == digest
