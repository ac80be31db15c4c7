"""Digest checks before unpickling, and `orchard serve` refusing a tampered artifact."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from test_serving_support import free_port, iris_artifact

from orchard.serving.artifact import ArtifactRefused, verify


@pytest.fixture()
def iris(tmp_path: Path) -> Path:
    return iris_artifact(tmp_path / "iris")


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_verify_accepts_matching_files(iris: Path) -> None:
    artifact = verify(iris)
    assert artifact.digest.startswith("sha256:") and len(artifact.digest) == 71
    assert artifact.model_bytes == (iris / "model.joblib").read_bytes()
    assert artifact.columns[0].name == "sepal_length"
    assert verify(iris, expected_digest=artifact.digest).digest == artifact.digest


def test_verify_refuses_a_changed_model(iris: Path) -> None:
    _tamper(iris / "model.joblib")
    with pytest.raises(
        ArtifactRefused, match=r"model\.joblib has sha256 .* but metadata\.json lists"
    ):
        verify(iris)


def test_verify_refuses_other_digests_and_gaps(iris: Path) -> None:
    with pytest.raises(ArtifactRefused, match="expected sha256:00"):
        verify(iris, expected_digest="sha256:" + "00" * 32)
    meta = json.loads((iris / "metadata.json").read_text())
    del meta["files"]["model.joblib"]
    (iris / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactRefused, match=r"lists no sha256 for model\.joblib"):
        verify(iris)
    meta["files"] = {"model.joblib": "sha256:x", "../etc/passwd": "sha256:y"}
    (iris / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactRefused):
        verify(iris)
    with pytest.raises(ArtifactRefused, match="cannot read"):
        verify(iris.parent / "nowhere")


def _serve(model_dir: Path, port: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "orchard.cli", "serve", "--model-dir", str(model_dir),
            "--model-name", "iris", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip


def test_serve_refuses_to_start_on_a_tampered_model(iris: Path) -> None:
    _tamper(iris / "model.joblib")
    port = free_port()
    proc = _serve(iris, port)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("orchard serve: ") and "refusing to load" in lines[0]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live")


def test_serve_starts_and_answers(iris: Path) -> None:
    port = free_port()
    proc = _serve(iris, port)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/models/iris:predict",
            json={"instances": [[5.1, 3.5, 1.4, 0.2]]},
        )
        assert r.json() == {"predictions": [0]}
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'orchard_model_info{model="iris",digest="sha256:' in metrics
    finally:
        proc.terminate()
        proc.wait(20)
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert proc.returncode in (0, -signal.SIGTERM)
    assert proc.stderr is not None
    assert "Finished server process" in proc.stderr.read()
