"""`orchard serve` as Triton's own HTTP client uses it (tritonclient.http, unmodified).

A real server process per model on loopback; requests written as that client's users
write them: `set_data_from_numpy` (binary by default), `InferRequestedOutput` in binary
and in JSON, compressed requests and responses, metadata, health, and the errors it
raises (InferenceServerException with the server's message).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from test_serving_support import Served as ServedProcess
from test_serving_support import mixed_frame, serving_iris, serving_penguins
from tritonclient.utils import InferenceServerException

from orchard.serving.runtime import PROBABILITY_TOLERANCE as TOLERANCE

IRIS_ROWS = np.array(
    [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3], [5.9, 3.0, 5.1, 1.8]]
)


@dataclass
class Served:
    """A served model: tritonclient on it, the model itself, and the server's base URL."""

    client: triton.InferenceServerClient
    model: Any
    base: str


class HTTPClient(triton.InferenceServerClient):  # type: ignore[misc]
    """tritonclient's HTTP client, closed by its fixture only. Its own `__del__` closes it
    again, in whichever thread the garbage collector runs: from another thread gevent
    refuses (InvalidThreadUseError), which pytest then reports in an unrelated test."""

    def __del__(self) -> None:
        pass


@contextlib.contextmanager
def http_client(
    root: Path, serve: Callable[[Path], ContextManager[ServedProcess]]
) -> Iterator[Served]:
    with serve(root) as served:
        server = served.server
        client = HTTPClient(f"{server.host}:{server.port}")
        try:
            yield Served(client, served.model, server.base)
        finally:
            client.close()


@pytest.fixture(scope="module")
def iris(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with http_client(tmp_path_factory.mktemp("iris"), serving_iris) as s:
        yield s


@pytest.fixture(scope="module")
def penguins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with http_client(tmp_path_factory.mktemp("penguins"), serving_penguins) as s:
        yield s


def tensor(name: str, values: np.ndarray[Any, Any], datatype: str, binary: bool = True) -> Any:
    t = triton.InferInput(name, list(values.shape), datatype)
    t.set_data_from_numpy(values, binary_data=binary)
    return t


def names(result: Any) -> list[str]:
    return [o["name"] for o in result.get_response()["outputs"]]


# --- health and metadata ------------------------------------------------------------------


def test_health_and_metadata(iris: Served) -> None:
    client, model = iris.client, iris.model
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("iris", "3")
    assert not client.is_model_ready("iris", "4")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("iris", "3")
    assert meta["versions"] == ["3"]
    assert [o["name"] for o in meta["outputs"]] == ["output-0", "predict_proba"]
    proba = meta["outputs"][1]
    assert proba["datatype"] == "FP64" and proba["shape"] == [-1, 3]
    assert proba["parameters"]["classes"] == model.classes_.tolist()


# --- binary and JSON tensors, requested outputs ---------------------------------------------


@pytest.mark.parametrize("binary_out", [True, False], ids=["binary out", "json out"])
@pytest.mark.parametrize(
    ("binary_in", "datatype"), [(True, "FP32"), (True, "FP64"), (False, "FP64")],
    ids=["binary FP32 in", "binary FP64 in", "json in"],
)  # fmt: skip
def test_labels_and_probabilities(
    iris: Served, binary_in: bool, datatype: str, binary_out: bool
) -> None:
    client, model = iris.client, iris.model
    x = IRIS_ROWS.astype(np.float32 if datatype == "FP32" else np.float64)
    wanted = [
        triton.InferRequestedOutput("predict_proba", binary_data=binary_out),
        triton.InferRequestedOutput("output-0", binary_data=binary_out),
    ]
    result = client.infer("iris", [tensor("input-0", x, datatype, binary_in)], outputs=wanted)
    assert names(result) == ["predict_proba", "output-0"]  # what was asked, in that order
    as_served = x.astype(np.float64)  # the server scores every number as a double
    np.testing.assert_array_equal(result.as_numpy("output-0"), model.predict(as_served))
    proba = result.as_numpy("predict_proba")
    assert proba.dtype == np.float64 and proba.shape == (4, 3)
    np.testing.assert_allclose(proba, model.predict_proba(as_served), atol=TOLERANCE)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=TOLERANCE)
    classes = result.get_output("predict_proba")["parameters"]["classes"]
    assert classes == model.classes_.tolist()
    assert model.classes_[proba.argmax(axis=1)].tolist() == result.as_numpy("output-0").tolist()
    binary = "binary_data_size" in result.get_output("output-0")["parameters"]
    assert binary is binary_out


def test_without_outputs_the_labels_alone_come_in_binary(iris: Served) -> None:
    client, model = iris.client, iris.model
    result = client.infer("iris", [tensor("input-0", IRIS_ROWS, "FP64")], request_id="r-1")
    assert names(result) == ["output-0"]
    assert result.get_response()["id"] == "r-1"
    assert result.get_output("output-0")["parameters"]["binary_data_size"] == 4 * 8
    np.testing.assert_array_equal(result.as_numpy("output-0"), model.predict(IRIS_ROWS))


def test_the_labels_answer_to_predict_too(iris: Served) -> None:
    client, model = iris.client, iris.model
    wanted = [triton.InferRequestedOutput("predict", binary_data=False)]
    result = client.infer("iris", [tensor("input-0", IRIS_ROWS, "FP64")], outputs=wanted)
    assert names(result) == ["predict"]
    assert result.as_numpy("predict").tolist() == model.predict(IRIS_ROWS).tolist()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_mixed_rows_as_one_bytes_tensor(penguins: Served, binary: bool) -> None:
    """tritonclient writes every element of an object array as text, numbers included."""
    client, model = penguins.client, penguins.model
    frame, _ = mixed_frame(12, seed=3)
    rows = frame.to_numpy(dtype=object)  # missing values are NaN: "nan" once written
    wanted = [
        triton.InferRequestedOutput("output-0", binary_data=binary),
        triton.InferRequestedOutput("predict_proba", binary_data=binary),
    ]
    result = client.infer("penguins", [tensor("rows", rows, "BYTES", binary)], outputs=wanted)
    labels = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("output-0")]
    assert labels == model.predict(frame).tolist()
    np.testing.assert_allclose(result.as_numpy("predict_proba"), model.predict_proba(frame))


def test_named_inputs_in_binary(penguins: Served) -> None:
    client, model = penguins.client, penguins.model
    frame, _ = mixed_frame(9, seed=4)
    inputs = [
        tensor("bill_length_mm", frame["bill_length_mm"].to_numpy(np.float32), "FP32"),
        tensor("flipper_length_mm", frame["flipper_length_mm"].to_numpy(np.float64), "FP64"),
        tensor("island", frame["island"].to_numpy(object), "BYTES"),
        tensor("sex", frame["sex"].fillna("male").to_numpy(object), "BYTES", binary=False),
    ]
    result = client.infer("penguins", inputs)
    expected = model.predict(frame.fillna({"sex": "male"}).astype({"bill_length_mm": np.float32}))
    assert [v.decode() for v in result.as_numpy("output-0")] == expected.tolist()


# --- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_and_responses(iris: Served, algorithm: str) -> None:
    client, model = iris.client, iris.model
    x = np.tile(IRIS_ROWS, (20, 1))  # 80 rows: an answer well over 1 KiB
    wanted = [triton.InferRequestedOutput("predict_proba", binary_data=False)]
    for binary in (True, False):
        result = client.infer(
            "iris", [tensor("input-0", x, "FP64", binary)], outputs=wanted,
            request_compression_algorithm=algorithm, response_compression_algorithm=algorithm,
        )  # fmt: skip
        np.testing.assert_allclose(
            result.as_numpy("predict_proba"), model.predict_proba(x), atol=TOLERANCE
        )


def test_an_answer_is_compressed_only_when_asked_and_worth_it(iris: Served) -> None:
    """What tritonclient cannot show: the response's own headers."""
    many = {"inputs": [{"name": "x", "shape": [80, 4], "datatype": "FP64",
                        "data": np.tile(IRIS_ROWS, (20, 1)).ravel().tolist()}],
            "outputs": [{"name": "predict_proba"}]}  # fmt: skip
    one = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}]}
    url = f"{iris.base}/v2/models/iris/infer"
    for accept, body, coding in [
        ("gzip", many, "gzip"), ("deflate", many, "deflate"),
        ("br, deflate;q=0.5", many, "deflate"), ("identity", many, None),
        ("gzip;q=0", many, None), ("gzip", one, None),
    ]:  # fmt: skip
        r = httpx.post(url, json=body, headers={"accept-encoding": accept})
        assert r.status_code == 200, r.text
        assert r.headers.get("content-encoding") == coding, accept
        assert r.json()["outputs"]  # decoded by httpx, whatever the coding


# --- errors ---------------------------------------------------------------------------------


def test_errors_reach_the_client_with_their_message(iris: Served) -> None:
    client = iris.client
    x = tensor("input-0", IRIS_ROWS, "FP64")
    cases = [
        ([triton.InferRequestedOutput("nope")], "unknown output 'nope'"),
        ([triton.InferRequestedOutput("predict"), triton.InferRequestedOutput("predict")],
         "asked for twice"),
    ]  # fmt: skip
    for wanted, message in cases:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("iris", [x], outputs=wanted)
        assert message in caught.value.message()
        assert caught.value.status() == "400"
    with pytest.raises(InferenceServerException, match="3 columns, the model takes 4"):
        client.infer("iris", [tensor("input-0", IRIS_ROWS[:, :3], "FP64")])
    with pytest.raises(InferenceServerException, match="no version '9'"):
        client.infer("iris", [x], model_version="9")
    with pytest.raises(InferenceServerException, match="not served here"):
        client.get_model_metadata("lilies")
