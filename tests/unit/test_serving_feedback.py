"""Feedback over real HTTP: true labels matched to earlier answers by their id, live
accuracy in the pod's metrics, every kind of bad feedback refused with its reason, and
two pods on loopback where feedback reaches the one that did not answer."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_serving_support import (
    app_for,
    free_port,
    iris_artifact,
    iris_artifact_with_baselines,
    regression_artifact,
    running_server,
)

from orchard.decisions.metrics_text import parse_scrape
from orchard.serving.app import App
from orchard.serving.feedback import RecentPredictions
from orchard.serving.limits import Limits
from orchard.serving.peers import Peers

IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]  # 0, 1, 2


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return {
        "iris": iris_artifact(root / "iris"),
        "iris-baselines": iris_artifact_with_baselines(root / "iris-baselines"),
        "diabetes": regression_artifact(root / "d"),
    }


def infer(
    base: str, model: str, rows: list[list[float]], request_id: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64",
                    "data": rows}]
    }  # fmt: skip
    if request_id is not None:
        body["id"] = request_id
    r = httpx.post(f"{base}/v2/models/{model}/infer", json=body)
    assert r.status_code == 200, r.text
    return dict(r.json())


def feedback(base: str, model: str, body: Any) -> httpx.Response:
    return httpx.post(f"{base}/v2/models/{model}/feedback", json=body)


def samples(base: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """The pod's /metrics as the operator reads them."""
    return parse_scrape(httpx.get(f"{base}/metrics").text)


@contextlib.contextmanager
def serving(artifacts: dict[str, Path], name: str, **kwargs: Any) -> Iterator[str]:
    with running_server(app_for(artifacts[name], name, **kwargs)) as base:
        yield base


def test_true_labels_give_accuracy_and_recall_and_a_second_feedback_is_refused(
    artifacts: dict[str, Path],
) -> None:
    with serving(artifacts, "iris") as base:
        answer = infer(base, "iris", IRIS_ROWS)
        assert len(answer["id"]) == 36  # generated: the request had none
        r = feedback(base, "iris", {"id": answer["id"], "labels": [0, 1, 1]})  # one wrong
        assert (r.status_code, r.json()) == (200, {"accepted": 3})
        again = feedback(base, "iris", {"id": answer["id"], "labels": [0, 1, 2]})
        assert again.status_code == 409 and "labelled before" in again.json()["error"]
        got = samples(base)
        assert got[("orchard_feedback_rows_total", ())] == 3
        assert got[("orchard_feedback_correct_total", ())] == 2
        assert got[("orchard_feedback_class_rows_total", (("class", "1"),))] == 2
        assert got[("orchard_feedback_class_correct_total", (("class", "1"),))] == 1
        assert got[("orchard_feedback_unmatched_total", ())] == 0
        # feedback is no inference traffic: the canary analysis never counts it
        assert got[("orchard_requests_total", (("code", "200"), ("endpoint", "v2_feedback")))] == 1


def test_bad_feedback_is_a_4xx_naming_the_problem_and_unknown_ids_are_counted(
    artifacts: dict[str, Path],
) -> None:
    with serving(artifacts, "iris") as base:
        known = infer(base, "iris", IRIS_ROWS[:2], request_id="req-7")["id"]
        assert known == "req-7"
        cases = [
            ({"id": known, "labels": [0]}, 400, "1 labels for a request of 2 rows"),
            ({"id": known, "labels": ["setosa", 1]}, 400, "must be a number"),
            ({"id": known, "labels": [True, 1]}, 400, "must be a number"),
            ({"id": known}, 400, "'labels' must be a non-empty list"),
            ({"labels": [1]}, 400, "'id' must be the id"),
            ([1, 2], 400, "JSON object"),
            ({"id": known, "labels": [{"a": 1}, 1]}, 400, "label 0 is dict"),
        ]
        for body, status, words in cases:
            r = feedback(base, "iris", body)
            assert r.status_code == status and words in r.json()["error"], (body, r.text)
        raw = httpx.post(f"{base}/v2/models/iris/feedback", content=b"{not json")
        assert raw.status_code == 400 and "malformed JSON" in raw.json()["error"]
        ok = feedback(base, "iris", {"id": known, "labels": [0, 1]})
        assert ok.json() == {"accepted": 2}  # refusals left the request to be labelled

        unknown = feedback(base, "iris", {"id": "never-answered", "labels": [1, 2, 0]})
        assert unknown.status_code == 404 and "unmatched" in unknown.json()["error"]
        assert samples(base)[("orchard_feedback_unmatched_total", ())] == 3
        bad_id = httpx.post(
            f"{base}/v2/models/iris/infer",
            json={"id": 7, "inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64",
                                       "data": IRIS_ROWS[0]}]},
        )  # fmt: skip
        assert bad_id.status_code == 400 and "'id' must be a string" in bad_id.json()["error"]


def test_a_regressions_feedback_gives_absolute_and_squared_errors(
    artifacts: dict[str, Path],
) -> None:
    rows = [[0.01 * i] * 10 for i in range(4)]
    with serving(artifacts, "diabetes") as base:
        answer = infer(base, "diabetes", rows)
        predicted = np.asarray(answer["outputs"][0]["data"], dtype=float)
        truth = predicted + np.array([1.0, -2.0, 3.0, 0.0])
        wrong_type = feedback(base, "diabetes", {"id": answer["id"], "labels": ["a"] * 4})
        assert wrong_type.status_code == 400 and "predicts values" in wrong_type.json()["error"]
        r = feedback(base, "diabetes", {"id": answer["id"], "labels": truth.tolist()})
        assert r.json() == {"accepted": 4}
        got = samples(base)
        assert got[("orchard_feedback_absolute_error_total", ())] == pytest.approx(6.0)
        assert got[("orchard_feedback_squared_error_total", ())] == pytest.approx(14.0)


def test_feedback_that_reaches_the_other_pod_is_counted_by_the_one_that_answered(
    artifacts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two pods on one port at two loopback addresses, each the other's peer (the peers'
    DNS name is resolved in the e2e tier, through a real headless Service)."""
    port = free_port()

    def pod(ip: str, other: str) -> App:
        peers = Peers("peers.invalid", port, ip)

        async def addresses() -> list[str]:
            return [other]

        monkeypatch.setattr(peers, "addresses", addresses)
        return app_for(artifacts["iris"], "iris", peers=peers)

    a, b = pod("127.0.0.1", "127.0.0.2"), pod("127.0.0.2", "127.0.0.1")
    with (
        running_server(a, host="127.0.0.1", port=port) as base_a,
        running_server(b, host="127.0.0.2", port=port) as base_b,
    ):
        answered_by_a = infer(base_a, "iris", IRIS_ROWS)["id"]
        r = feedback(base_b, "iris", {"id": answered_by_a, "labels": [0, 1, 2]})
        assert (r.status_code, r.json()) == (200, {"accepted": 3})
        assert samples(base_a)[("orchard_feedback_correct_total", ())] == 3
        assert samples(base_b)[("orchard_feedback_rows_total", ())] == 0
        wrong_count = feedback(base_b, "iris", {"id": answered_by_a, "labels": [0]})
        assert wrong_count.status_code == 409  # a's answer: labelled already, relayed by b
        lost = feedback(base_b, "iris", {"id": "nobody", "labels": [1]})
        assert lost.status_code == 404
        assert samples(base_b)[("orchard_feedback_unmatched_total", ())] == 1
        assert samples(base_a)[("orchard_feedback_unmatched_total", ())] == 0  # counted once


def test_remembered_answers_are_bounded_by_requests_and_rows() -> None:
    recent = RecentPredictions(max_ids=3, max_rows=5)
    for i in range(4):
        recent.remember(f"r{i}", np.zeros(1))
    assert not recent.knows("r0") and recent.knows("r3") and len(recent) == 3
    recent.remember("big", np.zeros(4))  # 1 + 1 + 4 rows > 5: the oldest go
    assert [recent.knows(f"r{i}") for i in range(4)] == [False, False, False, True]
    recent.remember("huge", np.zeros(6))  # more rows than may be kept at all: not kept
    assert not recent.knows("huge") and recent.rows <= 5
    assert Limits().feedback_requests == 100_000


def test_a_calibrated_classifier_counts_a_sample_of_rows_by_confidence_between_batches() -> None:
    """The estimate's raw material: rows scored again with predict_proba on the inference
    thread after their answers went out, counted in the calibration's bins."""

    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from orchard.artifacts.metadata import Calibration
    from orchard.serving.artifact import Column
    from orchard.serving.model import ModelRunner
    from orchard.trainer.evaluate import calibration

    data = load_iris()
    model = LogisticRegression(max_iter=500).fit(data.data[::2], data.target[::2])
    calibrated = calibration(model, data.data[1::2], pd.Series(data.target[1::2]))
    assert calibrated is not None
    bins = Calibration.model_validate(calibrated).bins()
    columns = [Column(f"x{i}", "number") for i in range(4)]
    runner = ModelRunner(model, columns, "classification", None, None, bins)
    with running_server(App("iris", lambda: runner)) as base:
        for _ in range(3):
            infer(base, "iris", IRIS_ROWS)
        deadline = time.monotonic() + 10
        while True:
            got = samples(base)
            counted = sum(
                v for (name, _), v in got.items() if name == "orchard_confidence_bin_total"
            )
            if counted >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert counted >= 3  # the first batch is sampled at once, later ones once a second
        assert bins is not None
        stated = [got[("orchard_confidence_bin_accuracy", (("bin", str(b)),))] for b in range(8)]
        assert stated == pytest.approx(list(bins.accuracy))


def test_a_pod_shows_its_own_drift_and_accuracy_since_it_started(
    artifacts: dict[str, Path],
) -> None:
    app = app_for(artifacts["iris-baselines"], "iris", version="3")
    with running_server(app) as base:
        shifted = [[r[0], r[1], r[2] + 5.0, r[3]] for r in IRIS_ROWS]
        answer = infer(base, "iris", shifted * 20)
        feedback(base, "iris", {"id": answer["id"], "labels": [2] * 60})
        view = httpx.get(f"{base}/v2/models/iris/monitoring").json()
        assert (view["model_name"], view["model_version"], view["samples"]) == ("iris", "3", 60)
        assert view["accuracy"]["labels"] == 60 and 0 <= view["accuracy"]["accuracy"] <= 1
        assert view["inputs"][0]["feature"] == "petal_length" and view["inputs"][0]["psi"] > 1
        assert view["inputs"][0]["outOfRangeShare"] > 0.5
        assert view["predictionDrift"]["samples"] == 60
        deadline = time.monotonic() + 10
        while view["accuracy"]["estimatedFrom"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)  # the sample is scored between batches, after the answer
            view = httpx.get(f"{base}/v2/models/iris/monitoring").json()
        assert view["accuracy"]["estimatedFrom"] == 32  # the first batch's sample
        assert 0 < view["accuracy"]["estimated"] <= 1
        versioned = httpx.get(f"{base}/v2/models/iris/versions/3/monitoring")
        assert versioned.status_code == 200
        assert httpx.get(f"{base}/v2/models/other/monitoring").status_code == 404
