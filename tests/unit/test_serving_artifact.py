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
import joblib
import pytest
from test_serving_support import (
    app_for,
    free_port,
    iris_artifact,
    mixed_artifact,
    mixed_frame,
    running_server,
    write_artifact,
)

from orchard.serving.artifact import ArtifactRefused, unpickle, verify
from orchard.serving.main import build_runner


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
    assert artifact.metadata.task == "classification"
    assert artifact.columns[0].name == "sepal_length"
    assert verify(iris, expected_digest=artifact.digest).digest == artifact.digest


def test_verify_refuses_a_changed_model(iris: Path) -> None:
    _tamper(iris / "model.joblib")
    with pytest.raises(
        ArtifactRefused, match=r"model\.joblib has digest sha256:\w+, but metadata\.json lists"
    ):
        verify(iris)


def test_verify_refuses_other_digests_and_gaps(iris: Path) -> None:
    with pytest.raises(ArtifactRefused, match="the recorded digest is sha256:00"):
        verify(iris, expected_digest="sha256:" + "00" * 32)
    meta = json.loads((iris / "metadata.json").read_text())
    del meta["files"]["model.joblib"]
    (iris / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactRefused, match=r"lists no digest for model\.joblib"):
        verify(iris)
    meta["files"] = {"model.joblib": "sha256:x", "../etc/passwd": "sha256:y"}
    (iris / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactRefused):
        verify(iris)
    with pytest.raises(ArtifactRefused, match=r"cannot read .*metadata\.json"):
        verify(iris.parent / "nowhere")


def _serve(model_dir: Path, port: int) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "orchard.cli", "serve", "--model-dir", str(model_dir),
            "--model-name", "iris", "--host", "127.0.0.1", "--port", str(port),
            "--grpc-port", str(free_port())]  # fmt: skip
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
    assert lines[0].startswith("orchard serve: refusing to start: model.joblib has digest")
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
        assert r.json()["predictions"] == [0]
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'orchard_model_info{model="iris",digest="sha256:' in metrics
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)  # reads and closes both pipes
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert proc.returncode in (0, -signal.SIGTERM)
    assert "Finished server process" in err


def test_files_changed_after_the_check_are_not_unpickled(iris: Path, tmp_path: Path) -> None:
    artifact = verify(iris)
    _tamper(iris / "model.joblib")
    with pytest.raises(ArtifactRefused, match=r"model\.joblib has digest"):
        unpickle(artifact)
    other = verify(iris_artifact(tmp_path / "other"))
    (tmp_path / "other" / "metadata.json").write_text(
        (tmp_path / "other" / "metadata.json").read_text().replace('"rows": 0', '"rows": 1')
    )
    with pytest.raises(ArtifactRefused, match="recorded digest"):
        unpickle(other)


def test_serves_what_the_trainer_writes(tmp_path: Path) -> None:
    """The contract end to end: `orchard train` on a CSV with categories and gaps, then serve."""
    frame, species = mixed_frame(n=150, seed=7)
    frame["species"] = species
    frame.to_csv(tmp_path / "penguins.csv", index=False)
    spec = {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "penguins", "namespace": "ml"},
        "spec": {
            "model": "penguins",
            "dataset": {"uri": f"file://{tmp_path}/penguins.csv", "target": "species"},
            "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 20}},
            "artifacts": {"uri": f"file://{tmp_path}/store"},
        },
    }
    orchard = Path(sys.executable).with_name("orchard")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "JOB_"))}
    env["ORCHARD_TERMINATION_LOG"] = str(tmp_path / "termination-log")
    proc = subprocess.run(
        [str(orchard), "train", "-f", "-", "--output", f"file://{tmp_path}/out"],
        input=json.dumps(spec), capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    digest = json.loads(proc.stdout)["digest"]
    app = app_for(tmp_path / "out", "penguins", expected_digest=digest)
    import pandas as pd

    rows = pd.read_csv(tmp_path / "penguins.csv").drop(columns="species").iloc[:8]
    assert rows.isna().any().any()
    with running_server(app) as base:
        meta = httpx.get(f"{base}/v2/models/penguins").json()
        assert [i["name"] for i in meta["inputs"]] == list(rows.columns)
        inputs = [
            {
                "name": i["name"],
                "shape": [8],
                "datatype": i["datatype"],
                "data": [None if pd.isna(v) else v for v in rows[i["name"]].tolist()],
            }
            for i in meta["inputs"]
        ]
        r = httpx.post(f"{base}/v2/models/penguins/infer", json={"inputs": inputs})
        assert r.status_code == 200, r.text
        model = joblib.load(tmp_path / "out" / "model.joblib")
        assert r.json()["outputs"][0]["data"] == model.predict(rows).tolist()


def test_a_schema_that_does_not_fit_the_model_is_refused(tmp_path: Path) -> None:
    mixed = mixed_artifact(tmp_path / "mixed")
    renamed = json.loads((mixed / "metadata.json").read_text())
    renamed["inputs"][0]["name"] = "beak_length_mm"
    (mixed / "metadata.json").write_text(json.dumps(renamed))
    with pytest.raises(ValueError, match="fitted on columns"):
        build_runner(verify(mixed))
    iris = joblib.load(iris_artifact(tmp_path / "iris") / "model.joblib")
    narrow = write_artifact(tmp_path / "narrow", iris, [{"name": "a", "type": "number"}])
    with pytest.raises(ValueError, match="takes 4 features, but the metadata lists 1"):
        build_runner(verify(narrow))


def test_serve_exits_when_the_model_cannot_load(tmp_path: Path) -> None:
    iris = joblib.load(iris_artifact(tmp_path / "iris") / "model.joblib")
    narrow = write_artifact(tmp_path / "narrow", iris, [{"name": "a", "type": "number"}])
    proc = _serve(narrow, free_port())
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3
    assert "cannot load model 'iris': ValueError: the model takes 4 features" in err
