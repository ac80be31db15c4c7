"""No error quotes the dataset: not pandas' parse errors, not the data checks, not
scikit-learn's messages. A message names what the spec named, and counts; the file's
other text stays in the file (it may be a pod's environment, or a credentials file)."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from orchard.api.trainingjob import DataChecks
from orchard.cli import main
from orchard.trainer.checks import run_checks
from orchard.trainer.data import parse_table
from orchard.trainer.errors import DataCheckFailed, DatasetUnavailable, without_data

FAKE = "AWS_SECRET_ACCESS_KEY=hunter2"


def train_file(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    content: bytes,
    name: str = "data.csv",
    **dataset: Any,
) -> dict[str, Any]:
    """`orchard train` (in process) on a file; the error it reports, after checking that
    the fake secret is in neither its result, its termination message nor its log."""
    (tmp_path / name).write_bytes(content)
    job = {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "tj"},
        "spec": {
            "model": "m",
            "dataset": {"uri": f"file://{tmp_path}/{name}", "target": "species", **dataset},
            "estimator": {"name": "LogisticRegression", "params": {"max_iter": 50}},
            "artifacts": {"uri": f"file://{tmp_path}/art"},
        },
    }
    log = tmp_path / "termination-log"
    monkeypatch.setenv("ORCHARD_TERMINATION_LOG", str(log))
    monkeypatch.setattr(sys, "stdin", io.StringIO(json.dumps(job)))
    assert main(["train", "-f", "-"]) == 1
    out, err = capsys.readouterr()
    for text in (out, err, log.read_text()):
        assert "hunter2" not in text
    error: dict[str, Any] = json.loads(out)["error"]
    return error


def test_parse_error_does_not_echo_file_contents(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    malformed = f"species,x\na,1\n{FAKE},2,3\n".encode()
    error = train_file(tmp_path, monkeypatch, capsys, malformed)
    assert error["reason"] == "DatasetUnavailable"
    assert error["message"] == (
        f"cannot parse file://{tmp_path}/data.csv as csv: "
        "the file is malformed near line 3 (ParserError)"
    )
    error = train_file(tmp_path, monkeypatch, capsys, FAKE.encode(), "x.parquet")
    assert error["reason"] == "DatasetUnavailable"
    assert "as parquet: the file is malformed" in error["message"]
    error = train_file(tmp_path, monkeypatch, capsys, b"", "empty.csv")
    assert error["message"].endswith("as csv: the file is empty")


def test_a_library_message_quoting_the_file_is_not_passed_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def quoting(*_: Any, **__: Any) -> pd.DataFrame:
        raise ValueError(f"invalid literal for int() with base 10: '{FAKE}'")

    monkeypatch.setattr(pd, "read_csv", quoting)
    with pytest.raises(DatasetUnavailable) as info:
        parse_table(b"whatever", "csv", "file:///d.csv")
    assert (
        info.value.message
        == "cannot parse file:///d.csv as csv: the file is malformed (ValueError)"
    )


def test_missing_target_does_not_list_the_columns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    environ_like = f"HOME=/tmp\0{FAKE}\0PATH=/bin,LANG=C\0".encode()
    error = train_file(tmp_path, monkeypatch, capsys, environ_like)
    assert error == {
        "reason": "DataCheckFailed",
        "message": "target column 'species' (dataset.target) is not among the file's 2 columns",
        "check": "targetPresent",
        "column": "species",
    }


LABELS = pd.DataFrame(
    {
        "species": ["Adelie", FAKE, "Adelie", FAKE],
        "x": [1.0, 2.0, 3.0, 4.0],
        FAKE.lower(): [None, None, None, 1.0],
    }
)


@pytest.mark.parametrize(
    ("frame", "checks", "message", "column"),
    [
        (
            LABELS,
            {"allowedLabels": ["Adelie"]},
            "column 'species' has 1 label outside allowedLabels ('Adelie'), in 2 rows",
            "species",
        ),
        (
            LABELS.assign(species=FAKE),
            {},
            "target column 'species' has a single class in its 4 labelled rows; "
            "a classifier needs at least two",
            "species",
        ),
        (
            LABELS,
            {"maxMissingFraction": 0.5},
            "the file's column 3 (not named in the spec, so shown by position) has 75.0% "
            "missing values, more than maxMissingFraction 0.5",
            None,
        ),
    ],
)
def test_check_failures_do_not_echo_values(
    frame: pd.DataFrame, checks: dict[str, Any], message: str, column: str | None
) -> None:
    with pytest.raises(DataCheckFailed) as info:
        run_checks(frame, "species", None, DataChecks.model_validate(checks), "classification")
    assert info.value.message == message
    assert info.value.column == column
    assert "hunter2" not in json.dumps(info.value.to_dict())


def test_a_column_the_spec_named_is_named() -> None:
    with pytest.raises(DataCheckFailed, match="column 'aws_secret_access_key=hunter2' has 75"):
        run_checks(
            LABELS,
            "species",
            ["x", FAKE.lower()],
            DataChecks(max_missing_fraction=0.5),
            "classification",
        )


def test_fit_failure_does_not_echo_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from sklearn.pipeline import Pipeline

    def failing(self: Pipeline, *_: Any, **__: Any) -> Pipeline:
        raise ValueError(f"could not convert string to float: '{FAKE}' ('max_iter' is fine)")

    monkeypatch.setattr(Pipeline, "fit", failing)
    csv = "species,x\n" + "".join(f"{'ab'[i % 2]},{i}\n" for i in range(40))
    error = train_file(tmp_path, monkeypatch, capsys, csv.encode())
    assert error == {
        "reason": "TrainingError",
        "message": "fitting LogisticRegression failed: could not convert string to float: "
        "'...' ('max_iter' is fine)",
    }


def test_an_unexpected_error_does_not_echo_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import orchard.trainer.train

    def failing(*_: Any) -> None:
        raise KeyError(FAKE)

    monkeypatch.setattr(orchard.trainer.train, "load_dataset", failing)
    error = train_file(tmp_path, monkeypatch, capsys, b"species\na\n")
    assert error == {"reason": "TrainingError", "message": "KeyError: '...'"}


def test_without_data_keeps_what_the_spec_named() -> None:
    message = "n_neighbors='auto' is invalid for 'x'; got np.str_('secret') and \"secret\""
    assert without_data(message, ["n_neighbors", "auto"]) == (
        "n_neighbors='auto' is invalid for '...'; got '...' and '...'"
    )
    assert without_data("doesn't take 'secret'") == "doesn't take '...'"
    assert len(without_data("x" * 1000)) == 300
