"""Replayed requests (the `Orchard-Replay` header) over real HTTP: answered as any other
and counted as requests, but kept out of every production monitoring counter, the
feedback memory and the collection; a live request beside them still counts."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from test_serving_support import (
    app_for,
    iris_artifact_with_baselines,
    mixed_artifact,
    mixed_frame,
    regression_artifact,
    running_server,
)

from orchard.contracts import REPLAY_HEADER, REPLAY_PREDICTED_CLASS, REPLAY_REQUESTS, REQUESTS
from orchard.decisions.metrics_text import parse_scrape
from orchard.serving.app import App
from orchard.serving.artifact import verify
from orchard.serving.collection import Collector
from orchard.serving.main import build_runner

IRIS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]  # 0, 1, 2
REPLAY = {"Orchard-Replay": "1"}
# What a replayed request may move: the request, latency and batch metrics, its own.
TRAFFIC = (
    REQUESTS,
    "orchard_request_duration_seconds",
    "orchard_batch_",
    "orchard_predict_duration_seconds",
    REPLAY_REQUESTS,
    REPLAY_PREDICTED_CLASS,
    "orchard_connections_open",
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return {
        "iris": iris_artifact_with_baselines(root / "iris"),
        "diabetes": regression_artifact(root / "diabetes"),
        "penguins": mixed_artifact(root / "penguins", handle_unknown="ignore"),
    }


def v2(rows: list[list[float]], request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])],
                                        "datatype": "FP64", "data": rows}]}  # fmt: skip
    if request_id is not None:
        body["id"] = request_id
    return body


def samples(base: str) -> Samples:
    return parse_scrape(httpx.get(f"{base}/metrics").text)


def monitoring(got: Samples) -> Samples:
    """Every sample but those of traffic."""
    return {k: v for k, v in got.items() if not k[0].startswith(TRAFFIC)}


def total(got: Samples, name: str) -> float:
    return sum(v for (n, _), v in got.items() if n == name)


def settle(app: App) -> None:
    """Wait for the confidence samples being scored between batches."""
    deadline = time.monotonic() + 5
    while app._estimates and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)


def test_a_replayed_request_is_answered_alike_and_counted_only_as_a_request(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    collector = Collector(tmp_path, "pod-a", "iris-v1", [(c, True) for c in IRIS])
    app = app_for(artifacts["iris"], "iris", collector=collector)
    with running_server(app) as base:
        before = samples(base)
        url = f"{base}/v2/models/iris/infer"
        replayed = httpx.post(url, json=v2(ROWS, "replay-1"), headers=REPLAY)
        v1 = httpx.post(
            f"{base}/v1/models/iris:predict",
            json={"instances": ROWS, "id": "replay-2"},
            headers={REPLAY_HEADER.upper(): "yes"},  # header names know no case
        )
        assert replayed.status_code == v1.status_code == 200
        settle(app)
        after = samples(base)
        assert monitoring(after) == monitoring(before)  # drift, confidence, feedback alike
        assert after[(REPLAY_REQUESTS, (("code", "200"), ("endpoint", "v2_infer")))] == 1
        assert after[(REPLAY_REQUESTS, (("code", "200"), ("endpoint", "v1_predict")))] == 1
        assert after[(REQUESTS, (("code", "200"), ("endpoint", "v2_infer")))] == 1
        assert after[(REQUESTS, (("code", "200"), ("endpoint", "v1_predict")))] == 1
        latency = ("orchard_request_duration_seconds_count", (("endpoint", "v2_infer"),))
        assert after[latency] == 1
        assert {k[1]: v for k, v in after.items() if k[0] == REPLAY_PREDICTED_CLASS} == {
            (("class", "0"),): 2, (("class", "1"),): 2, (("class", "2"),): 2,
        }  # fmt: skip
        assert total(after, "orchard_predictions_total") == 0
        assert not app.recent.knows("replay-1") and not app.recent.knows("replay-2")
        unmatched = httpx.post(
            f"{base}/v2/models/iris/feedback", json={"id": "replay-1", "labels": [0, 1, 2]}
        )
        assert unmatched.status_code == 404 and "unmatched" in unmatched.json()["error"]

        live = httpx.post(url, json=v2(ROWS, "live-1"))
        assert live.status_code == 200
        same = {k: v for k, v in replayed.json().items() if k != "id"}
        assert {k: v for k, v in live.json().items() if k != "id"} == same
        assert v1.json()["predictions"] == replayed.json()["outputs"][0]["data"] == [0, 1, 2]
        settle(app)
        moved = samples(base)
        assert total(moved, "orchard_predictions_total") == 3
        assert total(moved, REPLAY_PREDICTED_CLASS) == 6
        assert moved[("orchard_feature_observations_total", (("feature", "sepal_length"),))] == 3
        assert total(moved, "orchard_feature_bin_total") == 3 * len(IRIS)
        # the replays did not take the live request's turn for the confidence sample
        assert total(moved, "orchard_confidence_bin_total") == 3
        assert app.recent.knows("live-1")
        assert collector.counts.dropped == 0
    requests = list((tmp_path / "requests").glob("*.parquet"))
    written = pd.concat([pd.read_parquet(f) for f in requests])
    assert set(written["id"]) == {"live-1"} and len(written) == 3


def test_a_replayed_regression_counts_no_predicted_value(artifacts: dict[str, Path]) -> None:
    from sklearn.datasets import load_diabetes

    rows = load_diabetes().data[:5].tolist()
    with running_server(app_for(artifacts["diabetes"], "diabetes")) as base:
        before = samples(base)
        r = httpx.post(f"{base}/v2/models/diabetes/infer", json=v2(rows), headers=REPLAY)
        assert r.status_code == 200 and len(r.json()["outputs"][0]["data"]) == 5
        after = samples(base)
        assert monitoring(after) == monitoring(before)
        assert after[("orchard_prediction_value_count", ())] == 0
        assert total(after, REPLAY_PREDICTED_CLASS) == 0
        httpx.post(f"{base}/v2/models/diabetes/infer", json=v2(rows))
        assert samples(base)[("orchard_prediction_value_count", ())] == 5


def test_replayed_and_live_requests_in_one_batch_count_each_by_its_kind(
    artifacts: dict[str, Path],
) -> None:
    """Many concurrent requests of both kinds share batches; every count is still each
    request's own kind."""
    app = app_for(artifacts["iris"], "iris", max_batch_wait=0.02)
    rng = np.random.default_rng(1)
    bodies = [(v2(rng.uniform(1, 7, (2, 4)).round(2).tolist()), i % 2 == 0) for i in range(40)]
    with running_server(app) as base, httpx.Client() as client:

        def send(item: tuple[dict[str, Any], bool]) -> int:
            body, replay = item
            r = client.post(
                f"{base}/v2/models/iris/infer", json=body, headers=REPLAY if replay else {}
            )
            return r.status_code

        with ThreadPoolExecutor(16) as pool:
            assert set(pool.map(send, bodies)) == {200}
        got = samples(base)
    assert got[("orchard_batch_requests_count", ())] < 40  # batches were shared
    assert total(got, "orchard_predictions_total") == 40  # 20 live requests of 2 rows
    assert total(got, REPLAY_PREDICTED_CLASS) == 40
    assert got[(REPLAY_REQUESTS, (("code", "200"), ("endpoint", "v2_infer")))] == 20
    assert got[(REQUESTS, (("code", "200"), ("endpoint", "v2_infer")))] == 40
    for feature in IRIS:
        assert got[("orchard_feature_observations_total", (("feature", feature),))] == 40
    assert len(app.recent) == 20 and app.recent.rows == 40  # the live ones only


def test_a_mixed_batch_summarises_only_its_live_rows(artifacts: dict[str, Path]) -> None:
    """The runner, directly: a batch of a live and a replayed part summarises as the live
    part alone, for numeric and string columns, and samples only live rows."""
    from orchard.serving.inputs import Schema

    runner = build_runner(verify(artifacts["penguins"]))
    schema: Schema = runner.schema
    frame, _ = mixed_frame(12, seed=3)
    records = frame.astype(object).where(frame.notna(), None).to_dict("records")
    live, _ = schema.parse_v1({"instances": records[:5]})
    replayed, _ = schema.parse_v1({"instances": records[5:]})
    alone = runner.predict_batch([live], [5])
    mixed = runner.predict_batch([live, replayed], [5, 7], [False, True])
    assert mixed.features == alone.features
    assert mixed.predictions.classes == alone.predictions.classes
    assert sum(mixed.predictions.replayed.values()) == 7
    only = runner.predict_batch([replayed], [7], [True])
    assert only.features.count == [] and not only.predictions.classes
    assert only.sample is None
    np.testing.assert_array_equal(mixed.outputs[1], runner.predict(replayed))


def test_a_replayed_request_that_fails_is_counted_with_its_code(
    artifacts: dict[str, Path],
) -> None:
    with running_server(app_for(artifacts["iris"], "iris")) as base:
        r = httpx.post(f"{base}/v2/models/iris/infer", content=b"{", headers=REPLAY)
        assert r.status_code == 400
        got = samples(base)
    assert got[(REPLAY_REQUESTS, (("code", "400"), ("endpoint", "v2_infer")))] == 1
