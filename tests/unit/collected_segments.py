"""Collected production data in the documented layout (docs/collection.md), written with
pyarrow as the serving pods write it, for the trainer's and the evaluation's tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

START = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)


def write_segments(
    root: Path,
    version: str,
    rows: pd.DataFrame,
    inputs: Sequence[str],
    target: str,
    *,
    pod: str = "iris-v1-abc12",
    start: datetime = START,
    step: timedelta = timedelta(minutes=1),
    per_request: int = 2,
    labelled: Sequence[int] | None = None,
    seq: int = 1,
) -> list[datetime]:
    """One requests and one labels segment of `version` under `root`: the rows in
    requests of `per_request` rows, answered `step` apart from `start`; the label of each
    row in `labelled` (default: every row) as text, as a classifier's. Returns each row's
    answer time."""
    n = len(rows)
    ids = [f"{version}-{seq}-{i // per_request}" for i in range(n)]
    row_index = [i % per_request for i in range(n)]
    times = [start + step * (i // per_request) for i in range(n)]
    data: dict[str, Any] = {
        "id": pa.array(ids, pa.string()),
        "row": pa.array(row_index, pa.int32()),
        "time": pa.array(times, pa.timestamp("ms", tz="UTC")),
        "model_version": pa.array([version] * n, pa.string()),
    }
    for name in inputs:
        data[name] = pa.array(rows[name].astype(float).tolist(), pa.float64())
    data["prediction"] = pa.array(["?"] * n, pa.string())
    name = f"{pod}-{start.strftime('%Y%m%dT%H%M%SZ')}-{seq:06d}.parquet"
    (root / version / "requests").mkdir(parents=True, exist_ok=True)
    (root / version / "labels").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(data), root / version / "requests" / name)
    chosen = list(range(n)) if labelled is None else list(labelled)
    labels = {
        "id": pa.array([ids[i] for i in chosen], pa.string()),
        "row": pa.array([row_index[i] for i in chosen], pa.int32()),
        "time": pa.array([times[i] + step for i in chosen], pa.timestamp("ms", tz="UTC")),
        "model_version": pa.array([version] * len(chosen), pa.string()),
        "label": pa.array([str(rows[target].iloc[i]) for i in chosen], pa.string()),
    }
    pq.write_table(pa.table(labels), root / version / "labels" / name)
    return times
