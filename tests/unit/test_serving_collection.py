"""Collected production data: real requests over real HTTP to the server, its collector
writing Parquet segments, read back with pyarrow as a TrainingJob would and joined with
the feedback labels by id and row."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_artifacts_s3 import s3_endpoint, s3_env  # noqa: F401 (fixtures)
from test_serving_support import app_for, iris_artifact, mixed_artifact, running_server

from orchard.serving.collection import Collector

IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return {"iris": iris_artifact(root / "iris"), "mixed": mixed_artifact(root / "mixed")}


def iris_collector(directory: Path | str, **kwargs: Any) -> Collector:
    return Collector(directory, "pod-a", "iris-v3", [(c, True) for c in IRIS], **kwargs)


def infer(base: str, rows: list[list[float]], request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "input-0", "shape": [len(rows), 4],
                                        "datatype": "FP64", "data": rows}]}  # fmt: skip
    if request_id:
        body["id"] = request_id
    r = httpx.post(f"{base}/v2/models/iris/infer", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def read(directory: Path, kind: str) -> pd.DataFrame:
    files = sorted((directory / kind).glob("*.parquet"))
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def test_every_answered_row_and_label_is_written_by_shutdown_and_joins_by_id(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    collector = iris_collector(tmp_path, flush_interval=3600)  # only the shutdown writes
    rng = np.random.default_rng(0)
    sent: dict[str, list[list[float]]] = {}
    with running_server(app_for(artifacts["iris"], "iris", collector=collector)) as base:
        for i in range(25):
            rows = rng.uniform(0, 7, (1 + i % 3, 4)).round(2).tolist()
            answer = infer(base, rows, request_id=f"req-{i}" if i % 2 else None)
            sent[answer["id"]] = rows
            if i % 5 == 0:
                fb = httpx.post(f"{base}/v2/models/iris/feedback",
                                json={"id": answer["id"], "labels": [1] * len(rows)})  # fmt: skip
                assert fb.status_code == 200
        assert not list(tmp_path.rglob("*.parquet"))  # nothing on the request path
    requests, labels = read(tmp_path, "requests"), read(tmp_path, "labels")
    assert set(requests["id"]) == set(sent) and len(requests) == sum(map(len, sent.values()))
    for request_id, rows in sent.items():
        mine = requests[requests["id"] == request_id].sort_values("row")
        assert mine[IRIS].to_numpy().tolist() == rows
    assert set(requests["model_version"]) == {"iris-v3"}
    assert str(requests["time"].dtype) == "datetime64[ms, UTC]"
    joined = labels.merge(requests, on=["id", "row"])
    assert len(joined) == len(labels) == sum(len(sent[i]) for i in set(labels["id"]))
    assert set(joined["label"]) == {"1"} and set(joined["prediction"]) <= {"0", "1", "2"}
    assert collector.counts.rows == len(requests) and collector.counts.labels == len(labels)
    assert not list(tmp_path.rglob("*.tmp"))


def test_named_columns_with_strings_and_missing_values_are_kept_as_typed(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    columns = [("bill_length_mm", True), ("flipper_length_mm", True), ("island", False),
               ("sex", False)]  # fmt: skip
    collector = Collector(tmp_path, "pod-b", "penguins-v1", columns, flush_interval=3600)
    instances = [
        {"island": "Dream", "sex": None, "bill_length_mm": 50.0, "flipper_length_mm": 195},
        {"island": "Torgersen", "sex": "female", "bill_length_mm": None, "flipper_length_mm": 180},
    ]
    app = app_for(artifacts["mixed"], "penguins", collector=collector)
    with running_server(app) as base:
        r = httpx.post(f"{base}/v1/models/penguins:predict", json={"instances": instances})
        assert r.status_code == 200
    got = read(tmp_path, "requests").sort_values("row")
    assert got["island"].tolist() == ["Dream", "Torgersen"]
    assert got["sex"].tolist()[1] == "female" and got["sex"].isna().tolist()[0]
    assert np.isnan(got["bill_length_mm"].tolist()[1])
    assert got["prediction"].tolist() == r.json()["predictions"]


async def test_segments_rotate_by_rows_and_the_buffer_and_disk_stay_bounded(
    tmp_path: Path,
) -> None:
    collector = iris_collector(
        tmp_path, max_segment_rows=100, max_buffered_rows=500, max_segments=2, flush_interval=3600
    )
    collector.start()
    rows = np.ones((10, 4))
    for i in range(30):  # 300 rows: a segment at every 100
        collector.record_request(f"r{i}", rows, np.zeros(10, dtype=int), 10)
        await asyncio.sleep(0)
    for _ in range(100):
        if collector.counts.segments >= 3:
            break
        await asyncio.sleep(0.02)
    assert collector.counts.segments == 3 and collector.counts.rows == 300
    assert len(list((tmp_path / "requests").glob("*.parquet"))) == 2  # max_segments
    assert collector.counts.removed == 1
    await collector.close()

    full = iris_collector(tmp_path / "full", max_buffered_rows=25, flush_interval=3600)
    for i in range(4):
        full.record_request(f"r{i}", rows, np.zeros(10, dtype=int), 10)
    assert full.counts.dropped == 20  # the third and fourth did not fit
    await full.close()
    assert full.counts.rows == 20


async def test_a_sample_rate_keeps_that_share_of_requests(tmp_path: Path) -> None:
    collector = iris_collector(tmp_path, sample_rate=0.25, flush_interval=3600)
    for i in range(2_000):
        collector.record_request(f"r{i}", np.ones((1, 4)), np.zeros(1, dtype=int), 1)
    await collector.close()
    assert 400 <= collector.counts.rows <= 600  # 500 expected; 5 standard deviations is ~100


async def test_a_directory_that_cannot_be_written_is_counted_and_serving_goes_on(
    tmp_path: Path,
) -> None:
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the directory should be")
    collector = iris_collector(blocked, flush_interval=3600)
    collector.record_request("r", np.ones((2, 4)), np.zeros(2, dtype=int), 2)
    await collector.close()
    assert (collector.counts.errors, collector.counts.rows) == (1, 0)


@pytest.mark.usefixtures("s3_env")
async def test_segments_reach_an_s3_prefix_whole_one_put_each() -> None:
    """Against moto's S3 server on loopback (the fixtures of test_artifacts_s3)."""
    import io
    import os

    import boto3

    endpoint = os.environ["AWS_ENDPOINT_URL"]
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="orchard-collect")
    collector = iris_collector(
        "s3://orchard-collect/prod/ml/iris/iris-v3/", max_segment_rows=100, flush_interval=3600
    )
    for i in range(15):
        collector.record_request(f"r{i}", np.full((10, 4), float(i)), np.zeros(10, dtype=int), 10)
    collector.record_labels("r1", [2] * 10)
    await collector.close()
    listed = s3.list_objects_v2(Bucket="orchard-collect", Prefix="prod/ml/iris/iris-v3/")
    keys = sorted(o["Key"] for o in listed["Contents"])
    requests = [k for k in keys if "/requests/pod-a-" in k]
    assert len(requests) == 2 and any("/labels/pod-a-" in k for k in keys)  # 150 rows: 100 + 50
    frames = [
        pq.read_table(io.BytesIO(s3.get_object(Bucket="orchard-collect", Key=k)["Body"].read()))
        for k in requests
    ]
    assert sum(f.num_rows for f in frames) == 150 == collector.counts.rows
    assert not list(collector.directory.rglob("*.parquet"))  # the staging copies are gone
