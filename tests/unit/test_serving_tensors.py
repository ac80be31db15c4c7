"""The pure pieces of what clients send and get: binary tensors (`tensors`), compressed
bodies (`encoding`), requested outputs (`outputs`), and how the runner computes class
probabilities for the requests of a batch that asked for them."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_serving_support import iris_artifact

from orchard.serving import encoding, outputs, tensors
from orchard.serving.artifact import Column, verify
from orchard.serving.inputs import BadRequest, InvalidValue, Schema
from orchard.serving.main import build_runner
from orchard.serving.model import Prediction
from orchard.serving.runtime import PROBABILITY_TOLERANCE as TOL

# --- tensors --------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", sorted(tensors.DTYPES))
def test_every_numeric_datatype_round_trips_little_endian(datatype: str) -> None:
    values = np.array([0, 1, 1, 0, 1, 1], dtype=tensors.DTYPES[datatype])
    raw = tensors.encode(values, datatype)
    assert len(raw) == 6 * tensors.DTYPES[datatype].itemsize
    assert tensors.DTYPES[datatype].byteorder in "<|="  # little-endian, or a single byte
    np.testing.assert_array_equal(tensors.decode(memoryview(raw), datatype, 6), values)


def test_bytes_are_length_prefixed_utf8() -> None:
    raw = tensors.encode(["", "Dream", "Torgersen ✓", 7], "BYTES")
    assert raw[:9] == b"\0\0\0\0\x05\0\0\0D"
    assert tensors.decode(memoryview(raw), "BYTES", 4) == ["", "Dream", "Torgersen ✓", "7"]
    for bad, count, message in [
        (raw, 3, "exactly 3"), (raw, 5, "exactly 5"), (raw[:-1], 4, "past the end"),
        (raw[:2], 1, "cut short"), (b"\x01\0\0\0\xff", 1, "not UTF-8"),
    ]:  # fmt: skip
        with pytest.raises(tensors.MalformedTensor, match=message):
            tensors.decode(memoryview(bad), "BYTES", count)


def test_sections_follow_the_inputs_that_have_binary_data() -> None:
    body = b'{"inputs": []}' + b"aaaa" + b"bb"
    head, binary = tensors.split(body, 14)
    assert head == b'{"inputs": []}'
    inputs = [{"name": "a", "parameters": {"binary_data_size": 4}}, {"name": "j", "data": [1]},
              {"name": "b", "parameters": {"binary_data_size": 2}}]  # fmt: skip
    got = tensors.sections(inputs, binary)
    assert [bytes(s) if s is not None else None for s in got] == [b"aaaa", None, b"bb"]
    with pytest.raises(tensors.MalformedTensor, match="add up to 4"):
        tensors.sections(inputs[:1], binary)
    with pytest.raises(tensors.MalformedTensor, match="only 20 bytes"):
        tensors.split(body, 21)
    with pytest.raises(tensors.MalformedTensor, match="non-negative integer"):
        tensors.sections([{"name": "a", "parameters": {"binary_data_size": True}}], binary)


def test_a_two_d_bytes_tensor_is_read_column_by_column() -> None:
    """Numbers written as text (as tritonclient writes an object array) are numbers for a
    numeric column; "" and "nan" are missing; other text for a number is refused."""
    schema = Schema([Column("x", "number"), Column("s", "string")])
    body = {"inputs": [{"name": "t", "shape": [3, 2], "datatype": "BYTES",
                        "data": ["1.5", "a", "nan", "b", 2, None]}]}  # fmt: skip
    rows, n = schema.parse_v2(body)
    assert n == 3 and isinstance(rows, list)
    assert rows[0][0] == 1.5 and np.isnan(rows[0][1]) and rows[0][2] == 2.0
    assert rows[1][:2].tolist() == ["a", "b"] and np.isnan(rows[1][2])
    raw = tensors.encode(["", "a", "7", "b"], "BYTES")
    binary = {"inputs": [{"name": "t", "shape": [2, 2], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(raw)}}]}  # fmt: skip
    rows, _ = schema.parse_v2(binary, binary=memoryview(raw))
    assert np.isnan(rows[0][0]) and rows[0][1] == 7.0 and rows[1].tolist() == ["a", "b"]
    body["inputs"][0]["data"][0] = "1,5"
    with pytest.raises(InvalidValue, match="column 'x' takes numbers, got '1,5'"):
        schema.parse_v2(body)


def test_binary_values_are_checked_like_json_ones() -> None:
    schema = Schema([Column("a", "number"), Column("b", "number")])
    raw = np.array([1.0, np.inf], dtype="<f8").tobytes()
    body = {"inputs": [{"name": "t", "shape": [1, 2], "datatype": "FP64",
                        "parameters": {"binary_data_size": 16}}]}  # fmt: skip
    with pytest.raises(InvalidValue, match="beyond"):
        schema.parse_v2(body, binary=memoryview(raw))
    with pytest.raises(BadRequest, match="binary_data_size without the request header"):
        schema.parse_v2(body)  # binary data named, but no JSON header length given


# --- encoding -------------------------------------------------------------------------------


def test_request_codings() -> None:
    assert encoding.coding(None) is None and encoding.coding(b"Identity") is None
    assert encoding.coding(b" GZIP ") == "gzip" and encoding.coding(b"deflate") == "deflate"
    with pytest.raises(encoding.UnsupportedEncoding) as caught:
        encoding.coding(b"gzip, br")
    assert caught.value.status == 415 and caught.value.reason == "unsupported_encoding"


def test_decompression_is_held_to_the_limit() -> None:
    data = b"x" * 1000
    assert encoding.decompress(gzip.compress(data), "gzip", 1000) == data
    assert encoding.decompress(zlib.compress(data), "deflate", 1000) == data
    raw = zlib.compressobj(wbits=-15)
    assert encoding.decompress(raw.compress(data) + raw.flush(), "deflate", 1000) == data
    with pytest.raises(encoding.TooLarge) as caught:
        encoding.decompress(gzip.compress(data), "gzip", 999)
    assert caught.value.status == 413 and caught.value.reason == "too_large"
    with pytest.raises(encoding.Malformed):
        encoding.decompress(data, "deflate", 1000)


@pytest.mark.parametrize(
    ("header", "coding"),
    [(None, None), (b"", None), (b"gzip", "gzip"), (b"deflate", "deflate"),
     (b"deflate, gzip", "gzip"), (b"gzip;q=0.5, deflate", "deflate"), (b"br", None),
     (b"*", "gzip"), (b"*, gzip;q=0", "deflate"), (b"gzip;q=0, deflate;q=0", None),
     (b"identity", None), (b"GZIP; Q=0.1", "gzip"), (b"gzip;q=x", None)],
)  # fmt: skip
def test_the_answer_coding_follows_accept_encoding(header: bytes | None, coding: Any) -> None:
    assert encoding.accepted(header) == coding


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
def test_compressed_answers_read_back_as_clients_read_them(coding: str) -> None:
    body = b'{"outputs": [' + b"0.25, " * 500 + b"1]}"
    packed = encoding.compress(body, coding)
    assert len(packed) < len(body) // 10
    assert (gzip.decompress if coding == "gzip" else zlib.decompress)(packed) == body


# --- outputs --------------------------------------------------------------------------------


def test_what_a_v2_request_asks_for() -> None:
    W = outputs.Wanted
    assert outputs.requested_v2({}, True) == (W("output-0", "output-0"),)
    assert outputs.requested_v2({"parameters": {"binary_data_output": True}}, True) == (
        W("output-0", "output-0", binary=True),
    )
    asked = {
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "predict_proba", "parameters": {"binary_data": False}},
                    {"name": "predict"}],
    }  # fmt: skip
    assert outputs.requested_v2(asked, True) == (
        W("predict_proba", "predict_proba", binary=False), W("predict", "output-0", binary=True),
    )  # fmt: skip
    with pytest.raises(BadRequest, match="not available"):
        outputs.requested_v2({"outputs": [{"name": "predict_proba"}]}, False)
    with pytest.raises(BadRequest, match=r"this model answers output-0, predict$"):
        outputs.requested_v2({"outputs": [{"name": "x"}]}, False)


def test_answer_tensors_in_json_and_binary() -> None:
    prediction = Prediction(np.array([2, 0]), np.array([[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]))
    wanted = (outputs.Wanted("predict_proba", "predict_proba", binary=True),
              outputs.Wanted("output-0", "output-0"))  # fmt: skip
    tensors_out, chunks = outputs.v2_outputs(wanted, prediction, ["a", "b", "c"])
    assert tensors_out[0] == {
        "name": "predict_proba", "shape": [2, 3], "datatype": "FP64",
        "parameters": {"classes": ["a", "b", "c"], "binary_data_size": 48},
    }  # fmt: skip
    np.testing.assert_array_equal(np.frombuffer(chunks[0], "<f8"), prediction.probabilities.ravel())
    assert tensors_out[1]["datatype"] == "INT64" and list(tensors_out[1]["data"]) == [2, 0]
    v1 = outputs.v1_outputs((outputs.Wanted("probabilities", "predict_proba"),), prediction, [1])
    assert sorted(v1) == ["classes", "probabilities"]


# --- probabilities in a batch ---------------------------------------------------------------


def test_only_the_parts_that_ask_get_probabilities(tmp_path: Path) -> None:
    runner = build_runner(verify(iris_artifact(tmp_path / "iris")))
    a = np.array([[5.1, 3.5, 1.4, 0.2]])
    b = np.array([[6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3]])
    result = runner.predict_batch([a, b, a], [1, 2, 1], None, [False, True, True])
    assert result.probabilities[0] is None
    np.testing.assert_allclose(result.probabilities[1], runner.model.predict_proba(b), atol=TOL)
    np.testing.assert_allclose(result.probabilities[2], runner.model.predict_proba(a), atol=TOL)
    assert result.predict_calls == 2  # one predict, one predict_proba, for the whole batch
    assert runner.predict_batch([a], [1]).probabilities == []
