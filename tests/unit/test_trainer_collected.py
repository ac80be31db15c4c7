"""spec.dataset.collected: labelled production rows appended to the training data, and
the held-out rows every artifact now carries. Real fits, real Parquet segments."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from collected_segments import START, write_segments
from pydantic import ValidationError

from orchard.api.trainingjob import TrainingJob
from orchard.artifacts import (
    HELDOUT_FILE,
    DigestMismatch,
    parse_metadata,
    sha256_file,
    verify_artifact,
)
from orchard.contracts import TrainerReport
from orchard.trainer.collected import read_collected
from orchard.trainer.data import load_builtin
from orchard.trainer.errors import DataCheckFailed, InvalidSpec
from orchard.trainer.train import train

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def make_job(**dataset: Any) -> TrainingJob:
    body = {
        "model": "iris",
        "dataset": {"builtin": "iris", **dataset},
        "estimator": {"name": "LogisticRegression", "params": {"max_iter": 500}},
    }
    return TrainingJob.model_validate({"metadata": {"name": "tj", "namespace": "ml"}, "spec": body})


@pytest.fixture
def collected(tmp_path: Path) -> Path:
    """A deployment's collection directory: 40 iris rows answered by v1 (30 labelled),
    20 by v2 an hour later (all labelled), and a temp file to ignore."""
    iris = load_builtin("iris")
    root = tmp_path / "collected" / "ml" / "iris"
    write_segments(root, "iris-v1", iris.iloc[::3].head(40), FEATURES, "target", labelled=range(30))
    write_segments(
        root,
        "iris-v2",
        iris.iloc[1::3].head(20),
        FEATURES,
        "target",
        pod="iris-v2-def34",
        start=START + timedelta(hours=1),
    )
    (root / "iris-v2" / "requests" / ".iris-v2-x-000002.parquet.tmp").write_bytes(b"half")
    return root


def test_the_labelled_rows_of_every_version_are_appended(tmp_path: Path, collected: Path) -> None:
    plain = train(make_job(), f"file://{tmp_path}/plain")
    result = train(make_job(collected={"uri": f"file://{collected}/"}), f"file://{tmp_path}/out")
    meta = verify_artifact(tmp_path / "out", result.digest)
    assert meta.dataset.rows == 150 + 30 + 20
    assert meta.collected is not None
    assert meta.collected.rows == 50
    assert meta.collected.versions is None
    assert meta.collected.uri == f"file://{collected}/"
    assert result.collected is not None and result.collected["rows"] == 50
    assert result.collected["uri"] == meta.collected.uri
    assert result.collected["digest"] == meta.collected.digest
    # The recorded digest pins the template and the segments both.
    assert result.dataset["digest"] != plain.dataset["digest"]
    again = train(make_job(collected={"uri": f"file://{collected}"}), f"file://{tmp_path}/again")
    assert again.dataset["digest"] == result.dataset["digest"]
    segment = next((collected / "iris-v1" / "labels").glob("*.parquet"))
    table = pq.read_table(segment)
    pq.write_table(table.slice(0, 29), segment)  # one label fewer
    changed = train(make_job(collected={"uri": f"file://{collected}"}), f"file://{tmp_path}/c")
    assert changed.dataset["digest"] != result.dataset["digest"]
    assert changed.collected is not None and changed.collected["rows"] == 49


def test_versions_and_the_window_choose_the_rows(tmp_path: Path, collected: Path) -> None:
    uri = f"file://{collected}"
    only_v2 = train(
        make_job(collected={"uri": uri, "versions": ["iris-v2"]}), f"file://{tmp_path}/a"
    )
    assert only_v2.collected is not None
    assert only_v2.collected["rows"] == 20
    assert only_v2.collected["versions"] == ["iris-v2"]

    # v1 answered two rows a minute from START: [START+5m, START+10m) holds 10 of its rows,
    # of which all are labelled (the first 30 are).
    since, until = START + timedelta(minutes=5), START + timedelta(minutes=10)
    window = {"uri": uri, "since": since.isoformat(), "until": until.isoformat()}
    windowed = train(make_job(collected=window), f"file://{tmp_path}/b")
    assert windowed.collected is not None
    assert windowed.collected["rows"] == 10
    assert windowed.collected["since"] == "2026-12-02T14:05:00Z"
    assert windowed.collected["until"] == "2026-12-02T14:10:00Z"

    direct = read_collected(uri, since=START + timedelta(hours=1))
    assert len(direct.frame) == 20  # v2's rows only
    assert set(direct.frame["model_version"]) == {"iris-v2"}
    # The temp file was never read.
    assert all(not Path(p).name.startswith(".") for p, _ in direct.segments)


def test_labels_are_cast_to_a_numeric_target(tmp_path: Path) -> None:
    """Labels are written as text; a numeric target (here a regression's) gets numbers."""
    diabetes = load_builtin("diabetes")
    inputs = [c for c in diabetes.columns if c != "target"]
    root = tmp_path / "collected"
    write_segments(root, "diab-v1", diabetes.head(30), inputs, "target")
    body = {
        "model": "diabetes",
        "dataset": {"builtin": "diabetes", "collected": {"uri": f"file://{root}", "minRows": 30}},
        "estimator": {"name": "Ridge"},
    }
    job = TrainingJob.model_validate({"metadata": {"name": "d"}, "spec": body})
    result = train(job, f"file://{tmp_path}/out")
    assert result.collected is not None and result.collected["rows"] == 30
    assert result.metrics["r2"] > 0.2


def test_too_few_rows_fail_with_data_check_failed(tmp_path: Path, collected: Path) -> None:
    job = make_job(collected={"uri": f"file://{collected}", "minRows": 51})
    with pytest.raises(DataCheckFailed, match="50 labelled row") as exc:
        train(job, f"file://{tmp_path}/out")
    assert exc.value.check == "collectedMinRows"
    assert not (tmp_path / "out").exists()


def test_a_missing_input_column_is_named(tmp_path: Path) -> None:
    iris = load_builtin("iris")
    root = tmp_path / "collected"
    write_segments(root, "v1", iris.head(10), FEATURES[:3], "target")  # no petal_width
    with pytest.raises(DataCheckFailed, match="'petal_width'") as exc:
        train(make_job(collected={"uri": f"file://{root}"}), f"file://{tmp_path}/out")
    assert exc.value.column == "petal_width"
    # One version with every input, the next without one: its rows would be imputed.
    write_segments(root, "v1", iris.head(10), FEATURES, "target")
    later = START + timedelta(hours=1)
    write_segments(root, "v2", iris.head(10), FEATURES[1:], "target", start=later)
    with pytest.raises(DataCheckFailed, match="version v2 have no input column 'sepal_length'"):
        train(make_job(collected={"uri": f"file://{root}"}), f"file://{tmp_path}/out")
    # Outside the window, v2's rows are not used, and need nothing.
    window = {"uri": f"file://{root}", "versions": ["v1", "v2"], "until": later.isoformat()}
    result = train(make_job(collected=window), f"file://{tmp_path}/w")
    assert result.collected is not None and result.collected["rows"] == 10


def test_labels_without_their_request_row_are_dropped(tmp_path: Path) -> None:
    iris = load_builtin("iris")
    root = tmp_path / "collected"
    write_segments(root, "v1", iris.head(10), FEATURES, "target")
    # A labels segment for requests that were never sampled.
    extra = {
        "id": pa.array(["unsampled"] * 3, pa.string()),
        "row": pa.array([0, 1, 2], pa.int32()),
        "time": pa.array([START] * 3, pa.timestamp("ms", tz="UTC")),
        "model_version": pa.array(["v1"] * 3, pa.string()),
        "label": pa.array(["setosa"] * 3, pa.string()),
    }
    pq.write_table(
        pa.table(extra), root / "v1" / "labels" / "other-20261202T150000Z-000001.parquet"
    )
    rows = read_collected(f"file://{root}")
    assert len(rows.frame) == 10
    assert len(rows.segments) == 3


def test_s3_and_places_outside_the_volumes_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(InvalidSpec, match="s3:// is not supported"):
        train(make_job(collected={"uri": "s3://bucket/collected/ml/iris/"}), f"file://{tmp_path}/o")
    monkeypatch.setenv("ORCHARD_LOCAL_ROOTS", str(tmp_path / "volumes"))
    (tmp_path / "volumes").mkdir()
    with pytest.raises(InvalidSpec, match=r"dataset\.collected\.uri"):
        read_collected(f"file://{tmp_path}/elsewhere")


def test_the_spec_refuses_dot_dot_and_a_backwards_window() -> None:
    with pytest.raises(ValidationError, match=r"no '\.\.'"):
        make_job(collected={"uri": "pvc://claim/collected/../other"})
    with pytest.raises(ValidationError, match="before"):
        make_job(
            collected={
                "uri": "pvc://claim/c",
                "since": "2026-12-02T00:00:00Z",
                "until": "2026-12-01T00:00:00Z",
            }
        )
    with pytest.raises(ValidationError):
        make_job(collected={"uri": "https://host/c"})


def test_every_artifact_carries_its_heldout_rows(tmp_path: Path) -> None:
    result = train(make_job(), f"file://{tmp_path}/out")
    meta = verify_artifact(tmp_path / "out", result.digest)
    assert meta.heldout is not None
    assert meta.heldout.file == HELDOUT_FILE
    assert meta.heldout.target == "target"
    assert meta.heldout.rows == 30  # testSize 0.2 of 150
    assert meta.files[HELDOUT_FILE] == sha256_file(tmp_path / "out" / HELDOUT_FILE)
    rows = pd.read_parquet(tmp_path / "out" / HELDOUT_FILE)
    assert list(rows.columns) == [*FEATURES, "target"]
    assert len(rows) == 30
    # The digest pins it: a changed heldout.parquet fails verification.
    pq.write_table(pa.Table.from_pandas(rows.head(29)), tmp_path / "out" / HELDOUT_FILE)
    with pytest.raises(DigestMismatch, match=HELDOUT_FILE):
        verify_artifact(tmp_path / "out", result.digest)


def test_artifacts_without_heldout_or_collected_stay_readable(tmp_path: Path) -> None:
    result = train(make_job(), f"file://{tmp_path}/out")
    data = json.loads((tmp_path / "out" / "metadata.json").read_text())
    del data["heldout"]
    data["files"].pop(HELDOUT_FILE)
    meta = parse_metadata(json.dumps(data).encode())
    assert meta.heldout is None and meta.collected is None
    assert result.collected is None
    assert "collected" not in result.wire()
    # An older operator's reading of a newer report, and the other way round.
    assert (
        TrainerReport.model_validate({"artifactUri": "u", "digest": "d", "collected": 3}).collected
        is None
    )


def test_a_segment_linked_out_of_the_volumes_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    iris = load_builtin("iris")
    volumes = tmp_path / "volumes"
    root = volumes / "claim" / "collected"
    write_segments(root, "v1", iris.head(10), FEATURES, "target")
    outside = tmp_path / "secret.parquet"
    write_segments(tmp_path / "elsewhere", "v1", iris.head(4), FEATURES, "target")
    outside.write_bytes(next((tmp_path / "elsewhere" / "v1" / "requests").glob("*")).read_bytes())
    (root / "v1" / "requests" / "zz-20261202T150000Z-000001.parquet").symlink_to(outside)
    monkeypatch.setenv("ORCHARD_LOCAL_ROOTS", str(volumes))
    with pytest.raises(InvalidSpec, match="zz-20261202T150000Z-000001"):
        read_collected(f"file://{root}")
