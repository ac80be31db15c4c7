"""The models of the three kinds: samples parse, round-trip, and bad input is refused."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from orchard.api import (
    Condition,
    ModelDeployment,
    ModelVersion,
    TrainingJob,
    get_condition,
    is_true,
    parse_duration,
    parse_timestamp,
    set_condition,
    to_k8s,
)
from orchard.api.common import Resource

SAMPLES = Path(__file__).resolve().parents[2] / "manifests" / "samples"
KIND_MODELS: dict[str, type[Resource]] = {
    "TrainingJob": TrainingJob,
    "ModelVersion": ModelVersion,
    "ModelDeployment": ModelDeployment,
}


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return data


@pytest.mark.parametrize("name", ["trainingjob.yaml", "modelversion.yaml", "modeldeployment.yaml"])
def test_sample_round_trips(name: str) -> None:
    obj = load(name)
    model = KIND_MODELS[obj["kind"]].model_validate(obj)
    wire = to_k8s(model)
    # camelCase on the wire, and parsing the output gives the same model back.
    assert wire["apiVersion"] == "orchard.dev/v1alpha1"
    assert type(model).model_validate(wire) == model
    # Everything the sample said survives (defaults may add more).
    assert _is_subset(obj["spec"], wire["spec"])


def _is_subset(small: Any, big: Any) -> bool:
    if isinstance(small, dict):
        return isinstance(big, dict) and all(
            k in big and _is_subset(v, big[k]) for k, v in small.items()
        )
    if isinstance(small, list):
        return isinstance(big, list) and len(small) == len(big) and all(map(_is_subset, small, big))
    return bool(small == big)


def test_snake_case_in_python_camel_case_on_the_wire() -> None:
    tj = TrainingJob.model_validate(load("trainingjob.yaml"))
    assert tj.spec.evaluation.cv_folds == 3
    assert tj.spec.dataset.checks is not None and tj.spec.dataset.checks.min_rows == 100
    assert tj.spec.estimator.task == "classification"
    assert tj.metadata.name == "iris"
    md = ModelDeployment.model_validate(load("modeldeployment.yaml"))
    assert md.spec.model_version == "iris-v1"
    assert [s.weight for s in md.spec.canary.steps] == [25, 50]
    assert to_k8s(md.spec)["modelVersion"] == "iris-v1"
    # populate_by_name: Python names work as input too.
    assert TrainingJob.model_validate(to_k8s(tj)).spec.evaluation.test_size == 0.25


def test_the_minimal_trainingjob_is_model_dataset_and_estimator() -> None:
    tj = TrainingJob.model_validate(
        {
            "kind": "TrainingJob",
            "metadata": {"name": "iris"},
            "spec": {
                "model": "iris",
                "dataset": {"builtin": "iris"},
                "estimator": {"name": "RandomForestClassifier"},
            },
        }
    )
    assert tj.spec.artifacts is None  # the operator's default store, or NoArtifactStore
    assert "artifacts" not in to_k8s(tj.spec)


def test_defaults_fill_in() -> None:
    md = ModelDeployment.model_validate(
        {"kind": "ModelDeployment", "metadata": {"name": "m"}, "spec": {"modelVersion": "m-v1"}}
    )
    assert md.spec.replicas == 2
    assert [(s.weight, s.pause) for s in md.spec.canary.steps] == [(25, "15s"), (50, "15s")]
    assert md.spec.canary.analysis.max_latency_p95 == "500ms"
    assert md.spec.traffic.mode == "replicas"
    assert md.status.phase is None and md.status.conditions == []


def _set(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value
    return out


_DELETE = object()

BAD: list[tuple[str, str, Any, str]] = [
    ("trainingjob.yaml", "spec.model", "Not_A_Label", "model"),
    ("trainingjob.yaml", "spec.dataset.uri", "https://example.invalid/x.csv", "exactly one"),
    ("trainingjob.yaml", "spec.dataset", {"uri": "file:///data/x.csv"}, "target is required"),
    ("trainingjob.yaml", "spec.estimator.name", "MagicForest", "estimator"),
    ("trainingjob.yaml", "spec.evaluation.cvFolds", 1, "cvFolds"),
    ("trainingjob.yaml", "spec.evaluation.testSize", 1.5, "testSize"),
    ("trainingjob.yaml", "spec.gate", {"metric": "accuracy"}, "at least one of min or max"),
    (
        "trainingjob.yaml",
        "spec.search",
        {
            "parameters": {"max_depth": [2, 4]},
            "maxTrials": 2,
            "parallelism": 3,
            "objective": {"metric": "accuracy"},
        },
        "parallelism",
    ),
    ("trainingjob.yaml", "spec.estimator.params", {"n_jobs": 100000}, "n_jobs must be"),
    ("trainingjob.yaml", "spec.estimator.params", {"n_jobs": 0}, "but 0 or null, not 0"),
    ("trainingjob.yaml", "spec.estimator.params", {"n_estimators": 0}, "n_estimators must"),
    ("trainingjob.yaml", "spec.estimator.params", {"max_depth": True}, "max_depth must"),
    ("trainingjob.yaml", "spec.estimator.params", {"max_iter": 10**6}, "max_iter must"),
    (
        "trainingjob.yaml",
        "spec.search",
        {
            "parameters": {"n_estimators": [10, 5000]},
            "maxTrials": 2,
            "objective": {"metric": "accuracy"},
        },
        "search.parameters: n_estimators must",
    ),
    ("trainingjob.yaml", "spec.artifacts.uri", "ftp://x/", "uri"),
    ("trainingjob.yaml", "spec.estimatorr", {"name": "SVC"}, "estimatorr"),
    ("modelversion.yaml", "spec.artifact.digest", "sha256:abc", "digest"),
    ("modelversion.yaml", "spec.version", 0, "version"),
    ("modelversion.yaml", "spec.task", "clustering", "task"),
    ("modeldeployment.yaml", "spec.replicas", 101, "replicas"),
    ("modeldeployment.yaml", "spec.canary.steps", [{"weight": 50}, {"weight": 25}], "increasing"),
    ("modeldeployment.yaml", "spec.canary.steps", [{"weight": 0}], "weight"),
    ("modeldeployment.yaml", "spec.canary.analysis.interval", "5 seconds", "interval"),
    ("modeldeployment.yaml", "spec.traffic", {"mode": "gatewayAPI"}, "httpRoute"),
    ("modeldeployment.yaml", "spec.modelVersion", _DELETE, "modelVersion"),
]


@pytest.mark.parametrize(("sample", "path", "value", "needle"), BAD)
def test_models_refuse_bad_input(sample: str, path: str, value: Any, needle: str) -> None:
    obj = _set(load(sample), path, value)
    with pytest.raises(ValidationError) as err:
        KIND_MODELS[obj["kind"]].model_validate(obj)
    assert needle in str(err.value)


def test_set_condition_moves_transition_time_only_on_change() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    t1 = datetime(2026, 1, 2, tzinfo=UTC)
    conds = set_condition([], "Ready", "False", "Pending", at=t0)
    conds = set_condition(conds, "Complete", "False", at=t0)
    same = set_condition(conds, "Ready", "False", "StillPending", "waiting", at=t1)
    assert [c.type for c in same] == ["Ready", "Complete"]
    ready = get_condition(same, "Ready")
    assert ready is not None and ready.last_transition_time == t0 and ready.reason == "StillPending"
    flipped = set_condition(same, "Ready", "True", "Done", generation=3, at=t1)
    ready = get_condition(flipped, "Ready")
    assert ready is not None and ready.last_transition_time == t1 and ready.observed_generation == 3
    assert is_true(flipped, "Ready") and not is_true(flipped, "Complete")
    assert not is_true(flipped, "Missing")
    wire = to_k8s(ready)
    assert wire["lastTransitionTime"] == "2026-01-02T00:00:00Z"
    assert Condition.model_validate(wire) == ready


@pytest.mark.parametrize(
    ("text", "seconds"), [("150ms", 0.15), ("30s", 30), ("2m", 120), ("1h30m", 5400), ("1.5s", 1.5)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5", "5 s", "-1s", "1d"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    "text", ["2026-11-27T10:00:00Z", "2026-11-27T10:00:00+00:00", "2026-11-27T10:00:00.000Z"]
)
def test_parse_timestamp_reads_what_the_api_server_writes(text: str) -> None:
    assert parse_timestamp(text) == datetime(2026, 11, 27, 10, tzinfo=UTC)


def test_parse_timestamp_refuses() -> None:
    with pytest.raises(ValueError):
        parse_timestamp("yesterday")


def test_estimator_enum_is_the_classifiers_and_regressors() -> None:
    """The CRD's enum (a Literal, so mypy and pydantic see it) and the task lists
    are written out separately; they must name the same estimators."""
    from typing import get_args

    from orchard.api.trainingjob import CLASSIFIERS, REGRESSORS, EstimatorName

    assert sorted(get_args(EstimatorName)) == sorted(CLASSIFIERS + REGRESSORS)


def test_estimator_params_within_their_bounds_and_others_pass() -> None:
    obj = load("trainingjob.yaml")
    obj["spec"]["estimator"]["params"] = {
        "n_jobs": -1,
        "n_estimators": 2000,
        "max_depth": None,
        "max_iter": 1,
        "criterion": "entropy",
    }
    tj = TrainingJob.model_validate(obj)
    assert tj.spec.estimator.params["criterion"] == "entropy"
    assert tj.spec.estimator.params["max_depth"] is None
