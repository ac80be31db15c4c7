"""The validation gate: what decides whether a model may be registered."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from orchard.api.trainingjob import Gate, TrainingJob
from orchard.trainer.errors import GateFailed
from orchard.trainer.evaluate import check_gate, gate_verdict
from orchard.trainer.train import train


def gate(**kwargs: Any) -> Gate:
    return Gate.model_validate(kwargs)


def test_bounds() -> None:
    check_gate(gate(metric="accuracy", min=0.9), {"accuracy": 0.9})
    check_gate(gate(metric="rmse", max=10), {"rmse": 9.5})
    check_gate(gate(metric="r2", min=0.1, max=0.9), {"r2": 0.5})
    with pytest.raises(GateFailed) as info:
        check_gate(gate(metric="accuracy", min=0.95), {"accuracy": 0.93})
    err = info.value
    assert err.message == "accuracy = 0.93, but the gate requires >= 0.95"
    assert err.to_dict() == {
        "reason": "GateFailed",
        "message": err.message,
        "metric": "accuracy",
        "value": 0.93,
        "min": 0.95,
    }
    with pytest.raises(GateFailed, match="<= 10"):
        check_gate(gate(metric="rmse", max=10), {"rmse": 11.0})


def test_a_metric_that_was_not_computed_fails() -> None:
    with pytest.raises(GateFailed, match="'f1' was not computed; metrics: accuracy"):
        check_gate(gate(metric="f1", min=0.5), {"accuracy": 1.0})
    assert gate_verdict(gate(metric="f1", min=0.5), {})["passed"] is False


def make_job(tmp_path: Path, **gate_spec: Any) -> TrainingJob:
    return TrainingJob.model_validate(
        {
            "spec": {
                "model": "wine",
                "dataset": {"builtin": "wine"},
                "estimator": {"name": "DecisionTreeClassifier", "params": {"max_depth": 1}},
                "gate": gate_spec,
                "artifacts": {"uri": f"file://{tmp_path}"},
            }
        }
    )


def test_a_failed_gate_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(GateFailed, match=r"accuracy = 0\.\d+, but the gate requires >= 0.99"):
        train(make_job(tmp_path, metric="accuracy", min=0.99), f"file://{tmp_path}/out")
    assert not (tmp_path / "out").exists()


def test_a_passed_gate_is_reported(tmp_path: Path) -> None:
    result = train(make_job(tmp_path, metric="log_loss", max=5.0), f"file://{tmp_path}/out")
    assert result.gate["passed"] is True
    assert result.gate["max"] == 5.0
    assert (tmp_path / "out" / "metadata.json").exists()
