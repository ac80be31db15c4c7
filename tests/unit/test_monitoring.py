"""Monitoring a served version: prediction drift, the window across restarts, the
DriftDetected verdict, and the monitoring controller against the fake kube with real
models behind loopback /metrics (tests/unit/fake_pods.py)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fake_kube import FakeKube
from fake_pods import MetricsPods, serving_pods_fixture  # noqa: F401 (a fixture)
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LinearRegression

from orchard import kube
from orchard.api.modeldeployment import Monitoring
from orchard.artifacts.metadata import FeatureStats, prediction_drift_bins
from orchard.contracts import (
    CONFIDENCE_ACCURACY,
    CONFIDENCE_BIN,
    FEATURE_BIN,
    FEATURE_BIN_EXPECTED,
    PREDICTED_CLASS,
    PREDICTION_EXPECTED,
)
from orchard.decisions import monitoring as mon
from orchard.decisions.metrics_text import Labels, parse_scrape
from orchard.handlers import monitoring as h
from orchard.serving.artifact import Column
from orchard.serving.feedback import score
from orchard.serving.metrics import Metrics
from orchard.serving.model import ModelRunner
from orchard.trainer.artifact import feature_stats
from orchard.trainer.evaluate import prediction_stats

NS = "ml"
T0 = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
log = logging.getLogger("test")


def key(name: str, **labels: str) -> tuple[str, Labels]:
    return name, tuple(sorted(labels.items()))


def classes(**counts: float) -> dict[tuple[str, Labels], float]:
    return {key(PREDICTED_CLASS, **{"class": c}): n for c, n in counts.items()}


def expected_classes(**shares: float) -> dict[tuple[str, Labels], float]:
    return {key(PREDICTION_EXPECTED, **{"class": c}): s for c, s in shares.items()}


# --- Prediction drift ----------------------------------------------------------------------


def test_prediction_drift_compares_class_shares_and_counts_a_new_class_as_other() -> None:
    baseline = expected_classes(a=0.5, b=0.5)
    same = mon.prediction_drift(classes(a=510, b=490), baseline)
    assert same is not None and same.psi < 0.01 and same.samples == 1000
    new_class = mon.prediction_drift(classes(a=300, b=300, c=400), baseline)
    assert new_class is not None and new_class.psi > 1.0  # "c" lands in the empty other bin
    assert mon.prediction_drift(classes(a=1), {}) is None  # an older artifact states none


def test_a_regressions_predictions_are_counted_in_the_training_bins_by_the_server() -> None:
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 10, (2_000, 1))
    model = LinearRegression().fit(x, 3 * x[:, 0] + rng.normal(0, 1, 2_000))
    bins = prediction_drift_bins(prediction_stats(model.predict(x[:500]), "regression"))
    runner = ModelRunner(model, [Column("x", "number")], "regression", None, bins)
    metrics = Metrics("m")
    metrics.set_model(["x"], [True], True, {})
    metrics.set_baseline({}, runner.prediction_bins)

    def serve(rows: np.ndarray) -> mon.PredictionDrift:
        before = parse_scrape(metrics.render().decode())
        metrics.observe_batch(runner.predict_batch([rows], [len(rows)]), len(rows), 1)
        after = parse_scrape(metrics.render().decode())
        window = {k: v - before.get(k, 0.0) for k, v in after.items()}
        drift = mon.prediction_drift(window, after)
        assert drift is not None
        return drift

    in_range = serve(rng.uniform(0, 10, (1_000, 1)))
    assert in_range.samples == 1_000 and in_range.psi < 0.05
    assert serve(rng.uniform(8, 12, (1_000, 1))).psi > 1.0


# --- The window ----------------------------------------------------------------------------


def bins_scrape(*counts: float) -> dict[tuple[str, Labels], float]:
    """One pod's cumulative counts of feature "x" in bins 0, 1, … and its predictions."""
    out = {key(FEATURE_BIN, feature="x", bin=str(b)): n for b, n in enumerate(counts)}
    out.update(classes(a=sum(counts)))
    out[key("orchard_requests_total", endpoint="v2_infer", code="200")] = 1.0  # not kept
    return out


def x_bins(window: mon.MonitoringWindow) -> list[float]:
    totals = window.totals()
    return [totals.get(key(FEATURE_BIN, feature="x", bin=str(b)), 0.0) for b in range(2)]


def test_the_window_sums_each_pods_increase_and_a_restarted_pod_loses_nothing_counted() -> None:
    w = mon.advance(mon.MonitoringWindow(), "v1", {"a": bins_scrape(10, 0)}, T0, 3600, 60)
    assert x_bins(w) == [10, 0]  # a pod seen first counts its life so far
    later = T0 + dt.timedelta(minutes=1)
    w = mon.advance(w, "v1", {"a": bins_scrape(15, 5), "b": bins_scrape(0, 2)}, later, 3600, 60)
    assert x_bins(w) == [15, 7]
    restarted = T0 + dt.timedelta(minutes=2)  # pod a's process restarted: its counters reset
    w = mon.advance(w, "v1", {"a": bins_scrape(1, 0), "b": bins_scrape(0, 2)}, restarted, 3600, 60)
    assert x_bins(w) == [16, 7]
    assert all(name != "orchard_requests_total" for name, _ in w.totals())
    assert mon.forget_pods(w, {"b"}).pods.keys() == {"b"}
    assert x_bins(mon.forget_pods(w, {"b"})) == [16, 7]  # a pod gone leaves its counts


def test_slices_age_out_as_a_whole_and_another_version_starts_over() -> None:
    w = mon.MonitoringWindow()
    for minute in range(0, 30):  # window 10 min in slices of 10/12 min, interval 1 min
        scrape = {"a": bins_scrape(minute + 1, 0)}
        w = mon.advance(w, "v1", scrape, T0 + dt.timedelta(minutes=minute), 600, 60)
    assert len(w.slices) <= mon.MAX_SLICES
    assert x_bins(w) == [10, 0]  # the last ten minutes' increase, one a minute
    start = w.start()
    assert start is not None and start == T0 + dt.timedelta(minutes=20)
    w = mon.advance(w, "v2", {"c": bins_scrape(3, 3)}, T0 + dt.timedelta(minutes=31), 600, 60)
    assert (w.version, x_bins(w), list(w.pods)) == ("v2", [3, 3], ["c"])


def test_stored_windows_read_back_as_they_were_and_anything_else_as_none() -> None:
    odd = {key(FEATURE_BIN, feature='he said "x"\n', bin="0"): 4.0}
    w = mon.advance(mon.MonitoringWindow(), "v1", {"a": bins_scrape(2, 1)}, T0, 600, 60)
    w = mon.MonitoringWindow(w.version, w.pods, (*w.slices, mon.Slice(T0, odd)))
    windows = {"stable": w, "canary": mon.MonitoringWindow("v2")}
    assert mon.loads(mon.dumps(windows)) == windows
    bad_slice = '{"stable": {"version": "v1", "slices": [{"start": 3}]}}'
    for text in (None, "", "{", "[]", bad_slice):
        assert mon.loads(text) == {}


def test_a_canary_counts_apart_and_a_promoted_canary_keeps_its_window() -> None:
    seen = {
        "stable": mon.TrackSeen("v1", {"s": bins_scrape(10, 0)}, {"s"}),
        "canary": mon.TrackSeen("v2", {"c": bins_scrape(0, 4)}, {"c"}),
    }
    windows = mon.advance_tracks({}, seen, T0, 600, 60)
    assert (x_bins(windows["stable"]), x_bins(windows["canary"])) == ([10, 0], [0, 4])
    later = T0 + dt.timedelta(minutes=1)
    promoted = {"stable": mon.TrackSeen("v2", {"s2": bins_scrape(0, 1)}, {"s2"})}
    after = mon.advance_tracks(windows, promoted, later, 600, 60)
    assert list(after) == ["stable"] and after["stable"].version == "v2"
    assert x_bins(after["stable"]) == [0, 5]  # the canary's 4 and the new pod's 1
    assert set(after["stable"].pods) == {"s2"}


# --- The verdict ---------------------------------------------------------------------------


def drift_window(rows_per_bin: list[float]) -> mon.MonitoringWindow:
    return mon.advance(mon.MonitoringWindow(), "v1", {"a": bins_scrape(*rows_per_bin)}, T0, 600, 60)


BASELINE = {
    key(FEATURE_BIN_EXPECTED, feature="x", bin="0"): 0.5,
    key(FEATURE_BIN_EXPECTED, feature="x", bin="1"): 0.5,
    **expected_classes(a=1.0),
}


def test_drift_is_unknown_until_enough_rows_then_named_and_announced_once() -> None:
    settings = Monitoring(min_samples=100)
    few = mon.evaluate(drift_window([40, 10]), BASELINE, 1, settings, [], 1, T0)
    cond = few.conditions[0]
    assert (cond.type, cond.status, cond.reason) == ("DriftDetected", "Unknown", "NotEnoughSamples")
    assert few.monitoring.samples == 50 and few.events == []

    fair = mon.evaluate(drift_window([52, 48]), BASELINE, 1, settings, few.conditions, 1, T0)
    assert (fair.conditions[0].status, fair.conditions[0].reason) == ("False", "NoDrift")
    assert fair.events == [] and fair.monitoring.drift_score is not None

    shifted = drift_window([95, 5])
    drifted = mon.evaluate(shifted, BASELINE, 2, settings, fair.conditions, 1, T0)
    cond = drifted.conditions[0]
    assert (cond.status, cond.reason) == ("True", "Drifted") and "x (PSI" in cond.message
    assert [e[:2] for e in drifted.events] == [("Warning", "Drifted")]
    assert drifted.monitoring.inputs[0].feature == "x" and drifted.monitoring.pods == 2
    again = mon.evaluate(shifted, BASELINE, 2, settings, drifted.conditions, 1, T0)
    assert again.events == []  # still drifted: no second event
    back = mon.evaluate(drift_window([50, 50]), BASELINE, 2, settings, again.conditions, 1, T0)
    assert [e[:2] for e in back.events] == [("Normal", "DriftResolved")]
    assert mon.switched_off(back.conditions) == []


def feedback_window(rows: int, correct: int, **by_class: tuple[int, int]) -> mon.MonitoringWindow:
    from orchard.contracts import (
        FEEDBACK_CLASS_CORRECT,
        FEEDBACK_CLASS_ROWS,
        FEEDBACK_CORRECT,
        FEEDBACK_ROWS,
    )

    scrape = {key(FEEDBACK_ROWS): float(rows), key(FEEDBACK_CORRECT): float(correct)}
    for c, (n, right) in by_class.items():
        scrape[key(FEEDBACK_CLASS_ROWS, **{"class": c})] = n
        scrape[key(FEEDBACK_CLASS_CORRECT, **{"class": c})] = right
    return mon.advance(mon.MonitoringWindow(), "v1", {"a": scrape}, T0, 600, 60)


def accuracy_of(decision: mon.MonitoringDecision) -> tuple[str, str]:
    cond = next(c for c in decision.conditions if c.type == "AccuracyDegraded")
    return cond.status, cond.reason


def test_live_accuracy_is_judged_against_the_registered_value_once_enough_labels_arrive() -> None:
    settings = Monitoring.model_validate({"accuracy": {"minLabels": 50}})
    facts = mon.VersionFacts(task="classification", metrics={"accuracy": 0.95})

    def judge(window: mon.MonitoringWindow, before: list[Any]) -> mon.MonitoringDecision:
        return mon.evaluate(window, BASELINE, 1, settings, before, 1, T0, facts)

    few = judge(feedback_window(10, 10), [])
    assert accuracy_of(few) == ("Unknown", "NotEnoughSamples") and few.events == []
    good = judge(feedback_window(100, 93, a=(60, 58), b=(40, 35)), few.conditions)
    live = good.monitoring.accuracy
    assert live is not None and (live.value, live.labels, live.threshold) == (0.93, 100, 0.9025)
    assert live.recall == {"a": round(58 / 60, 4), "b": 0.875}
    assert accuracy_of(good) == ("False", "WithinThreshold")
    bad = judge(feedback_window(100, 80), good.conditions)
    assert accuracy_of(bad) == ("True", "Degraded")
    assert [e[:2] for e in bad.events] == [("Warning", "AccuracyDegraded")]
    assert "0.8000 below 0.9025" in bad.events[0][2]
    back = judge(feedback_window(100, 99), bad.conditions)
    assert [e[:2] for e in back.events] == [("Normal", "AccuracyRecovered")]

    unregistered = mon.evaluate(
        feedback_window(100, 80), BASELINE, 1, settings, [], 1, T0, mon.VersionFacts()
    )
    assert accuracy_of(unregistered) == ("Unknown", "NoThreshold")


def test_an_error_metric_is_degraded_above_its_threshold() -> None:
    from orchard.contracts import FEEDBACK_ROWS, FEEDBACK_SQUARED_ERROR

    scrape = {key(FEEDBACK_ROWS): 100.0, key(FEEDBACK_SQUARED_ERROR): 100.0 * 4.0}  # rmse 2
    window = mon.advance(mon.MonitoringWindow(), "v1", {"a": scrape}, T0, 600, 60)
    facts = mon.VersionFacts(task="regression", metrics={"rmse": 1.5})
    decision = mon.evaluate(window, {}, 1, Monitoring(), [], 1, T0, facts)
    live = decision.monitoring.accuracy
    assert live is not None and (live.metric, live.value, live.threshold) == ("rmse", 2.0, 1.575)
    assert accuracy_of(decision) == ("True", "Degraded")
    explicit = Monitoring.model_validate({"accuracy": {"metric": "rmse", "threshold": 2.5}})
    within = mon.evaluate(window, {}, 1, explicit, [], 1, T0, facts)
    assert accuracy_of(within) == ("False", "WithinThreshold")


# --- The controller, with real models behind real HTTP --------------------------------------

FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


@pytest.fixture(scope="module")
def iris_model() -> tuple[Any, dict[str, FeatureStats], pd.DataFrame]:
    data = load_iris(as_frame=True)
    frame = data.frame.rename(columns=dict(zip(data.feature_names, FEATURES, strict=True)))
    x = frame[FEATURES]
    model = RandomForestClassifier(n_estimators=10, random_state=0).fit(x, frame["target"])
    schema = [{"name": f, "type": "number"} for f in FEATURES]
    stats = {k: FeatureStats.model_validate(v) for k, v in feature_stats(x, schema).items()}
    return model, stats, x


def start_pod(pods: MetricsPods, ip: str, iris_model: Any) -> ModelRunner:
    model, stats, x = iris_model
    runner = ModelRunner(
        model, [Column(f, "number") for f in FEATURES], "classification", stats,
        prediction_drift_bins(prediction_stats(model.predict(x), "classification")),
    )  # fmt: skip
    metrics = Metrics("iris")
    metrics.set_model(FEATURES, [True] * 4, False, {})
    metrics.set_baseline(runner.drift_bins, runner.prediction_bins)
    pods.metrics[ip] = metrics
    return runner


def send(pods: MetricsPods, ip: str, runner: ModelRunner, rows: pd.DataFrame) -> None:
    for part in np.array_split(rows.to_numpy(dtype=float), 5):
        pods.metrics[ip].observe_batch(runner.predict_batch([part], [len(part)]), len(part), 1)


def md_pod(name: str, ip: str, track: str = "stable", version: str = "iris-v1") -> dict[str, Any]:
    labels = {
        "orchard.dev/modeldeployment": "iris",
        "orchard.dev/track": track,
        "orchard.dev/model-version": version,
    }
    ready = [{"type": "Ready", "status": "True"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "status": {"podIP": ip, "conditions": ready},
    }


async def evaluate() -> dict[str, Any]:
    await h.evaluate(NS, "iris", log)  # type: ignore[arg-type]
    body = await kube.get(kube.API_VERSION, "ModelDeployment", "iris", NS)
    return dict((body or {})["status"])


def drift_condition(status: dict[str, Any]) -> tuple[str, str]:
    cond = next(c for c in status["conditions"] if c["type"] == "DriftDetected")
    return cond["status"], cond["reason"]


async def test_the_controller_finds_the_shifted_input_and_keeps_its_window_across_restarts(
    monkeypatch: pytest.MonkeyPatch,
    serving_pods: tuple[int, MetricsPods],
    iris_model: Any,
) -> None:
    port, pods = serving_pods
    cluster = FakeKube().install(monkeypatch)
    h._windows.clear()
    cluster.add(
        {
            "apiVersion": kube.API_VERSION,
            "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": NS, "uid": "md-uid", "generation": 1},
            "spec": {
                "modelVersion": "iris-v1",
                "server": {"port": port},
                "monitoring": {
                    "minSamples": 200,
                    "window": "1h",
                    "interval": "5s",
                    "collection": {"sampleRate": 1, "uri": "pvc://orchard-artifacts/collected/"},
                },
            },
            "status": {"phase": "Stable", "stableVersion": "iris-v1"},
        }
    )
    cluster.add(md_pod("iris-stable-a", "127.0.0.1"))
    cluster.add(md_pod("iris-stable-b", "127.0.0.2"))
    cluster.add(
        {
            "apiVersion": kube.API_VERSION,
            "kind": "ModelVersion",
            "metadata": {"name": "iris-v1", "namespace": NS},
            "spec": {
                "task": "classification",
                "metrics": {"accuracy": 0.96},
                "artifact": {"uri": "pvc://orchard-artifacts/iris/1/"},
            },
        }
    )
    runners = {ip: start_pod(pods, ip, iris_model) for ip in ("127.0.0.1", "127.0.0.2")}
    rows = iris_model[2]
    rng = np.random.default_rng(5)

    def traffic(n: int, shift: float = 0.0) -> None:
        for ip, runner in runners.items():
            sample = rows.sample(n, replace=True, random_state=int(rng.integers(1 << 30)))
            send(pods, ip, runner, sample.assign(petal_length=sample["petal_length"] + shift))

    traffic(60)
    status = await evaluate()
    assert drift_condition(status) == ("Unknown", "NotEnoughSamples")
    assert status["monitoring"]["samples"] == 120 and status["monitoring"]["pods"] == 2
    assert status["monitoring"]["collection"] == "pvc://orchard-artifacts/collected/ml/iris/"

    traffic(100)
    status = await evaluate()
    assert drift_condition(status) == ("False", "NoDrift")
    assert status["monitoring"]["samples"] == 320

    h._windows.clear()  # the operator restarts: the windows come back from their ConfigMap
    stored = cluster.find("ConfigMap", "iris-monitoring")
    assert stored is not None and stored["metadata"]["ownerReferences"][0]["uid"] == "md-uid"
    pods.metrics["127.0.0.2"] = Metrics("iris")  # and pod b's process restarts
    runners["127.0.0.2"] = start_pod(pods, "127.0.0.2", iris_model)
    traffic(20)
    status = await evaluate()
    assert drift_condition(status) == ("False", "NoDrift")  # no false drift from either
    assert status["monitoring"]["samples"] == 360  # and nothing counted is lost

    labels = iris_model[2].assign(target=load_iris().target)
    for ip, runner in runners.items():  # true labels for 60 rows, one wrong answer in three
        labelled = labels.sample(60, random_state=1)
        predicted = runner.predict(labelled[FEATURES].to_numpy(dtype=float))
        truth = [int(t) if i % 3 else int(t) + 1 for i, t in enumerate(labelled["target"])]
        scored = score(predicted, truth, True, runner.classes)
        pods.metrics[ip].observe_feedback(scored)
    traffic(200, shift=3.0)
    status = await evaluate()
    assert drift_condition(status) == ("True", "Drifted")
    live = status["monitoring"]["accuracy"]
    assert live["labels"] == 120 and live["threshold"] == round(0.96 * 0.95, 6)
    assert 0.55 < live["value"] < 0.7, live
    accuracy = next(c for c in status["conditions"] if c["type"] == "AccuracyDegraded")
    assert (accuracy["status"], accuracy["reason"]) == ("True", "Degraded")
    assert status["monitoring"]["inputs"][0]["feature"] == "petal_length"
    assert status["monitoring"]["inputs"][0]["outOfRangeShare"] > 0.3
    assert cluster.reasons() == ["Drifted", "AccuracyDegraded"]
    assert status["phase"] == "Stable"  # the rollout's status keys are not monitoring's

    await kube.merge_patch(
        kube.API_VERSION, "ModelDeployment", "iris", NS,
        {"spec": {"monitoring": {"enabled": False}}},
    )  # fmt: skip
    status = await evaluate()
    assert "monitoring" not in status
    assert all(c["type"] not in ("DriftDetected", "AccuracyDegraded") for c in status["conditions"])


async def test_a_configmap_of_the_same_name_that_is_not_ours_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
    serving_pods: tuple[int, MetricsPods],
    iris_model: Any,
) -> None:
    port, pods = serving_pods
    cluster = FakeKube().install(monkeypatch)
    h._windows.clear()
    cluster.add(
        {
            "apiVersion": kube.API_VERSION,
            "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": NS, "uid": "md-uid", "generation": 1},
            "spec": {"modelVersion": "iris-v1", "server": {"port": port}},
            "status": {"phase": "Stable", "stableVersion": "iris-v1"},
        }
    )
    theirs = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "iris-monitoring", "namespace": NS},
        "data": {"settings": "someone else's"},
    }
    cluster.add(theirs)
    cluster.add(md_pod("iris-stable-a", "127.0.0.1"))
    runner = start_pod(pods, "127.0.0.1", iris_model)
    send(pods, "127.0.0.1", runner, iris_model[2])
    status = await evaluate()
    assert status["monitoring"]["samples"] == 150
    kept = cluster.find("ConfigMap", "iris-monitoring")
    assert kept is not None and kept["data"] == {"settings": "someone else's"}
    assert ("apply", "ConfigMap", "iris-monitoring") not in cluster.writes


# --- The estimate of accuracy ---------------------------------------------------------------


def test_calibrated_confidence_estimates_accuracy_on_new_rows_of_the_same_distribution() -> None:
    """A real classifier, calibrated on its held-out rows by the trainer's own function;
    on fresh rows the server's confidence counts estimate the accuracy those rows get."""
    from sklearn.datasets import make_classification
    from sklearn.ensemble import RandomForestClassifier as Forest

    from orchard.artifacts.metadata import Calibration
    from orchard.trainer.evaluate import calibration

    x, y = make_classification(n_samples=6_000, n_features=8, n_informative=4, flip_y=0.1,
                               random_state=4)  # fmt: skip
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)])
    model = Forest(n_estimators=30, min_samples_leaf=5, random_state=0).fit(frame[:3000], y[:3000])
    calibrated = calibration(model, frame[3000:4500], pd.Series(y[3000:4500]))
    assert calibrated is not None and sum(calibrated["rows"]) == 1500
    bins = Calibration.model_validate(calibrated).bins()
    assert bins is not None
    runner = ModelRunner(model, [Column(c, "number") for c in frame.columns], "classification",
                         None, None, bins)  # fmt: skip
    fresh = frame[4500:].to_numpy()
    counts = runner.confidence_counts(fresh)
    window = {key(CONFIDENCE_BIN, bin=str(b)): float(n) for b, n in enumerate(counts)}
    baseline = {key(CONFIDENCE_ACCURACY, bin=str(b)): a for b, a in enumerate(bins.accuracy)}
    estimated, rows = mon.estimated_accuracy(window, baseline)
    actual = float(np.mean(model.predict(frame[4500:]) == y[4500:]))
    assert rows == 1500 and estimated is not None
    assert abs(estimated - actual) < 0.03, (estimated, actual)
    confidence = float(np.mean(model.predict_proba(frame[4500:]).max(axis=1)))
    assert abs(estimated - actual) < abs(confidence - actual) + 0.005  # no worse than raw


def test_a_bin_without_held_out_rows_says_what_a_calibrated_model_would() -> None:
    from orchard.artifacts.calibration import calibrate, estimate

    bins = calibrate([0.55, 0.55, 0.97, 0.97], [True, False, True, True])
    assert bins.rows == (0, 2, 0, 0, 0, 0, 2, 0)
    assert bins.accuracy[0] == 0.25  # empty: the middle of 0..0.5
    assert bins.accuracy[1] == round((1 + 2 * 0.55) / 4, 6)
    assert estimate([0] * 8, bins.accuracy) is None


async def test_a_canary_is_watched_apart_and_only_the_stable_version_is_judged(
    monkeypatch: pytest.MonkeyPatch,
    serving_pods: tuple[int, MetricsPods],
    iris_model: Any,
) -> None:
    port, pods = serving_pods
    cluster = FakeKube().install(monkeypatch)
    h._windows.clear()
    cluster.add(
        {
            "apiVersion": kube.API_VERSION,
            "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": NS, "uid": "md-uid", "generation": 2},
            "spec": {"modelVersion": "iris-v2", "server": {"port": port},
                     "monitoring": {"minSamples": 100}},
            "status": {"phase": "Progressing", "stableVersion": "iris-v1",
                       "canaryVersion": "iris-v2"},
        }
    )  # fmt: skip
    cluster.add(md_pod("iris-stable-a", "127.0.0.1"))
    cluster.add(md_pod("iris-canary-a", "127.0.0.2", "canary", "iris-v2"))
    stable, canary = (start_pod(pods, ip, iris_model) for ip in ("127.0.0.1", "127.0.0.2"))
    rows = iris_model[2]
    send(pods, "127.0.0.1", stable, rows)
    send(pods, "127.0.0.2", canary, rows.assign(petal_length=rows["petal_length"] + 3.0)[:100])
    status = await evaluate()
    assert drift_condition(status) == ("False", "NoDrift")  # the stable's 150 rows
    watched = status["monitoring"]
    assert (watched["version"], watched["samples"]) == ("iris-v1", 150)
    assert watched["canary"]["version"] == "iris-v2" and watched["canary"]["samples"] == 100
    assert watched["canary"]["inputs"][0]["feature"] == "petal_length"
    assert watched["canary"]["driftScore"] > 0.2
    assert "collection" not in watched  # nothing asked
    stored = cluster.find("ConfigMap", "iris-monitoring")
    assert stored is not None and set(json.loads(stored["data"]["window.json"])) == {
        "stable",
        "canary",
    }


def ready(status: str, reason: str) -> list[dict[str, Any]]:
    return [{"type": "Ready", "status": status, "reason": reason}]


@pytest.mark.parametrize(
    ("status", "watched"),
    [
        ({"stableVersion": "iris-v1", "conditions": ready("True", "Serving")}, True),
        # waiting for its first pods: nothing answers /metrics yet
        ({"stableVersion": "iris-v1", "conditions": ready("False", "Deploying")}, False),
        ({"stableVersion": "iris-v1", "conditions": ready("True", "ScaledToZero")}, False),
        ({"stableVersion": "iris-v1"}, False),
        ({"conditions": ready("True", "Serving")}, False),
    ],
)
async def test_only_a_deployment_whose_stable_pods_are_ready_is_evaluated(
    monkeypatch: pytest.MonkeyPatch, status: dict[str, Any], watched: bool
) -> None:
    """Thousands of deployments waiting for pods cost no request every interval."""
    reads: list[str] = []

    async def get(api_version: str, kind: str, *_: Any, **__: Any) -> None:
        reads.append(kind)

    monkeypatch.setattr(kube, "get", get)
    body = {"metadata": {"name": "iris", "namespace": NS}, "spec": {}, "status": status}
    await h.follow_monitoring(
        event={"type": "MODIFIED"}, body=body, namespace=NS, name="iris",
        spec=body["spec"], status=status, logger=log,
    )  # fmt: skip
    try:
        assert ((NS, "iris") in h._monitors) is watched
        await asyncio.sleep(0.05)  # a loop's first tick comes at once
        assert reads == (["ModelDeployment"] if watched else [])
    finally:
        h._monitors.stop((NS, "iris"))
