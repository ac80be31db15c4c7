"""s3:// against a real S3-compatible HTTP server on loopback: moto's `moto_server`
(installed by the dev extra), started here on a free port. The trainer's s3:// dataset
and output paths are exercised against the same server."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchard.artifacts import (
    METADATA_FILE,
    MODEL_FILE,
    ArtifactError,
    ArtifactNotFound,
    DigestMismatch,
    S3Settings,
    S3Store,
    fetch_artifact,
    get_dir,
    metadata_bytes,
    parse_metadata,
    put_dir,
    read_bytes,
    sha256_bytes,
    verify_artifact,
)

MOTO_SERVER = Path(sys.executable).with_name("moto_server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not MOTO_SERVER.exists():
        pytest.skip("moto_server is not installed (pip install 'moto[server]')")
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto_server did not start: {log.read_text()}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = {
        "AWS_ACCESS_KEY_ID": "orchard-test",
        "AWS_SECRET_ACCESS_KEY": "orchard-test-secret",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


def make_artifact(directory: Path) -> str:
    """A small well-formed artifact (the metadata of a real run); returns its digest."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(b"pickled bytes")
    meta = parse_metadata(
        json.dumps(
            {
                "formatVersion": 1,
                "model": "m",
                "task": "regression",
                "estimator": {"name": "Ridge"},
                "metrics": {"r2": 0.5},
                "framework": {"name": "scikit-learn", "version": "1.9.1"},
                "dataset": {
                    "uri": "builtin:diabetes",
                    "digest": sha256_bytes(b""),
                    "rows": 1,
                    "target": "target",
                },
                "inputs": [{"name": "x", "type": "number"}],
                "output": {"name": "target", "type": "number"},
                "files": {MODEL_FILE: sha256_bytes(b"pickled bytes")},
                "createdAt": "2026-11-27T10:00:00Z",
            }
        ).encode()
    )
    raw = metadata_bytes(meta)
    (directory / METADATA_FILE).write_bytes(raw)
    return sha256_bytes(raw)


def make_bucket(name: str) -> Any:
    client = S3Store().client
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=name)
    return client


def test_s3_round_trip(s3_env: dict[str, str], tmp_path: Path) -> None:
    client = make_bucket("models")
    digest = make_artifact(tmp_path / "src")
    put_dir(tmp_path / "src", "s3://models/iris/run-1/")
    keys = [o["Key"] for o in client.list_objects_v2(Bucket="models")["Contents"]]
    assert sorted(keys) == ["iris/run-1/metadata.json", "iris/run-1/model.joblib"]
    assert read_bytes("s3://models/iris/run-1/model.joblib") == b"pickled bytes"
    fetched = get_dir("s3://models/iris/run-1", tmp_path / "dst")
    assert verify_artifact(fetched, digest).model == "m"
    path, meta = fetch_artifact("s3://models/iris/run-1/", digest, tmp_path / "work")
    assert path == tmp_path / "work" and meta.model == "m"
    client.put_object(Bucket="models", Key="iris/run-1/model.joblib", Body=b"swapped")
    with pytest.raises(DigestMismatch, match=r"model\.joblib has digest"):
        fetch_artifact("s3://models/iris/run-1/", digest, tmp_path / "work2")
    # A prefix that merely starts like another is not mixed in.
    put_dir(tmp_path / "src", "s3://models/iris/run-1/")
    put_dir(tmp_path / "src", "s3://models/iris/run-10/")
    assert sorted(
        p.name for p in get_dir("s3://models/iris/run-1/", tmp_path / "d2").iterdir()
    ) == [
        "metadata.json",
        "model.joblib",
    ]


def test_s3_missing_objects(s3_env: dict[str, str], tmp_path: Path) -> None:
    make_bucket("models")
    with pytest.raises(ArtifactNotFound):
        read_bytes("s3://models/no/such/key")
    with pytest.raises(ArtifactNotFound):
        get_dir("s3://models/no/such/prefix/", tmp_path / "dst")
    with pytest.raises(ArtifactNotFound):
        read_bytes("s3://no-such-bucket/key")


def test_s3_unreachable_endpoint_is_an_error() -> None:
    settings = S3Settings(
        endpoint_url=f"http://127.0.0.1:{_free_port()}", access_key_id="a", secret_access_key="b"
    )
    with pytest.raises(ArtifactError, match="s3 request"):
        S3Store(settings).read_bytes("s3://models/x")


def test_prefixed_credentials_win(s3_endpoint: str) -> None:
    env = {
        "AWS_ACCESS_KEY_ID": "plain",
        "ORCHARD_DATASET_AWS_ACCESS_KEY_ID": "prefixed",
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_REGION": "eu-west-1",
    }
    settings = S3Settings.from_env("ORCHARD_DATASET_", env)
    assert settings.access_key_id == "prefixed"
    assert settings.endpoint_url == s3_endpoint
    assert settings.region == "eu-west-1"
    assert S3Settings.from_env("", env).access_key_id == "plain"


def test_trainer_reads_and_writes_s3(s3_env: dict[str, str], tmp_path: Path) -> None:
    """`orchard train` with the dataset and the artifact on S3, as a real subprocess."""
    client = make_bucket("data")
    make_bucket("models")
    csv = Path(__file__).parent.parent / "data" / "penguins.csv"
    client.put_object(Bucket="data", Key="penguins/penguins.csv", Body=csv.read_bytes())
    job = {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "penguins", "namespace": "ml"},
        "spec": {
            "model": "penguins",
            "dataset": {"uri": "s3://data/penguins/penguins.csv", "target": "species"},
            "estimator": {"name": "LogisticRegression"},
            "artifacts": {"uri": "s3://models/"},
        },
    }
    env = {
        **os.environ,
        "ORCHARD_TRAININGJOB": json.dumps(job),
        "ORCHARD_TERMINATION_LOG": str(tmp_path / "termination-log"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "orchard.cli", "train"], env=env, capture_output=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout)
    assert result["artifactUri"] == "s3://models/penguins/penguins/"
    assert result["metrics"]["accuracy"] > 0.9
    fetched = get_dir(result["artifactUri"], tmp_path / "dst")
    meta = verify_artifact(fetched, result["digest"])
    assert meta.dataset.digest == result["dataset"]["digest"]
    assert (tmp_path / "termination-log").read_bytes() == proc.stdout.strip()
