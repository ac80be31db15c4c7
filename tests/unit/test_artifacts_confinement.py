"""In the cluster ($ORCHARD_LOCAL_ROOTS set), local paths reach only the mounted volumes;
an artifact's files are its own; nothing a link points at is ever quoted."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_artifacts import make_artifact

from orchard.artifacts import (
    LOCAL_ROOTS_ENV,
    METADATA_FILE,
    MODEL_FILE,
    ArtifactError,
    OutsideLocalRoots,
    UnsupportedURI,
    VerificationError,
    local_path,
    local_roots,
    parse_metadata,
    read_bytes,
    sha256_bytes,
    verify_artifact,
)
from orchard.artifacts.store import LocalStore, _read_confined
from orchard.artifacts.verify import main as verify_main

SECRET = "AWS_SECRET_ACCESS_KEY=hunter2"


@pytest.fixture
def volume(tmp_path: Path) -> Path:
    """A claim mounted at <root>/data, with a secret file beside the root (the pod's own
    filesystem)."""
    (tmp_path / "pvc" / "data").mkdir(parents=True)
    (tmp_path / "pvc" / "data" / "x.csv").write_text("a,b\n1,2\n")
    (tmp_path / "secret.env").write_text(SECRET + "\n")
    return tmp_path / "pvc"


def cluster(volume: Path) -> dict[str, str]:
    return {"ORCHARD_PVC_ROOT": str(volume), LOCAL_ROOTS_ENV: str(volume)}


def test_roots_are_unset_on_a_laptop_and_fail_closed_when_empty() -> None:
    assert local_roots({}) is None
    assert local_roots({LOCAL_ROOTS_ENV: ""}) == ()
    assert local_roots({LOCAL_ROOTS_ENV: f"/mnt/pvc{os.pathsep}/data"}) == ("/mnt/pvc", "/data")
    with pytest.raises(OutsideLocalRoots, match=r"mounted volumes \(none\)"):
        local_path("file:///etc/passwd", {LOCAL_ROOTS_ENV: ""})


def test_paths_on_the_volume_resolve_in_the_cluster(volume: Path) -> None:
    env = cluster(volume)
    assert local_path("pvc://data/x.csv", env) == (volume / "data" / "x.csv").resolve()
    assert local_path(f"file://{volume}/data/x.csv", env) == (volume / "data" / "x.csv").resolve()
    assert LocalStore(env).read_bytes("pvc://data/x.csv") == b"a,b\n1,2\n"


@pytest.mark.parametrize(
    "uri", ["file:///proc/self/environ", "file:///etc/passwd", "/etc/passwd", "relative.csv"]
)
def test_proc_environ_and_other_pod_paths_are_refused_in_the_cluster(
    volume: Path, uri: str
) -> None:
    with pytest.raises(OutsideLocalRoots) as info:
        LocalStore(cluster(volume)).read_bytes(uri)
    assert str(info.value) == (
        f"{uri} is outside the mounted volumes ({volume}); "
        "in the cluster, local paths are pvc://<claim>/<path>"
    )


def test_symlink_out_of_the_volume_is_refused(volume: Path) -> None:
    (volume / "data" / "link.csv").symlink_to(volume.parent / "secret.env")
    (volume / "data" / "environ.csv").symlink_to("/proc/self/environ")
    (volume / "data" / "dir").symlink_to(volume.parent)
    for uri in ("pvc://data/link.csv", "pvc://data/environ.csv", "pvc://data/dir/secret.env"):
        with pytest.raises(OutsideLocalRoots, match="through a symbolic link") as info:
            LocalStore(cluster(volume)).read_bytes(uri)
        assert "hunter2" not in str(info.value)


def test_symlink_within_the_volume_is_followed(volume: Path) -> None:
    (volume / "data" / "alias.csv").symlink_to(volume / "data" / "x.csv")
    assert LocalStore(cluster(volume)).read_bytes("pvc://data/alias.csv") == b"a,b\n1,2\n"


def test_a_claim_name_cannot_climb_out(volume: Path) -> None:
    for uri in ("pvc://../secret.env", "pvc://./data/x.csv", "pvc://data/../../secret.env"):
        with pytest.raises(UnsupportedURI):
            local_path(uri, cluster(volume))


def test_a_link_swapped_in_after_the_check_is_not_followed(volume: Path) -> None:
    """Another pod may write the volume between `confine` and the read."""
    checked = local_path("pvc://data/x.csv", cluster(volume))
    checked.unlink()
    checked.symlink_to(volume.parent / "secret.env")
    with pytest.raises(OSError):
        _read_confined(checked, "pvc://data/x.csv", (str(volume),))
    # A directory swapped for a link: the descriptor's own path gives it away.
    (volume / "data" / "dir").symlink_to(volume.parent)
    with pytest.raises(OutsideLocalRoots, match="through a symbolic link"):
        _read_confined(volume / "data" / "dir" / "secret.env", "pvc://data/d", (str(volume),))


def test_a_fifo_on_the_volume_is_refused_without_blocking(volume: Path) -> None:
    os.mkfifo(volume / "data" / "pipe.csv")
    with pytest.raises(ArtifactError, match="not a regular file"):
        LocalStore(cluster(volume)).read_bytes("pvc://data/pipe.csv")


def test_writes_are_confined_too(volume: Path, tmp_path: Path) -> None:
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "f").write_text("x")
    store = LocalStore(cluster(volume))
    store.put_dir(tmp_path / "art", "pvc://data/out/")
    assert (volume / "data" / "out" / "f").read_text() == "x"
    with pytest.raises(OutsideLocalRoots):
        store.put_dir(tmp_path / "art", f"file://{tmp_path}/elsewhere/")
    assert not (tmp_path / "elsewhere").exists()


def test_laptop_reads_any_local_file(volume: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(LOCAL_ROOTS_ENV, raising=False)
    secret = volume.parent / "secret.env"
    assert read_bytes(f"file://{secret}") == (SECRET + "\n").encode()
    (volume / "data" / "link.csv").symlink_to(secret)
    assert LocalStore({"ORCHARD_PVC_ROOT": str(volume)}).read_bytes("pvc://data/link.csv")


def test_artifact_file_linked_out_of_its_directory_is_refused(tmp_path: Path) -> None:
    make_artifact(tmp_path / "a")
    (tmp_path / "a" / METADATA_FILE).rename(tmp_path / "elsewhere.json")
    (tmp_path / "a" / METADATA_FILE).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(VerificationError, match="resolves outside the artifact directory"):
        verify_artifact(tmp_path / "a")
    make_artifact(tmp_path / "b")
    (tmp_path / "b" / MODEL_FILE).unlink()
    (tmp_path / "b" / MODEL_FILE).symlink_to(tmp_path / "a" / MODEL_FILE)
    with pytest.raises(VerificationError, match=r"model\.joblib resolves outside"):
        verify_artifact(tmp_path / "b")


def test_invalid_metadata_does_not_echo_its_bytes() -> None:
    for raw in (f"{SECRET}\0HOME=/tmp\0".encode(), json.dumps({"model": SECRET}).encode()):
        with pytest.raises(VerificationError) as info:
            parse_metadata(raw)
        assert "hunter2" not in str(info.value)
        assert str(info.value).startswith("metadata.json is not valid: ")


def test_verification_job_refuses_an_artifact_outside_the_volumes(
    volume: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A ModelVersion made by hand cannot make the verifier read the pod's files."""
    for key, value in cluster(volume).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ORCHARD_TERMINATION_LOG", str(volume.parent / "log"))
    digest = make_artifact(volume.parent / "outside")
    assert verify_main([f"file://{volume.parent}/outside", digest]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert "outside the mounted volumes" in error["message"]
    digest = make_artifact(volume / "data" / "model")
    assert verify_main(["pvc://data/model", digest]) == 0
    assert sha256_bytes((volume / "data" / "model" / METADATA_FILE).read_bytes()) == digest
