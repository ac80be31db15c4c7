"""The server over real HTTP on loopback: V1 and V2 bodies, metadata, and every error path."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from test_serving_support import (
    app_for,
    iris_artifact,
    mixed_artifact,
    mixed_frame,
    regression_artifact,
    running_server,
)

from orchard.serving.app import App
from orchard.serving.runtime import PROBABILITY_TOLERANCE as TOLERANCE


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("artifacts")
    return {
        "iris": iris_artifact(root / "iris"),
        "mixed": mixed_artifact(root / "mixed"),
        "diabetes": regression_artifact(root / "diabetes"),
    }


@pytest.fixture(scope="module")
def iris(artifacts: dict[str, Path]) -> Iterator[tuple[str, Any]]:
    with running_server(app_for(artifacts["iris"], "iris", version="3")) as base:
        yield base, joblib.load(artifacts["iris"] / "model.joblib")


@pytest.fixture(scope="module")
def penguins(artifacts: dict[str, Path]) -> Iterator[tuple[str, Any]]:
    with running_server(app_for(artifacts["mixed"], "penguins")) as base:
        yield base, joblib.load(artifacts["mixed"] / "model.joblib")


IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]]


def tensor(
    data: Any, shape: list[int], name: str = "input-0", datatype: str = "FP32"
) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": datatype, "data": data}


# --- V2 -------------------------------------------------------------------------------------


def test_v2_two_d_tensor_flat_and_nested(iris: tuple[str, Any]) -> None:
    base, model = iris
    want = model.predict(np.array(IRIS_ROWS)).tolist()
    flat = [v for row in IRIS_ROWS for v in row]
    for data in (flat, IRIS_ROWS):
        r = httpx.post(
            f"{base}/v2/models/iris/infer", json={"id": "r-1", "inputs": [tensor(data, [3, 4])]}
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model_name"] == "iris"
        assert body["model_version"] == "3"
        assert body["id"] == "r-1"
        (out,) = body["outputs"]
        assert out["name"] == "output-0"
        assert out["shape"] == [3]
        assert out["datatype"] == "INT64"
        assert out["data"] == want
    assert want == [0, 1, 2]


def test_v2_versioned_path(iris: tuple[str, Any]) -> None:
    base, _ = iris
    body = {"inputs": [tensor(IRIS_ROWS[0], [1, 4])]}
    assert httpx.post(f"{base}/v2/models/iris/versions/3/infer", json=body).status_code == 200
    assert httpx.post(f"{base}/v2/models/iris/versions/9/infer", json=body).status_code == 404


def test_v2_named_inputs_with_categories_and_missing_values(penguins: tuple[str, Any]) -> None:
    base, model = penguins
    frame, _ = mixed_frame(n=12, seed=3)
    frame = frame.iloc[:12]
    assert frame.isna().any().any()  # the rows carry missing numbers and strings

    def column(name: str) -> list[Any]:
        return [
            None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in frame[name]
        ]

    inputs = [
        tensor(column("bill_length_mm"), [12], "bill_length_mm", "FP64"),
        tensor([[v] for v in column("flipper_length_mm")], [12, 1], "flipper_length_mm", "FP64"),
        tensor(column("island"), [12], "island", "BYTES"),
        tensor(column("sex"), [12], "sex", "BYTES"),
    ]
    r = httpx.post(f"{base}/v2/models/penguins/infer", json={"inputs": inputs[::-1]})
    assert r.status_code == 200, r.text
    (out,) = r.json()["outputs"]
    assert out["datatype"] == "BYTES"
    assert out["data"] == model.predict(frame).tolist()


def test_v2_one_tensor_of_mixed_columns(penguins: tuple[str, Any]) -> None:
    base, model = penguins
    rows = [[40.1, 190.0, "Dream", None], [None, 220.0, "Biscoe", "male"]]
    r = httpx.post(
        f"{base}/v2/models/penguins/infer",
        json={"inputs": [tensor(rows, [2, 4], datatype="BYTES")]},
    )
    assert r.status_code == 200, r.text
    import pandas as pd

    frame = pd.DataFrame(rows, columns=["bill_length_mm", "flipper_length_mm", "island", "sex"])
    frame = frame.astype({"bill_length_mm": float, "sex": object}).fillna({"sex": np.nan})
    assert r.json()["outputs"][0]["data"] == model.predict(frame).tolist()


def test_regression_outputs_fp64(artifacts: dict[str, Path]) -> None:
    model = joblib.load(artifacts["diabetes"] / "model.joblib")
    x = np.linspace(-0.05, 0.05, 20).reshape(2, 10)
    with running_server(app_for(artifacts["diabetes"], "diabetes")) as base:
        r = httpx.post(
            f"{base}/v2/models/diabetes/infer", json={"inputs": [tensor(x.tolist(), [2, 10])]}
        )
        assert r.status_code == 200, r.text
        out = r.json()["outputs"][0]
        assert out["datatype"] == "FP64"
        assert out["data"] == pytest.approx(model.predict(x).tolist())
        metrics = httpx.get(f"{base}/metrics").text
        assert "orchard_prediction_value_count 2" in metrics
        predicted = model.predict(x)
        for le in ("100", "250", "500"):
            below = int(sum(predicted <= float(le)))
            assert f'orchard_prediction_value_bucket{{le="{le}"}} {below}' in metrics
        assert "orchard_predictions_total" not in metrics


# --- V1 -------------------------------------------------------------------------------------


def test_v1_lists_in_schema_order(iris: tuple[str, Any]) -> None:
    base, model = iris
    r = httpx.post(f"{base}/v1/models/iris:predict", json={"instances": IRIS_ROWS})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["predictions"] == model.predict(np.array(IRIS_ROWS)).tolist()
    assert set(answer) == {"predictions", "id"} and len(answer["id"]) == 36  # a generated id
    echoed = httpx.post(f"{base}/v1/models/iris:predict", json={"instances": IRIS_ROWS, "id": "r1"})
    assert echoed.json()["id"] == "r1"


def test_v1_objects_by_column_name(penguins: tuple[str, Any]) -> None:
    base, model = penguins
    instances = [
        {"island": "Dream", "sex": None, "bill_length_mm": 50.0, "flipper_length_mm": 195},
        {"island": "Torgersen", "sex": "female", "bill_length_mm": None, "flipper_length_mm": 180},
    ]
    r = httpx.post(f"{base}/v1/models/penguins:predict", json={"instances": instances})
    assert r.status_code == 200, r.text
    import pandas as pd

    frame = pd.DataFrame(instances)[["bill_length_mm", "flipper_length_mm", "island", "sex"]]
    frame = frame.astype({"bill_length_mm": float}).fillna({"sex": np.nan})
    assert r.json()["predictions"] == model.predict(frame).tolist()


# --- metadata and health ----------------------------------------------------------------------


def test_metadata_and_health(iris: tuple[str, Any]) -> None:
    base, _ = iris
    assert httpx.get(f"{base}/v2/health/live").json() == {"live": True}
    assert httpx.get(f"{base}/v2/health/ready").json() == {"ready": True}
    assert httpx.get(f"{base}/v2/models/iris/ready").json() == {"name": "iris", "ready": True}
    assert httpx.get(f"{base}/v2").json()["name"] == "orchard"
    meta = httpx.get(f"{base}/v2/models/iris").json()
    assert meta["name"] == "iris"
    assert meta["versions"] == ["3"]
    assert [i["name"] for i in meta["inputs"]] == [
        "sepal_length",
        "sepal_width",
        "petal_length",
        "petal_width",
    ]
    assert meta["outputs"] == [
        {"name": "output-0", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3],
         "parameters": {"classes": [0, 1, 2]}},
    ]  # fmt: skip
    assert httpx.get(f"{base}/v1/models/iris").json() == {"name": "iris", "ready": True}
    assert httpx.get(f"{base}/v1/models").json() == {"models": ["iris"]}
    assert httpx.get(f"{base}/").json() == {"status": "alive"}  # KServe's V1 liveness
    assert httpx.get(f"{base}/v2/").json() == httpx.get(f"{base}/v2").json()
    assert httpx.get(f"{base}/v2").json()["extensions"] == ["binary_tensor_data"]


# --- requested outputs ----------------------------------------------------------------------


def test_v2_outputs_are_what_was_asked(iris: tuple[str, Any]) -> None:
    base, model = iris
    x = np.asarray(IRIS_ROWS)
    url = f"{base}/v2/models/iris/infer"
    body = {"inputs": [tensor(IRIS_ROWS, [3, 4])], "outputs": [{"name": "predict_proba"}]}
    out = httpx.post(url, json=body).json()["outputs"]
    assert [o["name"] for o in out] == ["predict_proba"]
    assert out[0]["shape"] == [3, 3] and out[0]["datatype"] == "FP64"
    assert out[0]["parameters"] == {"classes": [0, 1, 2]}
    np.testing.assert_allclose(
        np.reshape(out[0]["data"], (3, 3)), model.predict_proba(x), atol=TOLERANCE
    )
    body["outputs"] = [{"name": "predict"}, {"name": "output-0"}]
    out = httpx.post(url, json=body).json()["outputs"]
    assert [(o["name"], o["data"]) for o in out] == [
        ("predict", [0, 1, 2]),
        ("output-0", [0, 1, 2]),
    ]
    for outputs, message in [
        ([{"name": "proba"}], "unknown output 'proba': this model answers output-0, predict, "
                              "predict_proba"),
        ([{"name": "predict_proba"}] * 2, "output 'predict_proba' is asked for twice"),
        ({"name": "predict"}, "'outputs' must be a list"),
        ([{"name": "predict", "parameters": {"binary_data": "yes"}}], "'binary_data' must be"),
    ]:  # fmt: skip
        r = httpx.post(url, json=body | {"outputs": outputs})
        assert r.status_code == 400, outputs
        assert message in r.json()["error"]


def test_v1_outputs_by_request_parameter(iris: tuple[str, Any]) -> None:
    base, model = iris
    url = f"{base}/v1/models/iris:predict"
    both = {"instances": IRIS_ROWS, "parameters": {"outputs": ["predictions", "probabilities"]}}
    answer = httpx.post(url, json=both).json()
    assert answer["predictions"] == [0, 1, 2] and answer["classes"] == [0, 1, 2]
    np.testing.assert_allclose(
        answer["probabilities"], model.predict_proba(np.asarray(IRIS_ROWS)), atol=TOLERANCE
    )
    only = httpx.post(url, json=both | {"parameters": {"outputs": ["probabilities"]}}).json()
    assert sorted(only) == ["classes", "id", "probabilities"]
    r = httpx.post(url, json=both | {"parameters": {"outputs": ["predict_proba"]}})
    assert r.status_code == 400
    assert r.json()["error"] == (
        "unknown output 'predict_proba': this model answers predictions, probabilities"
    )


def test_probabilities_of_a_regression_are_a_400(artifacts: dict[str, Path]) -> None:
    with running_server(app_for(artifacts["diabetes"], "diabetes")) as base:
        meta = httpx.get(f"{base}/v2/models/diabetes").json()
        assert [o["name"] for o in meta["outputs"]] == ["output-0"]
        body = {"inputs": [tensor([0.0] * 10, [1, 10])], "outputs": [{"name": "predict_proba"}]}
        r = httpx.post(f"{base}/v2/models/diabetes/infer", json=body)
        assert r.status_code == 400
        assert r.json()["error"] == (
            "output 'predict_proba' is not available: this model has no class probabilities"
        )


# --- ids, binary tensors, compressed bodies -------------------------------------------------


@pytest.mark.parametrize("request_id", [7, 1.5, True, ["a"], {"a": 1}])
def test_an_id_that_is_not_a_string_is_a_400(iris: tuple[str, Any], request_id: Any) -> None:
    base, _ = iris
    v2 = {"id": request_id, "inputs": [tensor(IRIS_ROWS, [3, 4])]}
    v1 = {"id": request_id, "instances": IRIS_ROWS}
    for path, body in [("/v2/models/iris/infer", v2), ("/v1/models/iris:predict", v1)]:
        r = httpx.post(f"{base}{path}", json=body)
        assert r.status_code == 400, path
        assert r.json()["error"].startswith("'id' must be a string")


def binary_body(
    head: dict[str, Any], raw: bytes, header_length: int | None = None
) -> tuple[bytes, dict[str, str]]:
    text = json.dumps(head).encode()
    length = len(text) if header_length is None else header_length
    return text + raw, {"inference-header-content-length": str(length)}


def test_binary_tensors_that_do_not_match_their_header_are_a_400(iris: tuple[str, Any]) -> None:
    base, _ = iris
    raw = np.asarray(IRIS_ROWS, dtype="<f4").tobytes()  # 48 bytes

    def t(size: Any, **extra: Any) -> dict[str, Any]:
        return {"inputs": [{"name": "x", "shape": [3, 4], "datatype": "FP32",
                            "parameters": {"binary_data_size": size}, **extra}]}  # fmt: skip

    good, headers = binary_body(t(48), raw)
    r = httpx.post(f"{base}/v2/models/iris/infer", content=good, headers=headers)
    assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [0, 1, 2]
    for (body, hdrs), message in [
        (binary_body(t(48), raw, header_length=10_000), "the body has only"),
        (binary_body(t(40), raw), "add up to 40"),
        (binary_body(t(56), raw), "goes past the end"),
        (binary_body(t(48), raw + b"\0" * 8), "add up to 48"),
        (binary_body(t(-1), raw), "non-negative integer"),
        (binary_body(t(48, data=[1]), raw), "both 'data' and binary_data_size"),
        (binary_body(t(32), raw[:32]), "32 bytes do not hold 12 FP32 values"),
        ((good, {"inference-header-content-length": "ten"}), "must be a byte count"),
    ]:  # fmt: skip
        r = httpx.post(f"{base}/v2/models/iris/infer", content=body, headers=hdrs)
        assert r.status_code == 400, message
        assert message in r.json()["error"]


def test_compressed_request_bodies(iris: tuple[str, Any]) -> None:
    import gzip
    import zlib

    base, _ = iris
    url = f"{base}/v2/models/iris/infer"
    body = json.dumps({"inputs": [tensor(IRIS_ROWS, [3, 4])]}).encode()
    raw_deflate = zlib.compressobj(wbits=-15)
    for coding, packed in [
        ("gzip", gzip.compress(body)), ("deflate", zlib.compress(body)),
        ("deflate", raw_deflate.compress(body) + raw_deflate.flush()), ("identity", body),
    ]:  # fmt: skip
        r = httpx.post(url, content=packed, headers={"content-encoding": coding})
        assert r.status_code == 200, (coding, r.text)
        assert r.json()["outputs"][0]["data"] == [0, 1, 2]
    feedback = {"id": r.json()["id"], "labels": [0, 1, 2]}
    r = httpx.post(
        f"{base}/v2/models/iris/feedback", content=gzip.compress(json.dumps(feedback).encode()),
        headers={"content-encoding": "gzip"},
    )  # fmt: skip
    assert r.json() == {"accepted": 3}
    bomb = gzip.compress(b" " * (16 * 1024 * 1024 + 1))  # about 16 KB, over the body cap
    for packed, coding, status, message in [
        (bomb, "gzip", 413, "body decompresses to more than 16777216 bytes"),
        (body, "br", 415, "Content-Encoding 'br' is not supported"),
        (body, "gzip", 400, "body is not valid gzip data"),
        (gzip.compress(body)[:-12], "gzip", 400, "ends before its end of stream"),
        (gzip.compress(body) + b"x", "gzip", 400, "data after the end"),
    ]:  # fmt: skip
        r = httpx.post(url, content=packed, headers={"content-encoding": coding})
        assert r.status_code == status, message
        assert r.headers["content-type"] == "application/json"
        assert message in r.json()["error"]
    metrics = httpx.get(f"{base}/metrics").text
    assert 'reason="unsupported_encoding"' in metrics


# --- errors ---------------------------------------------------------------------------------


def one(shape: Any, data: Any, datatype: str = "FP32", name: str = "x") -> bytes:
    """A V2 body with one tensor."""
    return json.dumps({"inputs": [tensor(data, shape, name, datatype)]}).encode()


QUAD = [1, 2, 3, 4]
BAD_V2 = [
    ("not json", b"{nope", "malformed JSON"),
    ("not an object", b"[1, 2]", "JSON object"),
    ("no inputs", b'{"inputs": []}', "non-empty"),
    ("tensor not an object", b'{"inputs": [3]}', "must be an object"),
    ("no name", b'{"inputs": [{"shape": [1, 4], "datatype": "FP32", "data": [1]}]}', "'name'"),
    ("bad shape", one("1x4", QUAD), "shape"),
    ("1-D shape", one([4], QUAD), "2-D"),
    ("wrong width", one([1, 3], [1, 2, 3]), "3 columns"),
    ("short data", one([2, 4], QUAD), "do not fill"),
    ("unknown datatype", one([1, 4], QUAD, "FP99"), "datatype"),
    ("strings", one([1, 4], ["a", "b", "c", "d"]), "expected numbers"),
    ("bytes for numbers", one([1, 4], QUAD, "BYTES"), "BYTES"),
    ("ragged rows", one([2, 4], [QUAD, [1, 2]]), "unequal"),
    ("object values", one([1, 4], [1, 2, 3, {"a": 1}]), "numbers or null"),
    ("missing feature", one([1], [1], name="sepal_length"), "missing feature(s): sepal_width"),
    ("zero rows", one([0, 4], []), "no rows"),
    (
        "two unknown tensors",
        json.dumps({"inputs": [tensor(QUAD, [1, 4], "a"), tensor(QUAD, [1, 4], "b")]}).encode(),
        "unknown input",
    ),
]


@pytest.mark.parametrize(("case", "body", "message"), BAD_V2, ids=[c[0] for c in BAD_V2])
def test_v2_bad_bodies_are_400(iris: tuple[str, Any], case: str, body: bytes, message: str) -> None:
    base, _ = iris
    r = httpx.post(f"{base}/v2/models/iris/infer", content=body)
    assert r.status_code == 400, (case, r.text)
    assert r.headers["content-type"] == "application/json"
    assert message in r.json()["error"]


IRIS_NAMES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
BAD_V1 = [
    ("no instances", {"rows": [QUAD]}, "'instances'"),
    ("empty", {"instances": []}, "non-empty"),
    ("wrong length", {"instances": [[1, 2, 3]]}, "has 3 values"),
    ("strings", {"instances": [["a", "b", "c", "d"]]}, "expected numbers"),
    ("mixed row kinds", {"instances": [QUAD, {"sepal_length": 1}]}, "all be lists"),
    (
        "missing feature",
        {"instances": [dict(zip(IRIS_NAMES[:3], QUAD, strict=False))]},
        "missing feature(s): petal_width",
    ),
    (
        "unknown feature",
        {"instances": [dict(zip(IRIS_NAMES, QUAD, strict=True)) | {"x": 1}]},
        "unknown feature(s): x",
    ),
]


@pytest.mark.parametrize(("case", "body", "message"), BAD_V1, ids=[c[0] for c in BAD_V1])
def test_v1_bad_bodies_are_400(iris: tuple[str, Any], case: str, body: Any, message: str) -> None:
    base, _ = iris
    r = httpx.post(f"{base}/v1/models/iris:predict", json=body)
    assert r.status_code == 400, (case, r.text)
    assert message in r.json()["error"]


def test_string_column_type_errors(penguins: tuple[str, Any]) -> None:
    base, _ = penguins
    row = {"island": 3, "sex": "male", "bill_length_mm": 50.0, "flipper_length_mm": 195}
    r = httpx.post(f"{base}/v1/models/penguins:predict", json={"instances": [row]})
    assert r.status_code == 400
    assert "takes strings" in r.json()["error"]
    inputs = [
        tensor([1.0], [1], "bill_length_mm", "FP64"),
        tensor([1.0], [1], "flipper_length_mm", "FP64"),
        tensor(["Dream"], [1], "island", "FP64"),
        tensor(["male"], [1], "sex", "BYTES"),
    ]
    r = httpx.post(f"{base}/v2/models/penguins/infer", json={"inputs": inputs})
    assert r.status_code == 400
    assert "string (BYTES)" in r.json()["error"]


def test_unknown_model_and_path_are_404(iris: tuple[str, Any]) -> None:
    base, _ = iris
    for method, path in [
        ("POST", "/v2/models/nope/infer"),
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("POST", "/v1/models/nope:predict"),
        ("GET", "/v1/models/nope"),
        ("GET", "/v3/whatever"),
        ("GET", "/v2/models/iris/explain"),
    ]:
        r = httpx.request(method, f"{base}{path}", json={"instances": [[1, 2, 3, 4]]})
        assert r.status_code == 404, path
        assert "error" in r.json()


def test_wrong_method_is_405(iris: tuple[str, Any]) -> None:
    base, _ = iris
    r = httpx.get(f"{base}/v2/models/iris/infer")
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert "not allowed" in r.json()["error"]
    r = httpx.post(f"{base}/v2/health/ready")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET"


def test_model_raising_is_500_prediction_failed(penguins: tuple[str, Any]) -> None:
    base, _ = penguins
    row = {"island": "Mars", "sex": "male", "bill_length_mm": 50.0, "flipper_length_mm": 195}
    r = httpx.post(f"{base}/v1/models/penguins:predict", json={"instances": [row]})
    assert r.status_code == 500
    assert r.json()["error"].startswith("prediction failed: ValueError")
    assert "\n" not in r.json()["error"]
    metrics = httpx.get(f"{base}/metrics").text
    assert (
        'orchard_request_errors_total{endpoint="v1_predict",reason="prediction_failed"}' in metrics
    )


def test_503_until_the_model_is_loaded(artifacts: dict[str, Path]) -> None:
    gate = threading.Event()
    loaded = app_for(artifacts["iris"], "iris")
    assert loaded.load is not None
    real_load = loaded.load

    def slow_load() -> Any:
        assert gate.wait(20)
        return real_load()

    app = App("iris", slow_load)
    with running_server(app, wait_ready=False) as base:
        assert httpx.get(f"{base}/v2/health/live").status_code == 200
        for method, path in [
            ("GET", "/v2/health/ready"),
            ("GET", "/v2/models/iris/ready"),
            ("GET", "/v2/models/iris"),
            ("POST", "/v2/models/iris/infer"),
            ("POST", "/v1/models/iris:predict"),
        ]:
            r = httpx.request(method, f"{base}{path}", json={"instances": IRIS_ROWS})
            assert r.status_code == 503, path
            assert "not ready" in r.json()["error"]
        assert "orchard_model_ready 0" in httpx.get(f"{base}/metrics").text
        gate.set()
        for _ in range(200):
            if httpx.get(f"{base}/v2/health/ready").status_code == 200:
                break
            threading.Event().wait(0.02)
        r = httpx.post(f"{base}/v1/models/iris:predict", json={"instances": IRIS_ROWS})
        assert r.status_code == 200
        assert "orchard_model_ready 1" in httpx.get(f"{base}/metrics").text


# --- metrics --------------------------------------------------------------------------------


def scrape(base: str) -> dict[str, float]:
    """Prometheus text to {'name{labels}': value}; also checks every family is typed."""
    text = httpx.get(f"{base}/metrics").text
    typed = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, value = line.rsplit(" ", 1)
        family = key.split("{")[0]
        assert any(family == t or family.startswith(t + "_") for t in typed), family
        out[key] = float(value)
    return out


def test_metrics_move_with_traffic(penguins: tuple[str, Any]) -> None:
    base, model = penguins
    before = scrape(base)
    rows = [
        {"island": "Dream", "sex": None, "bill_length_mm": 50.0, "flipper_length_mm": 195},
        {"island": "Biscoe", "sex": "male", "bill_length_mm": None, "flipper_length_mm": 181},
        {"island": "Dream", "sex": "female", "bill_length_mm": 42.0, "flipper_length_mm": 200},
    ]
    assert (
        httpx.post(f"{base}/v1/models/penguins:predict", json={"instances": rows}).status_code
        == 200
    )
    assert httpx.post(f"{base}/v1/models/penguins:predict", json={"rows": rows}).status_code == 400
    after = scrape(base)

    def moved(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert moved('orchard_requests_total{endpoint="v1_predict",code="200"}') == 1
    assert moved('orchard_requests_total{endpoint="v1_predict",code="400"}') == 1
    assert moved('orchard_request_errors_total{endpoint="v1_predict",reason="bad_request"}') == 1
    assert moved('orchard_request_duration_seconds_count{endpoint="v1_predict"}') == 2
    assert moved('orchard_request_duration_seconds_bucket{endpoint="v1_predict",le="+Inf"}') == 2
    assert moved('orchard_request_duration_seconds_sum{endpoint="v1_predict"}') > 0
    assert moved("orchard_batch_rows_sum") == 3
    import pandas as pd

    frame = pd.DataFrame(rows).astype({"bill_length_mm": float}).fillna({"sex": np.nan})
    for cls in set(model.predict(frame)):
        expected = float(sum(model.predict(frame) == cls))
        assert moved(f'orchard_predictions_total{{class="{cls}"}}') == expected
    assert moved('orchard_feature_observations_total{feature="bill_length_mm"}') == 2
    assert moved('orchard_feature_missing_total{feature="bill_length_mm"}') == 1
    assert moved('orchard_feature_value_sum{feature="bill_length_mm"}') == pytest.approx(92.0)
    assert moved('orchard_feature_value_sum_squares{feature="flipper_length_mm"}') == pytest.approx(
        195**2 + 181**2 + 200**2
    )
    assert moved('orchard_feature_category_total{feature="island",category="Dream"}') == 2
    assert moved('orchard_feature_missing_total{feature="sex"}') == 1
    assert 'orchard_feature_value_sum{feature="island"}' not in after
    assert after["orchard_model_ready"] == 1
