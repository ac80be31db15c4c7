"""A pod of a training Job started again after another finished keeps what that one
wrote: an artifact is never replaced under a ModelVersion that may pin it."""

from __future__ import annotations

import time
from pathlib import Path

from test_trainer_cli import TRAININGJOB

from orchard.api.trainingjob import TrainingJob
from orchard.trainer.train import train


def iris_job(name: str = "iris-a") -> TrainingJob:
    """The CLI tests' TrainingJob (namespace ml), under another name."""
    return TrainingJob.model_validate(
        {**TRAININGJOB, "metadata": {**TRAININGJOB["metadata"], "name": name}}
    )


def test_a_run_again_reports_the_artifact_the_first_wrote(tmp_path: Path) -> None:
    out = f"file://{tmp_path}/iris/run"
    first = train(iris_job(), out, keep_existing=True)
    written = (tmp_path / "iris" / "run" / "metadata.json").read_bytes()
    time.sleep(1.1)  # a second run would write another createdAt
    again = train(iris_job(), out, keep_existing=True)
    assert (tmp_path / "iris" / "run" / "metadata.json").read_bytes() == written
    assert again.digest == first.digest
    same = ("artifact_uri", "model", "task", "metrics", "framework", "dataset", "trial",
            "params", "gate", "inputs", "collected")  # fmt: skip
    assert {k: getattr(again, k) for k in same} == {k: getattr(first, k) for k in same}
    # Without the flag (a person running `orchard train` again) the run writes anew.
    fresh = train(iris_job(), out)
    assert fresh.digest != first.digest


def test_what_another_training_or_half_a_run_left_is_overwritten(tmp_path: Path) -> None:
    out = f"file://{tmp_path}/iris/run"
    theirs = train(iris_job("iris-b"), out, keep_existing=True)
    time.sleep(1.1)
    mine = train(iris_job("iris-a"), out, keep_existing=True)
    assert mine.digest != theirs.digest  # another TrainingJob's artifact is not this one's
    with (tmp_path / "iris" / "run" / "model.joblib").open("ab") as f:
        f.write(b"\0")  # half written: its digest no longer matches
    time.sleep(1.1)
    redone = train(iris_job("iris-a"), out, keep_existing=True)
    assert redone.digest != mine.digest
