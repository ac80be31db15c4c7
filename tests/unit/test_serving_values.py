"""Values no model should be asked to score are the client's error, refused before the model.

A number beyond float32's range (1e308, where scikit-learn's trees raise), a literal too
large for a double, or a value of the wrong type for its column is a 400 `invalid_value`:
counted as a client error, never as the served version's, so it cannot roll a canary
back. A model that raises on rows that passed validation stays a 500: the version's fault.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from test_serving_support import app_for, iris_artifact, mixed_artifact, running_server

from orchard.decisions import analysis as an
from orchard.decisions import metrics_text as mt
from orchard.serving.app import App
from orchard.serving.artifact import Column
from orchard.serving.inputs import BadRequest, InvalidValue, Schema
from orchard.serving.limits import MAX_ABS_VALUE

SETTINGS = an.Settings(min_requests=20, max_error_rate=0.05, max_latency_p95_s=0.5)
NUMERIC = Schema([Column(n, "number") for n in ("a", "b")])
MIXED = Schema([Column("x", "number"), Column("s", "string")])


@pytest.fixture(scope="module")
def penguins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, App]]:
    """A pipeline ending in a decision tree: it casts to float32 and raises beyond it."""
    app = app_for(mixed_artifact(tmp_path_factory.mktemp("mixed") / "m"), "penguins")
    with running_server(app) as base:
        yield base, app


def window(base: str) -> an.TrackWindow:
    return an.track_window(mt.parse_scrape(httpx.get(f"{base}/metrics").text))


GOOD = {"island": "Dream", "sex": "male", "bill_length_mm": 50.0, "flipper_length_mm": 195}


def v2_body(bill: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "bill_length_mm", "shape": [1], "datatype": "FP64", "data": [bill]},
            {"name": "flipper_length_mm", "shape": [1], "datatype": "FP64", "data": [195.0]},
            {"name": "island", "shape": [1], "datatype": "BYTES", "data": ["Dream"]},
            {"name": "sex", "shape": [1], "datatype": "BYTES", "data": ["male"]},
        ]
    }


def test_extreme_value_is_a_client_error_not_a_rollback(penguins: tuple[str, App]) -> None:
    """Two requests with 1e308 used to be two 500s: a failed canary at minRequests 20."""
    base, _ = penguins
    before = window(base)
    for _ in range(18):
        ok = httpx.post(f"{base}/v1/models/penguins:predict", json={"instances": [GOOD]})
        assert ok.status_code == 200, ok.text
    v1 = httpx.post(
        f"{base}/v1/models/penguins:predict", json={"instances": [GOOD | {"bill_length_mm": 1e308}]}
    )
    v2 = httpx.post(f"{base}/v2/models/penguins/infer", json=v2_body(1e308))
    for r in (v1, v2):
        assert r.status_code == 400, r.text
        assert r.headers["content-type"] == "application/json"
        assert "1e+308 is beyond" in r.json()["error"]
    scrape = mt.parse_scrape(httpx.get(f"{base}/metrics").text)
    for endpoint in ("v1_predict", "v2_infer"):
        key = (
            "orchard_request_errors_total",
            (("endpoint", endpoint), ("reason", "invalid_value")),
        )
        assert scrape[key] >= 1
    after = window(base)
    canary = an.TrackWindow(
        requests=after.requests - before.requests,
        errors=after.errors - before.errors,
        latency_buckets=after.latency_buckets,
    )
    assert (canary.requests, canary.errors) == (20, 0)
    assert an.evaluate(canary, None, SETTINGS).verdict == "Pass"


def test_huge_json_literal_is_an_invalid_value_not_malformed(penguins: tuple[str, App]) -> None:
    """1e400 parses to no double at all: the client's invalid value, not a server error."""
    base, _ = penguins
    body = b'{"instances": [{"island": "Dream", "sex": "male", "bill_length_mm": 1e400, "flipper_length_mm": 1}]}'  # noqa: E501
    r = httpx.post(f"{base}/v1/models/penguins:predict", content=body)
    assert r.status_code == 400
    assert "beyond a double's range" in r.json()["error"]


def test_a_model_raising_on_valid_input_is_still_the_versions_error(
    tmp_path: Path,
) -> None:
    """Validation must not hide a broken version: raising where the stable answers fails it."""

    class Broken:
        def predict(self, rows: Any) -> Any:
            raise RuntimeError("this version cannot predict")

    app = app_for(iris_artifact(tmp_path / "iris"), "iris")
    with running_server(app) as base:
        assert app.runner is not None
        app.runner.model = Broken()
        app.runner.native = None  # the pipeline answers, not its ONNX graph
        for _ in range(20):
            r = httpx.post(
                f"{base}/v1/models/iris:predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}
            )
            assert r.status_code == 500
            assert r.json()["error"].startswith("prediction failed: RuntimeError")
        verdict = an.evaluate(window(base), None, SETTINGS)
    assert (verdict.verdict, verdict.reason) == ("Fail", "ErrorRate")


# --- the checks themselves, on the schema -----------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [1e308, -1e308, 3.5e38, -3.5e38, float("inf"), float("-inf"), 10**39],
    ids=["1e308", "-1e308", "just beyond float32", "just below -float32", "inf", "-inf", "int"],
)
def test_numbers_beyond_float32_are_refused_before_the_model(value: float) -> None:
    for parse in (
        lambda: NUMERIC.parse_v1({"instances": [[1.0, value]]}),
        lambda: NUMERIC.parse_v1({"instances": [{"a": 1.0, "b": value}]}),
        lambda: NUMERIC.parse_v2(
            {"inputs": [{"name": "t", "shape": [1, 2], "datatype": "FP64", "data": [1.0, value]}]}
        ),
        lambda: MIXED.parse_v1({"instances": [[value, "s"]]}),
    ):
        with pytest.raises(InvalidValue, match="beyond"):
            parse()


def test_float32_range_and_null_are_accepted() -> None:
    rows, n = NUMERIC.parse_v1({"instances": [[MAX_ABS_VALUE, -MAX_ABS_VALUE], [None, 0.0]]})
    assert n == 2
    assert isinstance(rows, np.ndarray)
    assert rows[0].tolist() == [MAX_ABS_VALUE, -MAX_ABS_VALUE]
    assert np.isnan(rows[1, 0])  # null is the missing-value marker, and stays allowed


@pytest.mark.parametrize(
    ("schema", "body"),
    [
        (NUMERIC, {"instances": [["1", 2]]}),
        (NUMERIC, {"instances": [[{"x": 1}, 2]]}),
        (NUMERIC, {"instances": [{"a": "1", "b": 2}]}),
        (MIXED, {"instances": [[1.0, 7]]}),
        (MIXED, {"instances": [[1.0, True]]}),
        (NUMERIC, {"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["1"]},
                              {"name": "b", "shape": [1], "datatype": "FP64", "data": [1]}]}),
        (MIXED, {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]},
                            {"name": "s", "shape": [1], "datatype": "FP64", "data": [1]}]}),
    ],
    ids=["string for number", "object for number", "string in object row", "number for string",
         "bool for string", "BYTES tensor for a number", "FP64 tensor for a string"],
)  # fmt: skip
def test_wrong_type_for_the_schema_is_an_invalid_value(schema: Schema, body: Any) -> None:
    parse = schema.parse_v2 if "inputs" in body else schema.parse_v1
    with pytest.raises(InvalidValue):
        parse(body)


def test_error_messages_quote_client_values_briefly() -> None:
    """A 600 KB string in the wrong place gives a one-line message, not a 600 KB one."""
    with pytest.raises(InvalidValue) as err:
        NUMERIC.parse_v1({"instances": [["x" * 600_000, 1]]})
    assert len(str(err.value)) < 200
    with pytest.raises(BadRequest) as err:
        NUMERIC.parse_v1({"instances": [{"a": 1, "b": 2, "y" * 600_000: 3}]})
    assert len(str(err.value)) < 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": [], "data": [1, 2, 3, 4]}]}',
        b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": {}, "data": [1, 2, 3, 4]}]}',
        b'{"inputs": [{"name": "island", "shape": [1], "datatype": "BYTES", "data": '
        + b"[" * 1000 + b'"Dream"' + b"]" * 1000 + b"}]}",
        b'{"instances": [' + b"[" * 1020 + b"1" + b"]" * 1020 + b"]}",
        b'{"inputs": [{"name": "t", "shape": [1, 4], "datatype": "BYTES", "data": [[[[1]]], 2, 3, "a"]}]}',  # noqa: E501
        b'{"instances": [{"island": ["Dream"], "sex": "male", "bill_length_mm": 1, "flipper_length_mm": 2}]}',  # noqa: E501
        b'{"instances": [{"island": "Dream", "sex": "male", "bill_length_mm": [1, 2], "flipper_length_mm": 2}]}',  # noqa: E501
        b'{"inputs": [{"name": "t", "shape": [1, 4], "datatype": "BYTES", "data": [1, 2, 3, 4]}], "id": 7}',  # noqa: E501
    ],
    ids=["list datatype", "object datatype", "strings nested 1000 deep", "rows nested 1020 deep",
         "nested scalar", "list for a string", "list for a number", "number for a string"],
)  # fmt: skip
def test_odd_bodies_are_client_errors_never_server_errors(
    penguins: tuple[str, App], body: bytes
) -> None:
    base, _ = penguins
    for path in ("/v2/models/penguins/infer", "/v1/models/penguins:predict"):
        r = httpx.post(f"{base}{path}", content=body)
        assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
        assert "error" in r.json()
