"""`orchard serve` over gRPC as Triton's own client uses it (tritonclient.grpc, unmodified).

Real server processes on loopback (`test_serving_support`: the iris and penguins ones
the HTTP client tests start too, and one with tight limits and a model that fails on an
unseen category). Health, metadata, inference with raw tensors (what tritonclient sends)
and with typed contents (through Triton's own generated stub), requested outputs, the
errors as status codes with the server's message, and the request metrics the canary
analysis reads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from google.protobuf import unknown_fields
from test_serving_support import (
    Served,
    free_port,
    mixed_artifact,
    mixed_frame,
    serving,
    serving_iris,
    serving_penguins,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from orchard.decisions import analysis as an
from orchard.decisions import metrics_text as mt
from orchard.serving import main as serve_main
from orchard.serving.runtime import PROBABILITY_TOLERANCE as TOLERANCE

REPO = Path(__file__).resolve().parents[2]
GRPC_INFER = ("endpoint", "grpc_infer")

IRIS_ROWS = np.array(
    [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3], [5.9, 3.0, 5.1, 1.8]]
)


@pytest.fixture(scope="module")
def iris_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving_iris(tmp_path_factory.mktemp("iris")) as s:
        yield s


@pytest.fixture(scope="module")
def penguins_served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serving_penguins(tmp_path_factory.mktemp("penguins")) as s:
        yield s


@pytest.fixture(scope="module")
def iris(iris_served: Served) -> Iterator[tuple[triton.InferenceServerClient, Any]]:
    client = triton.InferenceServerClient(iris_served.server.grpc_target)
    yield client, iris_served.model
    client.close()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """Penguins whose model raises on an unseen island; 50 rows and 64 KiB at most."""
    root = tmp_path_factory.mktemp("strict")
    with serving(
        mixed_artifact(root / "a"), "penguins", root / "log",
        "--max-request-rows", "50", "--max-body-bytes", str(64 * 1024),
    ) as s:  # fmt: skip
        yield s


def tensor(name: str, values: np.ndarray[Any, Any], datatype: str) -> triton.InferInput:
    t = triton.InferInput(name, list(values.shape), datatype)
    t.set_data_from_numpy(values)
    return t


def status_of(caught: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(caught.value.status())


def scrape(served: Served) -> dict[tuple[str, mt.Labels], float]:
    return mt.parse_scrape(httpx.get(f"{served.server.base}/metrics").text)


# --- health and metadata ------------------------------------------------------------------


def test_health(iris: tuple[triton.InferenceServerClient, Any]) -> None:
    client, _ = iris
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("iris") and client.is_model_ready("iris", "3")
    for name, version, message in [("iris", "4", "no version '4'"), ("lilies", "", "not served")]:
        with pytest.raises(InferenceServerException, match=message) as caught:
            client.is_model_ready(name, version)
        assert status_of(caught) == "StatusCode.NOT_FOUND"


def test_grpc_health_checking(iris_served: Served) -> None:
    """grpc.health.v1, as Kubernetes' gRPC probe and grpc_health_probe ask it."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    serving_ = health_pb2.HealthCheckResponse.SERVING
    with grpc.insecure_channel(iris_served.server.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "inference.GRPCInferenceService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert answer.status == serving_, service
        with pytest.raises(grpc.RpcError) as caught:
            stub.Check(health_pb2.HealthCheckRequest(service="grpc.reflection"), timeout=10)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        watching = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watching).status == serving_
        watching.cancel()


def test_server_and_model_metadata(iris: tuple[triton.InferenceServerClient, Any]) -> None:
    client, _ = iris
    server = client.get_server_metadata()
    assert server.name == "orchard" and server.version
    meta = client.get_model_metadata("iris", "3")
    assert meta.name == "iris" and list(meta.versions) == ["3"] and meta.platform == "sklearn"
    assert [i.name for i in meta.inputs] == [
        "sepal_length", "sepal_width", "petal_length", "petal_width"
    ]  # fmt: skip
    assert {i.datatype for i in meta.inputs} == {"FP64"}
    assert [(o.name, o.datatype, list(o.shape)) for o in meta.outputs] == [
        ("output-0", "INT64", [-1]), ("predict_proba", "FP64", [-1, 3])
    ]  # fmt: skip
    as_json = client.get_model_metadata("iris", as_json=True)
    assert as_json["versions"] == ["3"]
    with pytest.raises(InferenceServerException, match="not served here") as caught:
        client.get_model_metadata("lilies")
    assert status_of(caught) == "StatusCode.NOT_FOUND"


# --- inference ------------------------------------------------------------------------------


def test_the_model_metadata_properties_say_which_runtime_answers(iris_served: Served) -> None:
    """As REST's metadata parameters. tritonclient's proto lacks the OIP's `properties`
    (field 6), so it is read from the unknown fields: each map entry is (key 1, value 2),
    the wire form of a ModelMetadataRequest (name 1, version 2)."""
    with grpc.insecure_channel(iris_served.server.grpc_target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelMetadata",
            request_serializer=service_pb2.ModelMetadataRequest.SerializeToString,
        )
        raw = call(service_pb2.ModelMetadataRequest(name="iris"))
    response = service_pb2.ModelMetadataResponse.FromString(raw)
    properties = {}
    for field in unknown_fields.UnknownFieldSet(response):
        if field.field_number == 6:
            entry = service_pb2.ModelMetadataRequest.FromString(field.data)
            properties[entry.name] = entry.version
    assert properties["runtime"] == "onnx", properties
    assert "labels as the pipeline's on" in properties["runtime_reason"], properties
    assert json.loads(properties["classes"]) == [0, 1, 2], properties


@pytest.mark.parametrize("datatype", ["FP64", "FP32", "INT64"])
def test_labels_and_probabilities(
    iris: tuple[triton.InferenceServerClient, Any], datatype: str
) -> None:
    client, model = iris
    x = IRIS_ROWS.astype({"FP64": np.float64, "FP32": np.float32, "INT64": np.int64}[datatype])
    wanted = [triton.InferRequestedOutput("predict_proba"), triton.InferRequestedOutput("output-0")]
    result = client.infer("iris", [tensor("input-0", x, datatype)], outputs=wanted)
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["predict_proba", "output-0"]
    assert len(response.raw_output_contents) == 2  # raw in, raw out, as Triton answers
    as_served = x.astype(np.float64)  # the server scores every number as a double
    np.testing.assert_array_equal(result.as_numpy("output-0"), model.predict(as_served))
    proba = result.as_numpy("predict_proba")
    assert proba.dtype == np.float64 and proba.shape == (4, 3)
    np.testing.assert_allclose(proba, model.predict_proba(as_served), atol=TOLERANCE)
    classes = result.get_output("predict_proba").parameters["classes"].string_param
    assert json.loads(classes) == model.classes_.tolist()


def test_without_outputs_the_labels_alone_and_the_id(
    iris: tuple[triton.InferenceServerClient, Any],
) -> None:
    client, model = iris
    x = tensor("input-0", IRIS_ROWS, "FP64")
    result = client.infer("iris", [x], request_id="r-1", model_version="3")
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["output-0"]
    assert (response.id, response.model_name, response.model_version) == ("r-1", "iris", "3")
    np.testing.assert_array_equal(result.as_numpy("output-0"), model.predict(IRIS_ROWS))
    assert client.infer("iris", [x]).get_response().id  # one the server made
    named = client.infer("iris", [x], outputs=[triton.InferRequestedOutput("predict")])
    assert named.as_numpy("predict").tolist() == model.predict(IRIS_ROWS).tolist()


def test_one_input_per_column(iris: tuple[triton.InferenceServerClient, Any]) -> None:
    client, model = iris
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    inputs = [tensor(n, IRIS_ROWS[:, j].copy(), "FP64") for j, n in enumerate(names)]
    result = client.infer("iris", inputs)
    np.testing.assert_array_equal(result.as_numpy("output-0"), model.predict(IRIS_ROWS))


def test_typed_contents_are_answered_typed(iris_served: Served) -> None:
    """Triton's own stub, with `contents` instead of raw bytes: the answer comes typed."""
    model = iris_served.model
    request = service_pb2.ModelInferRequest(model_name="iris", id="typed")
    x = request.inputs.add(name="input-0", datatype="FP64", shape=[4, 4])
    x.contents.fp64_contents.extend(IRIS_ROWS.ravel().tolist())
    request.outputs.add(name="output-0")
    request.outputs.add(name="predict_proba")
    with grpc.insecure_channel(iris_served.server.grpc_target) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert not response.raw_output_contents and response.id == "typed"
        labels, proba = response.outputs
        assert list(labels.contents.int64_contents) == model.predict(IRIS_ROWS).tolist()
        got = np.array(proba.contents.fp64_contents).reshape(list(proba.shape))
        np.testing.assert_allclose(got, model.predict_proba(IRIS_ROWS), atol=TOLERANCE)
        x.datatype = "FP32"  # its values must be in fp32_contents
        with pytest.raises(grpc.RpcError) as caught:
            service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "0 values do not fill shape [4, 4]" in caught.value.details()


def test_mixed_rows_as_bytes(penguins_served: Served) -> None:
    """One 2-D BYTES tensor of mixed rows (tritonclient writes numbers as text), and one
    input per column in its own datatype."""
    model = penguins_served.model
    frame, _ = mixed_frame(12, seed=3)
    with triton.InferenceServerClient(penguins_served.server.grpc_target) as client:
        wanted = [triton.InferRequestedOutput("output-0"),
                  triton.InferRequestedOutput("predict_proba")]  # fmt: skip
        rows = frame.to_numpy(dtype=object)
        result = client.infer("penguins", [tensor("rows", rows, "BYTES")], outputs=wanted)
        labels = [v.decode() for v in result.as_numpy("output-0")]
        assert labels == model.predict(frame).tolist()
        np.testing.assert_allclose(
            result.as_numpy("predict_proba"), model.predict_proba(frame), atol=TOLERANCE
        )
        filled = frame.fillna({"sex": "male"})
        inputs = [
            tensor("bill_length_mm", filled["bill_length_mm"].to_numpy(np.float32), "FP32"),
            tensor("flipper_length_mm", filled["flipper_length_mm"].to_numpy(), "FP64"),
            tensor("island", filled["island"].to_numpy(object), "BYTES"),
            tensor("sex", filled["sex"].to_numpy(object), "BYTES"),
        ]
        result = client.infer("penguins", inputs)
        expected = model.predict(filled.astype({"bill_length_mm": np.float32}))
        assert [v.decode() for v in result.as_numpy("output-0")] == expected.tolist()


# --- errors ---------------------------------------------------------------------------------


def test_errors_are_status_codes_with_the_message(
    iris: tuple[triton.InferenceServerClient, Any],
) -> None:
    client, _ = iris
    x = tensor("input-0", IRIS_ROWS, "FP64")
    out = triton.InferRequestedOutput
    cases: list[tuple[dict[str, Any], str, str]] = [
        ({"outputs": [out("nope")]}, "INVALID_ARGUMENT", "unknown output 'nope'"),
        ({"outputs": [out("predict"), out("predict")]}, "INVALID_ARGUMENT", "asked for twice"),
        ({"inputs": [tensor("input-0", IRIS_ROWS[:, :3], "FP64")]}, "INVALID_ARGUMENT",
         "3 columns, the model takes 4"),
        ({"inputs": [tensor("input-0", np.array([[1e39, 0, 0, 0]]), "FP64")]},
         "INVALID_ARGUMENT", "beyond"),
        ({"model_name": "lilies"}, "NOT_FOUND", "not served here"),
        ({"model_version": "9"}, "NOT_FOUND", "no version '9'"),
        ({"inputs": [tensor("input-0", np.zeros((10_001, 4)), "FP64")]}, "RESOURCE_EXHAUSTED",
         "10001 rows, more than the 10000"),
    ]  # fmt: skip
    for change, code, message in cases:
        call = {"model_name": "iris", "inputs": [x], **change}
        with pytest.raises(InferenceServerException) as caught:
            client.infer(**call)
        assert status_of(caught) == f"StatusCode.{code}", caught.value.message()
        assert message in str(caught.value.message())


def test_a_method_of_triton_alone_is_unimplemented(
    iris: tuple[triton.InferenceServerClient, Any],
) -> None:
    client, _ = iris
    with pytest.raises(InferenceServerException) as caught:
        client.get_inference_statistics("iris")
    assert status_of(caught) == "StatusCode.UNIMPLEMENTED"


def test_limits_and_a_failing_model(strict: Served) -> None:
    frame, _ = mixed_frame(60, seed=5)
    frame = frame.fillna({"sex": "male"})  # a missing string is text "nan": unseen too
    before = scrape(strict)
    with triton.InferenceServerClient(strict.server.grpc_target) as client:
        rows = frame.to_numpy(dtype=object)
        with pytest.raises(InferenceServerException, match="more than the 50") as caught:
            client.infer("penguins", [tensor("rows", rows, "BYTES")])
        assert status_of(caught) == "StatusCode.RESOURCE_EXHAUSTED"
        big = np.zeros((10_000, 1))  # 80 kB: over --max-body-bytes, refused by gRPC itself
        with pytest.raises(InferenceServerException) as caught:
            client.infer("penguins", [tensor("bill_length_mm", big, "FP64")])
        assert status_of(caught) == "StatusCode.RESOURCE_EXHAUSTED"
        unseen = frame.head(3).assign(island="Atlantis").to_numpy(dtype=object)
        with pytest.raises(InferenceServerException, match="prediction failed") as caught:
            client.infer("penguins", [tensor("rows", unseen, "BYTES")])
        assert status_of(caught) == "StatusCode.INTERNAL"
        client.infer("penguins", [tensor("rows", rows[:5], "BYTES")])
    counted = mt.delta(before, scrape(strict))

    def requests(code: str) -> float:
        return counted.get(("orchard_requests_total", (("code", code), GRPC_INFER)), 0)

    def errors(reason: str) -> float:
        return counted.get(("orchard_request_errors_total", (GRPC_INFER, ("reason", reason))), 0)

    assert (requests("200"), requests("413"), requests("500")) == (1, 1, 1)
    assert (errors("too_many_rows"), errors("prediction_failed")) == (1, 1)
    # The canary analysis counts them as it counts REST's: the 500 is an error, the 413 not.
    window = an.track_window(counted)
    assert (window.requests, window.errors) == (3, 1)


# --- metrics --------------------------------------------------------------------------------


def test_calls_are_counted_for_the_analysis(iris_served: Served) -> None:
    before = scrape(iris_served)
    with triton.InferenceServerClient(iris_served.server.grpc_target) as client:
        x = tensor("input-0", IRIS_ROWS, "FP64")
        for _ in range(3):
            client.infer("iris", [x])
        client.infer("iris", [x], headers={"orchard-replay": "1"})
        with pytest.raises(InferenceServerException):
            client.infer("iris", [x], outputs=[triton.InferRequestedOutput("nope")])
        client.is_server_ready()
    counted = mt.delta(before, scrape(iris_served))
    ok = ("orchard_requests_total", (("code", "200"), ("endpoint", "grpc_infer")))
    bad = ("orchard_requests_total", (("code", "400"), ("endpoint", "grpc_infer")))
    assert (counted[ok], counted[bad]) == (4, 1)
    ready = ("orchard_requests_total", (("code", "200"), ("endpoint", "grpc_server_ready")))
    assert counted[ready] == 1
    replayed = ("orchard_replay_requests_total", (("code", "200"), ("endpoint", "grpc_infer")))
    assert counted[replayed] == 1
    latency = ("orchard_request_duration_seconds_count", (("endpoint", "grpc_infer"),))
    assert counted[latency] == 5
    window = an.track_window(counted)  # the probe is no traffic; a 400 is no error
    assert (window.requests, window.errors) == (5, 0)
    assert window.classes  # the rows' predicted classes, as over REST


# --- the command ----------------------------------------------------------------------------


def test_a_grpc_port_in_use_stops_the_server(iris_served: Served, tmp_path: Path) -> None:
    """Nothing half-started: with its gRPC port taken, `orchard serve` exits as uvicorn
    does when its own is (status 3), saying why."""
    model_dir = Path(iris_served.server.proc.args[5])
    proc = subprocess.run(
        [sys.executable, "-m", "orchard.cli", "serve", "--model-dir", str(model_dir),
         "--model-name", "iris", "--host", "127.0.0.1", "--port", str(free_port()),
         "--grpc-port", str(iris_served.server.grpc_port)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 3, proc.stderr
    assert f"cannot listen for gRPC on 127.0.0.1:{iris_served.server.grpc_port}" in proc.stderr


def test_the_grpc_port_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = argparse.ArgumentParser()
    serve_main.add_arguments(parser)
    base = ["--model-dir", "/m", "--model-name", "m"]
    assert parser.parse_args(base).grpc_port == 8081
    monkeypatch.setenv("ORCHARD_GRPC_PORT", "0")  # none
    parser = argparse.ArgumentParser()
    serve_main.add_arguments(parser)
    assert parser.parse_args(base).grpc_port == 0
    assert parser.parse_args([*base, "--grpc-port", "9001"]).grpc_port == 9001


def test_the_generated_modules_are_in_step_with_the_proto() -> None:
    """What `make protos` writes is what is committed (protoc runs in its own process)."""
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts/protos.py"), "--check"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
