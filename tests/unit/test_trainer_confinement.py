"""`orchard train` in the cluster reads and writes local paths only on the mounted
volumes; on a laptop it reads any local file. Run as the real trainer: the pod's
environment holds the S3 keys of its Secrets, and none of it may reach the result."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from orchard.artifacts import LOCAL_ROOTS_ENV, sha256_file, verify_artifact
from orchard.cli import main

PENGUINS = Path(__file__).parent.parent / "data" / "penguins.csv"
SECRET = "hunter2-not-a-real-key"  # what the pod's Secret puts in its environment


def spec(uri: str, **dataset: Any) -> dict[str, Any]:
    return {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "penguins-rf", "namespace": "ml"},
        "spec": {
            "model": "penguins",
            "dataset": {"uri": uri, "target": "species", **dataset},
            "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 10}},
            "artifacts": {"uri": "pvc://artifacts/"},
        },
    }


def orchard_train(
    job: dict[str, Any], output: str, tmp_path: Path, *, cluster: Path | None
) -> tuple[int, dict[str, Any], str]:
    """The trainer as a process, as in a pod when `cluster` (the volume root) is given;
    returns its exit code, its result, and everything it wrote anywhere."""
    log = tmp_path / "termination-log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ORCHARD_", "JOB_"))}
    env.update(ORCHARD_TERMINATION_LOG=str(log), AWS_SECRET_ACCESS_KEY=SECRET)
    env["ORCHARD_DATASET_AWS_SECRET_ACCESS_KEY"] = SECRET
    if cluster is not None:
        env.update(ORCHARD_PVC_ROOT=str(cluster), **{LOCAL_ROOTS_ENV: str(cluster)})
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("orchard")), "train", "-f", "-", "--output", output],
        input=json.dumps(job),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    everything = proc.stdout + proc.stderr + (log.read_text() if log.exists() else "")
    return proc.returncode, json.loads(proc.stdout), everything


def train_here(
    job: dict[str, Any],
    output: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *,
    cluster: Path | None,
) -> tuple[int, dict[str, Any]]:
    """The same `main` in this process, where the environment need not be the pod's."""
    if cluster is None:
        monkeypatch.delenv(LOCAL_ROOTS_ENV, raising=False)
    else:
        monkeypatch.setenv("ORCHARD_PVC_ROOT", str(cluster))
        monkeypatch.setenv(LOCAL_ROOTS_ENV, str(cluster))
    monkeypatch.setenv("ORCHARD_TERMINATION_LOG", os.devnull)
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(job)))
    code = main(["train", "-f", "-", "--output", output])
    return code, json.loads(capsys.readouterr().out)


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    root = tmp_path / "pvc"
    (root / "data").mkdir(parents=True)
    (root / "artifacts").mkdir()
    (root / "data" / "penguins.csv").write_bytes(PENGUINS.read_bytes())
    return root


def test_proc_environ_is_refused_in_the_cluster(tmp_path: Path, volume: Path) -> None:
    code, result, everything = orchard_train(
        spec("file:///proc/self/environ", format="csv"),
        "pvc://artifacts/penguins/1",
        tmp_path,
        cluster=volume,
    )
    assert code == 1
    assert result["error"] == {
        "reason": "InvalidSpec",
        "message": f"dataset.uri file:///proc/self/environ is outside the mounted volumes "
        f"({volume}); in the cluster, datasets are read from pvc://<claim>/<path>, s3:// "
        "or https://",
        "parameter": "dataset.uri",
    }
    assert SECRET not in everything
    assert list((volume / "artifacts").iterdir()) == []


@pytest.mark.parametrize("uri", ["file:///etc/passwd", "pvc://../etc/passwd"])
def test_any_path_of_the_pod_is_refused_in_the_cluster(
    volume: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], uri: str
) -> None:
    job = spec(uri, format="csv")
    code, result = train_here(job, "pvc://artifacts/p", monkeypatch, capsys, cluster=volume)
    assert code == 1
    assert result["error"]["reason"] == "InvalidSpec"
    assert "root:" not in json.dumps(result)


def test_symlink_out_of_the_volume_is_refused(tmp_path: Path, volume: Path) -> None:
    (volume / "data" / "environ.csv").symlink_to("/proc/self/environ")
    code, result, everything = orchard_train(
        spec("pvc://data/environ.csv"), "pvc://artifacts/penguins/1", tmp_path, cluster=volume
    )
    assert code == 1
    assert result["error"]["reason"] == "InvalidSpec"
    assert result["error"]["message"].startswith(
        "dataset.uri pvc://data/environ.csv (through a symbolic link) is outside the mounted "
        f"volumes ({volume})"
    )
    assert SECRET not in everything


def test_datasets_on_the_volume_are_read_in_the_cluster(
    volume: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for n, uri in enumerate(["pvc://data/penguins.csv", f"file://{volume}/data/penguins.csv"]):
        output = f"pvc://artifacts/penguins/{n}"
        code, result = train_here(spec(uri), output, monkeypatch, capsys, cluster=volume)
        assert code == 0, result
        assert result["dataset"] == {"uri": uri, "digest": sha256_file(PENGUINS)}
        verify_artifact(volume / "artifacts" / "penguins" / str(n), result["digest"])


def test_artifacts_outside_the_volumes_are_refused_in_the_cluster(
    tmp_path: Path,
    volume: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A model written to the pod's own /tmp would be lost with the pod; said before any
    data is fetched (this dataset does not even exist)."""
    job = spec("pvc://data/missing.csv")
    code, result = train_here(job, f"file://{tmp_path}/out", monkeypatch, capsys, cluster=volume)
    assert code == 1
    assert result["error"]["reason"] == "InvalidSpec"
    assert result["error"]["message"].startswith(f"artifacts.uri: file://{tmp_path}/out/ is")
    assert not (tmp_path / "out").exists()


def test_laptop_reads_any_local_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "penguins.csv").write_bytes(PENGUINS.read_bytes())
    (tmp_path / "link.csv").symlink_to(tmp_path / "penguins.csv")
    for name in ("penguins.csv", "link.csv"):
        job = spec(f"file://{tmp_path}/{name}")
        output = f"file://{tmp_path}/out-{name}"
        code, result = train_here(job, output, monkeypatch, capsys, cluster=None)
        assert code == 0, result
        assert result["dataset"]["digest"] == sha256_file(PENGUINS)


def test_environ_read_on_a_laptop_is_not_echoed(tmp_path: Path) -> None:
    """The filed hole, where no confinement applies: the environment parses as a CSV
    whose "columns" are the variables, and the message used to list them."""
    code, result, everything = orchard_train(
        spec("file:///proc/self/environ", format="csv"),
        f"file://{tmp_path}/out",
        tmp_path,
        cluster=None,
    )
    assert code == 1
    assert result["error"]["reason"] == "DataCheckFailed"
    assert (
        "target column 'species' (dataset.target) is not among the file's"
        in (result["error"]["message"])
    )
    assert SECRET not in everything
    assert "AWS_SECRET_ACCESS_KEY" not in everything
