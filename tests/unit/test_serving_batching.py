"""Adaptive batching over real HTTP: concurrent requests share a predict call, each gets its rows.

The served model is wrapped to count its `predict` calls and to hold each call for a
moment, so that requests sent together really are in flight together.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from test_serving_support import app_for, iris_artifact, mixed_artifact, mixed_frame, running_server

from orchard.serving.app import App


class Counting:
    """The real model, with a record of the rows of every predict call."""

    def __init__(self, inner: Any, hold: float) -> None:
        self.inner = inner
        self.hold = hold
        self.calls: list[int] = []
        self.threads: set[str] = set()

    def predict(self, X: Any) -> Any:
        self.calls.append(len(X))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.hold)
        return self.inner.predict(X)


@pytest.fixture()
def iris_server(tmp_path: Path) -> Iterator[tuple[str, App, Counting]]:
    app = app_for(iris_artifact(tmp_path / "iris"), "iris", max_batch_size=32, max_batch_wait=0.002)
    with running_server(app) as base:
        assert app.runner is not None
        counting = Counting(app.runner.model, hold=0.05)
        app.runner.model = counting
        app.runner.native = None  # the pipeline answers, counted
        yield base, app, counting


async def _post_all(url: str, bodies: list[Any]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=10) as client:
        return await asyncio.gather(*(client.post(url, json=b) for b in bodies))


def test_concurrent_requests_share_one_predict_call(iris_server: tuple[str, App, Counting]) -> None:
    base, _, counting = iris_server
    rng = np.random.default_rng(1)
    requests = [rng.uniform([4, 2, 1, 0.1], [8, 4.5, 7, 2.5], size=(3, 4)) for _ in range(8)]
    bodies = [
        {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP64", "data": r.tolist()}]}
        for r in requests
    ]
    replies = asyncio.run(_post_all(f"{base}/v2/models/iris/infer", bodies))
    assert [r.status_code for r in replies] == [200] * 8
    # Fewer predict calls than requests, and at least one call carried several requests.
    assert sum(counting.calls) == 24
    assert len(counting.calls) < 8
    assert max(counting.calls) >= 9
    # Every caller got the predictions of its own rows, in its own order.
    for rows, reply in zip(requests, replies, strict=True):
        assert reply.json()["outputs"][0]["data"] == counting.inner.predict(rows).tolist()
    # The model ran on the inference thread, never on the event loop's.
    assert counting.threads and all(t.startswith("orchard-predict") for t in counting.threads)
    metrics = httpx.get(f"{base}/metrics").text
    assert f"orchard_batch_requests_count {len(counting.calls)}" in metrics
    assert "orchard_batch_rows_sum 24" in metrics


def test_batches_hold_at_most_max_requests_and_rows(tmp_path: Path) -> None:
    app = app_for(iris_artifact(tmp_path / "iris"), "iris", max_batch_size=3, max_batch_rows=25)
    row = [5.1, 3.5, 1.4, 0.2]
    with running_server(app) as base:
        assert app.runner is not None
        counting = Counting(app.runner.model, hold=0.05)
        app.runner.model = counting
        app.runner.native = None  # the pipeline answers, counted
        bodies = [{"instances": [row] * 10} for _ in range(7)] + [{"instances": [row]}] * 6
        replies = asyncio.run(_post_all(f"{base}/v1/models/iris:predict", bodies))
        sizes = [len(r.json()["predictions"]) for r in replies]
        assert sizes == [10] * 7 + [1] * 6
        assert sum(counting.calls) == 76
        assert max(counting.calls) <= 25  # at most two 10-row requests, or three small ones
        assert len(counting.calls) < 13
        metrics = httpx.get(f"{base}/metrics").text
        assert 'orchard_batch_requests_bucket{le="2"}' in metrics
        assert 'orchard_batch_requests_bucket{le="4"} ' + str(len(counting.calls)) in metrics


def test_a_request_that_breaks_the_model_fails_alone(tmp_path: Path) -> None:
    artifact = mixed_artifact(tmp_path / "mixed")
    app = app_for(artifact, "penguins")
    frame, _ = mixed_frame(n=6, seed=5)
    frame = frame.astype(object).where(frame.notna(), None)
    good = [frame.iloc[i : i + 1].to_dict("records") for i in range(6)]
    bad = [
        {"island": "Atlantis", "sex": "male", "bill_length_mm": 40.0, "flipper_length_mm": 190.0}
    ]
    with running_server(app) as base:
        assert app.runner is not None
        counting = Counting(app.runner.model, hold=0.05)
        app.runner.model = counting
        app.runner.native = None  # the pipeline answers, counted
        bodies = [{"instances": rows} for rows in [*good[:3], bad, *good[3:]]]
        replies = asyncio.run(_post_all(f"{base}/v1/models/penguins:predict", bodies))
        model = joblib.load(artifact / "model.joblib")
        statuses = [r.status_code for r in replies]
        assert statuses == [200, 200, 200, 500, 200, 200, 200]
        assert "Atlantis" in replies[3].json()["error"]
        for i, reply in enumerate(replies[:3] + replies[4:]):
            import pandas as pd

            rows = pd.DataFrame(good[i]).astype({"bill_length_mm": float}).fillna({"sex": np.nan})
            assert reply.json()["predictions"] == model.predict(rows).tolist()
        # A batch of several requests failed, and was retried request by request.
        assert len(counting.calls) > len(set(counting.calls)) or len(counting.calls) > 2
        metrics = httpx.get(f"{base}/metrics").text
        assert 'orchard_requests_total{endpoint="v1_predict",code="200"} 6' in metrics
        assert 'orchard_requests_total{endpoint="v1_predict",code="500"} 1' in metrics
