"""A presigned dataset URL trains, and its credentials are written nowhere: not in
metadata.json, the result, the termination message, the log or an error. The digest
still pins the exact bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from orchard.artifacts import METADATA_FILE, sha256_file, verify_artifact

PENGUINS = Path(__file__).parent.parent / "data" / "penguins.csv"
QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAFAKEKEY%2F20260101%2Fus-east-1"
    "&X-Amz-Expires=3600&X-Amz-Signature=hunter2signature"
)
REDACTED_QUERY = (
    "X-Amz-Algorithm=REDACTED&X-Amz-Credential=REDACTED&X-Amz-Expires=REDACTED"
    "&X-Amz-Signature=REDACTED"
)
SECRETS = ("hunter2", "AKIAFAKEKEY")


def orchard_train(uri: str, tmp_path: Path) -> tuple[int, dict[str, Any], str]:
    """The real trainer; its exit code, result, and all it printed and reported."""
    job = {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "penguins-rf", "namespace": "ml"},
        "spec": {
            "model": "penguins",
            "dataset": {"uri": uri, "target": "species", "format": "csv"},
            "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 10}},
            "artifacts": {"uri": f"file://{tmp_path}/art"},
        },
    }
    log = tmp_path / "termination-log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "JOB_"))}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("orchard")), "train", "-f", "-"],
        input=json.dumps(job),
        env={**env, "ORCHARD_TERMINATION_LOG": str(log)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    return proc.returncode, json.loads(proc.stdout), proc.stdout + proc.stderr + log.read_text()


def test_presigned_query_is_redacted_in_metadata_and_result(tmp_path: Path, http_root: str) -> None:
    code, result, everything = orchard_train(f"{http_root}/penguins.csv?{QUERY}", tmp_path)
    assert code == 0, everything
    shown = f"{http_root}/penguins.csv?{REDACTED_QUERY}"
    assert result["dataset"] == {"uri": shown, "digest": sha256_file(PENGUINS)}
    assert f"dataset {shown}: 340 rows" in everything  # the log line
    artifact = tmp_path / "art" / "penguins" / "penguins-rf"
    meta = verify_artifact(artifact, result["digest"])
    assert meta.dataset.uri == shown
    assert meta.dataset.digest == sha256_file(PENGUINS)
    written = (artifact / METADATA_FILE).read_text()
    for secret in SECRETS:
        assert secret not in everything
        assert secret not in written


def test_presigned_query_is_redacted_in_errors(tmp_path: Path, http_root: str) -> None:
    code, result, everything = orchard_train(f"{http_root}/missing.csv?{QUERY}", tmp_path)
    assert code == 1
    assert result["error"] == {
        "reason": "DatasetUnavailable",
        "message": f"cannot download {http_root}/missing.csv?{REDACTED_QUERY}: "
        "HTTP Error 404: File not found",
    }
    for secret in SECRETS:
        assert secret not in everything


def test_credentials_in_an_https_host_are_refused_unsent(tmp_path: Path) -> None:
    """urllib would take them for a port and quote them back; nothing is sent."""
    code, result, everything = orchard_train("https://user:hunter2@127.0.0.1:1/x.csv", tmp_path)
    assert code == 1
    assert result["error"]["reason"] == "InvalidSpec"
    assert result["error"]["message"].startswith(
        "dataset.uri https://user:REDACTED@127.0.0.1:1/x.csv carries credentials"
    )
    assert "hunter2" not in everything
