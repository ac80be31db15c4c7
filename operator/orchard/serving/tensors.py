"""The Open Inference Protocol's binary tensor extension: raw tensor bytes, in and out.

A body with binary tensors is a JSON header followed by the raw bytes of those tensors,
one after another in the order of the header's `inputs` (or `outputs`). The HTTP header
`Inference-Header-Content-Length` gives the JSON header's length in bytes, and each
binary tensor says its own byte size in `parameters.binary_data_size` instead of
carrying `data`. Numbers are little-endian, row-major; a BYTES element is a 4-byte
little-endian length followed by that many bytes (UTF-8 text here).

Pure functions over bytes and numpy arrays: what is wrong with a client's bytes is a
`MalformedTensor`, which the request parser turns into a 400 naming the tensor.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

Array: TypeAlias = npt.NDArray[Any]

HEADER_LENGTH = "inference-header-content-length"  # the HTTP header, lower case
BINARY_DATA_SIZE = "binary_data_size"  # a tensor's parameter: its bytes after the header
BINARY_DATA = "binary_data"  # a requested output's parameter: answer it in binary
BINARY_DATA_OUTPUT = "binary_data_output"  # the request's parameter: every output in binary
EXTENSION = "binary_tensor_data"  # its name in the server metadata's `extensions`

# The numeric datatypes of the protocol, as the little-endian numpy types of their bytes.
DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in {
        "BOOL": "?", "UINT8": "u1", "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8",
        "INT8": "i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8",
        "FP16": "<f2", "FP32": "<f4", "FP64": "<f8",
    }.items()
}  # fmt: skip
BYTES = "BYTES"
_LENGTH = struct.Struct("<I")


class MalformedTensor(ValueError):
    """Binary tensor bytes that do not match what their JSON header says."""


def split(body: bytes, header_length: int) -> tuple[bytes, memoryview]:
    """The JSON header and the binary part of a body whose header is `header_length` bytes."""
    if header_length > len(body):
        raise MalformedTensor(
            f"{HEADER_LENGTH} is {header_length}, but the body has only {len(body)} bytes"
        )
    view = memoryview(body)
    return bytes(view[:header_length]), view[header_length:]


def sections(tensors: Sequence[Any], binary: memoryview) -> list[memoryview | None]:
    """Each tensor's bytes from the binary part (None for a tensor with JSON `data`).

    The binary tensors' sizes must add up to the binary part exactly: bytes left over
    mean the client and the server read the body differently."""
    out: list[memoryview | None] = []
    offset = 0
    for tensor in tensors:
        size = binary_size(tensor)
        if size is None:
            out.append(None)
            continue
        if offset + size > len(binary):
            raise MalformedTensor(
                f"input {_name(tensor)}: {BINARY_DATA_SIZE} {size} goes past the end of the "
                f"body's {len(binary)} binary bytes"
            )
        out.append(binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise MalformedTensor(
            f"the body has {len(binary)} bytes after its JSON header, "
            f"but its inputs' {BINARY_DATA_SIZE} add up to {offset}"
        )
    return out


def binary_size(tensor: Any) -> int | None:
    """A tensor's `parameters.binary_data_size`, None when it has none."""
    parameters = tensor.get("parameters") if isinstance(tensor, dict) else None
    if not isinstance(parameters, dict) or BINARY_DATA_SIZE not in parameters:
        return None
    size = parameters[BINARY_DATA_SIZE]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise MalformedTensor(
            f"input {_name(tensor)}: {BINARY_DATA_SIZE} must be a non-negative integer"
        )
    return size


def decode(raw: memoryview, datatype: str, count: int) -> Array | list[str]:
    """`count` elements of `datatype` from their raw bytes: a flat array, or a list of
    strings for BYTES."""
    if datatype == BYTES:
        return decode_strings(raw, count)
    dtype = DTYPES[datatype]
    if len(raw) != count * dtype.itemsize:
        raise MalformedTensor(
            f"{len(raw)} bytes do not hold {count} {datatype} values "
            f"({count * dtype.itemsize} bytes)"
        )
    return np.frombuffer(raw, dtype=dtype)


def decode_strings(raw: memoryview, count: int) -> list[str]:
    """`count` length-prefixed UTF-8 strings, which must fill `raw` exactly."""
    out: list[str] = []
    offset, end = 0, len(raw)
    while offset < end and len(out) < count:
        if offset + 4 > end:
            raise MalformedTensor("BYTES element cut short in its 4-byte length")
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > end:
            raise MalformedTensor(f"BYTES element of {length} bytes goes past the end")
        try:
            out.append(str(raw[offset : offset + length], "utf-8"))
        except UnicodeDecodeError:
            raise MalformedTensor(f"BYTES element {len(out)} is not UTF-8 text") from None
        offset += length
    if len(out) != count or offset != end:
        raise MalformedTensor(f"{len(raw)} bytes do not hold exactly {count} BYTES elements")
    return out


def encode(values: Array | Sequence[Any], datatype: str) -> bytes:
    """The raw bytes of a tensor of `datatype`, row-major (BYTES: length-prefixed text)."""
    if datatype == BYTES:
        return encode_strings(v if isinstance(v, str) else str(v) for v in values)
    return np.ascontiguousarray(values, dtype=DTYPES[datatype]).tobytes()


def encode_strings(values: Iterable[str]) -> bytes:
    """Each string as its 4-byte little-endian UTF-8 length and its bytes."""
    parts: list[bytes] = []
    for value in values:
        data = value.encode("utf-8")
        parts.append(_LENGTH.pack(len(data)))
        parts.append(data)
    return b"".join(parts)


def _name(tensor: Any) -> str:
    name = tensor.get("name") if isinstance(tensor, dict) else None
    return repr(name[:40]) if isinstance(name, str) else "?"
