"""The artifact store (file://, pvc://) and the digests that make an artifact trustworthy."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchard.artifacts import (
    METADATA_FILE,
    MODEL_FILE,
    ArtifactError,
    ArtifactNotFound,
    UnsupportedURI,
    VerificationError,
    get_dir,
    is_digest,
    local_path,
    put_dir,
    read_bytes,
    sha256_bytes,
    sha256_file,
    store_for,
    verify_artifact,
)

METADATA = {
    "formatVersion": 1,
    "model": "m",
    "task": "classification",
    "estimator": {"name": "SVC", "params": {}},
    "metrics": {"accuracy": 1.0},
    "framework": {"name": "scikit-learn", "version": "1.9.1"},
    "dataset": {"uri": "builtin:iris", "digest": "sha256:" + "0" * 64, "rows": 3, "target": "t"},
    "inputs": [{"name": "x", "type": "number"}],
    "output": {"name": "t", "type": "string", "classes": ["a", "b"]},
    "createdAt": "2026-11-27T10:00:00Z",
}


def make_artifact(directory: Path, model: bytes = b"pickled bytes") -> str:
    """A well-formed artifact; returns its digest."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(model)
    meta = {**METADATA, "files": {MODEL_FILE: sha256_bytes(model)}}
    raw = json.dumps(meta).encode()
    (directory / METADATA_FILE).write_bytes(raw)
    return sha256_bytes(raw)


def test_digests_are_sha256_of_the_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    expected = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert sha256_bytes(b"abc") == expected
    assert sha256_file(path) == expected
    assert is_digest(expected)
    assert not is_digest("sha256:xyz")
    assert not is_digest(expected.removeprefix("sha256:"))


def test_verify_accepts_an_intact_artifact(tmp_path: Path) -> None:
    digest = make_artifact(tmp_path / "a")
    meta = verify_artifact(tmp_path / "a", digest)
    assert meta.model == "m"
    assert meta.files[MODEL_FILE] == sha256_bytes(b"pickled bytes")


def test_verify_refuses_a_tampered_model(tmp_path: Path) -> None:
    make_artifact(tmp_path / "a")
    (tmp_path / "a" / MODEL_FILE).write_bytes(b"pickled bytes, and a payload")
    with pytest.raises(VerificationError, match=r"model\.joblib has digest sha256:"):
        verify_artifact(tmp_path / "a")


def test_verify_refuses_metadata_that_differs_from_the_recorded_digest(tmp_path: Path) -> None:
    digest = make_artifact(tmp_path / "a")
    meta = json.loads((tmp_path / "a" / METADATA_FILE).read_text())
    meta["metrics"]["accuracy"] = 0.5
    (tmp_path / "a" / METADATA_FILE).write_text(json.dumps(meta))
    verify_artifact(tmp_path / "a")  # self-consistent still, but not what was recorded
    with pytest.raises(VerificationError, match="recorded digest"):
        verify_artifact(tmp_path / "a", digest)


def test_verify_refuses_missing_files_and_bad_metadata(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound):
        verify_artifact(tmp_path / "nothing")
    make_artifact(tmp_path / "a")
    (tmp_path / "a" / MODEL_FILE).unlink()
    with pytest.raises(ArtifactNotFound, match=r"model\.joblib"):
        verify_artifact(tmp_path / "a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / METADATA_FILE).write_text('{"formatVersion": 1}')
    with pytest.raises(VerificationError, match="not valid"):
        verify_artifact(tmp_path / "b")
    make_artifact(tmp_path / "c")
    meta = json.loads((tmp_path / "c" / METADATA_FILE).read_text())
    meta["files"]["../escape"] = meta["files"][MODEL_FILE]
    (tmp_path / "c" / METADATA_FILE).write_text(json.dumps(meta))
    with pytest.raises(VerificationError, match="outside"):
        verify_artifact(tmp_path / "c")


def test_local_paths_of_uris(tmp_path: Path) -> None:
    env = {"ORCHARD_PVC_ROOT": str(tmp_path)}
    assert local_path("pvc://claim/a/b/", env) == tmp_path / "claim" / "a" / "b"
    assert local_path("pvc://claim/a", {}) == Path("/mnt/pvc/claim/a")
    assert local_path("file:///x/y", env) == Path("/x/y")
    assert local_path("/x/y", env) == Path("/x/y")
    for bad in ("pvc://claim/../other", "pvc:///nothing", "file://host/x"):
        with pytest.raises(UnsupportedURI):
            local_path(bad, env)
    with pytest.raises(UnsupportedURI):
        store_for("ftp://x/y")


@pytest.mark.parametrize("scheme", ["file", "pvc"])
def test_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scheme: str) -> None:
    monkeypatch.setenv("ORCHARD_PVC_ROOT", str(tmp_path / "volumes"))
    digest = make_artifact(tmp_path / "src")
    (tmp_path / "src" / "sub").mkdir()
    (tmp_path / "src" / "sub" / "extra.txt").write_text("x")
    uri = f"file://{tmp_path}/store/m/1/" if scheme == "file" else "pvc://artifacts/m/1/"
    put_dir(tmp_path / "src", uri)
    if scheme == "pvc":
        assert (tmp_path / "volumes" / "artifacts" / "m" / "1" / MODEL_FILE).is_file()
    assert read_bytes(uri.rstrip("/") + "/" + MODEL_FILE) == b"pickled bytes"
    fetched = get_dir(uri, tmp_path / "dst")
    assert (fetched / "sub" / "extra.txt").read_text() == "x"
    assert verify_artifact(fetched, digest).model == "m"
    # Writing again replaces the files in place (a retried pod).
    make_artifact(tmp_path / "src", model=b"retrained")
    put_dir(tmp_path / "src", uri)
    assert read_bytes(uri + MODEL_FILE) == b"retrained"
    assert not [p for p in local_path(uri).iterdir() if p.name.startswith(".")]
    assert (local_path(uri) / MODEL_FILE).stat().st_mode & 0o777 == 0o644


def test_missing_objects_and_unwritable_places(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound):
        read_bytes(f"file://{tmp_path}/nope")
    with pytest.raises(ArtifactNotFound):
        get_dir(f"file://{tmp_path}/nope", tmp_path / "dst")
    (tmp_path / "file").write_text("a file where a directory should be")
    make_artifact(tmp_path / "src")
    with pytest.raises(ArtifactError, match="cannot write"):
        put_dir(tmp_path / "src", f"file://{tmp_path}/file/sub")


def test_importable_without_boto3_until_s3_is_used() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import orchard.artifacts as a; "
        "a.store_for('s3://bucket/key'); assert 'boto3' not in sys.modules, 'boto3 imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def run_verifier(tmp_path: Path, *args: str) -> tuple[int, dict[str, object]]:
    import os
    import subprocess
    import sys

    log = tmp_path / "termination-log"
    proc = subprocess.run(
        [sys.executable, "-m", "orchard.artifacts.verify", *args],
        env={**os.environ, "ORCHARD_TERMINATION_LOG": str(log)},
        capture_output=True,
        text=True,
    )
    assert "RuntimeWarning" not in proc.stderr
    report = json.loads(proc.stdout)
    assert json.loads(log.read_text()) == report
    return proc.returncode, report


def test_the_verifier_job_command(tmp_path: Path) -> None:
    digest = make_artifact(tmp_path / "a")
    code, report = run_verifier(tmp_path, f"file://{tmp_path}/a/", digest)
    assert code == 0
    assert report["verified"] is True
    assert report["files"] == {MODEL_FILE: sha256_bytes(b"pickled bytes")}

    code, report = run_verifier(tmp_path, f"file://{tmp_path}/a/", "sha256:" + "1" * 64)
    assert code == 1
    assert report["error"] == {
        "reason": "DigestMismatch",
        "message": f"metadata.json has digest {digest}, but the recorded digest is "
        f"sha256:{'1' * 64}",
    }

    (tmp_path / "a" / MODEL_FILE).write_bytes(b"tampered")
    code, report = run_verifier(tmp_path, f"file://{tmp_path}/a/", digest)
    assert (code, report["error"]["reason"]) == (1, "DigestMismatch")  # type: ignore[index]

    code, report = run_verifier(tmp_path, f"file://{tmp_path}/none/", digest)
    assert (code, report["error"]["reason"]) == (1, "ArtifactNotFound")  # type: ignore[index]
