"""Request bodies (Open Inference Protocol V1 and V2) to model rows, and the errors for bad ones.

Pure functions over already-decoded JSON (and `Schema.check_body` over the raw bytes,
before they are decoded). Every problem with what the caller sent is a `BadRequest`,
which the app turns into a 4xx with a one-line message: `InvalidValue` (400
invalid_value) for a value no model should be asked to score, a number beyond
±`limits.MAX_ABS_VALUE` or of the wrong type for its column; `TooManyRows` (413) beyond
the row cap; plain `BadRequest` (400 bad_request) for a body of the wrong shape. The
model never sees such rows, so it can only fail on rows it should answer.

The rows of a request take one of two forms, fixed per model by its input schema:
- all columns numeric (or no schema): one float64 array of shape (n, d), NaN for missing;
- some string columns: a list of d one-dimensional arrays of length n, float64 for numeric
  columns and object (str or NaN) for string columns.
Both request styles (one 2-D tensor in schema order, or one named input per column) give
the same form, so requests of either style share a batch. A tensor's values come from
its JSON `data` or, with the binary tensor extension, from the body's bytes after the
JSON (`tensors`). One 2-D BYTES tensor is how clients send mixed rows (tritonclient
writes every element of an object array as text): it is read column by column, its
numeric columns' text as numbers (`""` and `"nan"` missing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

from orchard.serving import tensors
from orchard.serving.artifact import Column
from orchard.serving.limits import MAX_ABS_VALUE, Limits

Array: TypeAlias = npt.NDArray[Any]
Rows: TypeAlias = Array | list[Array]

NUMERIC_DATATYPES = frozenset(tensors.DTYPES)
DATATYPES = NUMERIC_DATATYPES | {tensors.BYTES}
DEFAULT_MAX_ROWS = Limits().max_request_rows
_SHOWN_CHARS = 40  # of a value quoted in an error message
_SCAN_CHUNK = 1 << 20  # bytes per step of the string-aware count in `check_body`


class BadRequest(Exception):
    """What the caller sent cannot be read as rows for this model (HTTP 400)."""


class InvalidValue(BadRequest):
    """A value out of range, or of the wrong type for its column (HTTP 400 invalid_value)."""


class TooManyRows(BadRequest):
    """More rows than one request may carry (HTTP 413 too_many_rows)."""


class Schema:
    """The model's raw input columns, and how requests map onto them."""

    def __init__(self, columns: Sequence[Column], n_features: int | None = None) -> None:
        self.columns = list(columns)
        self.names = [c.name for c in self.columns]
        self.index = {c.name: i for i, c in enumerate(self.columns)}
        self.numeric = all(c.numeric for c in self.columns)
        self.width: int | None = len(self.columns) if self.columns else n_features

    def check_body(self, body: bytes, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        """Refuse, before decoding, a body with more JSON values than `max_rows` rows hold.

        Decoding costs time (holding the GIL) and memory per value, not per byte: 4 MB of
        `[0],` is a million rows, about 0.4 s and 100 MB to decode. Commas and opening
        brackets bound the values and containers; a request in any accepted form needs
        at most 2 (width + 1) of them per row, plus a few per input for names and shapes.
        """
        if self.width is None:
            return  # no width to bound by: the body size limit still holds
        allowed = max_rows * 2 * (self.width + 1) + 16 * (self.width + 4)
        if structure_count(body, allowed) > allowed:
            raise TooManyRows(
                f"the body holds more values than {max_rows} rows of {self.width} columns"
            )

    # --- V2 -----------------------------------------------------------------------------

    def parse_v2(
        self,
        body: Any,
        max_rows: int = DEFAULT_MAX_ROWS,
        binary: memoryview | None = None,
        sections: Sequence[memoryview | None] | None = None,
    ) -> tuple[Rows, int]:
        """Rows from a V2 inference request: one 2-D tensor, or one named input per column.

        `binary`: the body's bytes after its JSON header, which its inputs with a
        `binary_data_size` parameter are read from (None: every input has JSON `data`).
        `sections`: each input's raw bytes already apart, one per input (gRPC's
        `raw_input_contents`; None for an input with `data`)."""
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object with 'inputs'")
        inputs = body.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise BadRequest("'inputs' must be a non-empty list of tensors")
        raw: list[memoryview | None] = [None] * len(inputs)
        if sections is not None:
            if len(sections) != len(inputs):
                raise BadRequest(f"{len(sections)} raw input contents for {len(inputs)} inputs")
            raw = list(sections)
        elif binary is not None:
            try:
                raw = tensors.sections(inputs, binary)
            except tensors.MalformedTensor as exc:
                raise BadRequest(str(exc)) from None
        given = [_tensor(t, i, raw[i], max_rows) for i, t in enumerate(inputs)]
        if self.columns and all(name in self.index for name, _, _, _ in given):
            return self._named_v2(given)
        if len(given) == 1:
            name, shape, datatype, data = given[0]
            return self._tensor_v2(name, shape, datatype, data)
        unknown = [_show(t[0]) for t in given if t[0] not in self.index]
        raise BadRequest(
            f"unknown input(s) {', '.join(unknown[:5])}: send one 2-D tensor, "
            f"or one input per column of {self.names}"
        )

    def _tensor_v2(self, name: str, shape: list[int], datatype: str, data: Any) -> tuple[Rows, int]:
        where = f"input {_show(name)}"
        if len(shape) != 2:
            raise BadRequest(f"{where}: shape {_show(shape)} is not 2-D [rows, columns]")
        n, d = shape
        if self.width is not None and d != self.width:
            raise BadRequest(
                f"{where}: shape {shape} has {d} columns, the model takes {self.width}"
            )
        if self.numeric:
            if datatype == "BYTES":
                raise InvalidValue(f"{where}: datatype BYTES, the model takes numbers")
            arr = _floats(data, where)
            if arr.size != n * d:
                raise BadRequest(f"{where}: {arr.size} values do not fill shape {shape}")
            return arr.reshape(n, d), n
        flat = _flatten(data, where, n * d)
        if len(flat) != n * d:
            raise BadRequest(f"{where}: {len(flat)} values do not fill shape {shape}")
        text = datatype == tensors.BYTES
        cols = [self._column(c, flat[j::d], where, text) for j, c in enumerate(self.columns)]
        return cols, n

    def _named_v2(self, tensors: list[tuple[str, list[int], str, Any]]) -> tuple[Rows, int]:
        given: dict[str, Array] = {}
        n_rows: int | None = None
        for name, shape, datatype, data in tensors:
            if name in given:
                raise BadRequest(f"input {name!r} is given twice")
            if len(shape) not in (1, 2) or (len(shape) == 2 and shape[1] != 1):
                raise BadRequest(f"input {name!r}: shape {_show(shape)} is not [rows] or [rows, 1]")
            column = self.columns[self.index[name]]
            if column.numeric and datatype == "BYTES":
                raise InvalidValue(f"input {name!r}: datatype BYTES, the column is a {column.type}")
            if not column.numeric and datatype != "BYTES":
                raise InvalidValue(
                    f"input {name!r}: datatype {datatype}, the column is a string (BYTES)"
                )
            values = _flatten(data, f"input {name!r}", shape[0])
            if len(values) != shape[0]:
                raise BadRequest(f"input {name!r}: {len(values)} values for shape {shape}")
            if n_rows is not None and shape[0] != n_rows:
                raise BadRequest(f"input {name!r} has {shape[0]} rows, other inputs have {n_rows}")
            n_rows = shape[0]
            given[name] = self._column(column, values, name)
        missing = [c for c in self.names if c not in given]
        if missing:
            raise BadRequest(f"missing feature(s): {', '.join(missing)}")
        assert n_rows is not None
        return self._assemble([given[c] for c in self.names]), n_rows

    # --- V1 -----------------------------------------------------------------------------

    def parse_v1(self, body: Any, max_rows: int = DEFAULT_MAX_ROWS) -> tuple[Rows, int]:
        """Rows from a V1 predict request: `instances` as lists in schema order, or objects."""
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object with 'instances'")
        instances = body.get("instances", body.get("inputs"))
        if not isinstance(instances, list) or not instances:
            raise BadRequest("'instances' must be a non-empty list")
        n = len(instances)
        _check_rows(n, max_rows, "instances")
        if all(isinstance(row, dict) for row in instances):
            if not self.columns:
                raise BadRequest("this model has no input schema: send instances as lists")
            for i, row in enumerate(instances):
                if len(row) != len(self.columns) or not all(k in self.index for k in row):
                    missing = [c for c in self.names if c not in row]
                    if missing:
                        raise BadRequest(f"instance {i}: missing feature(s): {', '.join(missing)}")
                    extra = [_cut(k) for k in row if k not in self.index]
                    raise BadRequest(f"instance {i}: unknown feature(s): {', '.join(extra[:5])}")
            cols = [
                self._column(c, [row[c.name] for row in instances], c.name) for c in self.columns
            ]
            return self._assemble(cols), n
        if all(isinstance(row, list) for row in instances):
            for i, row in enumerate(instances):
                if self.width is not None and len(row) != self.width:
                    raise BadRequest(
                        f"instance {i} has {len(row)} values, the model takes {self.width}"
                    )
            if self.numeric:
                arr = _floats(instances, "instances")
                if arr.ndim != 2:
                    raise BadRequest("instances must be rows of scalars")
                return arr, n
            cols = [
                self._column(c, [row[j] for row in instances], "instances")
                for j, c in enumerate(self.columns)
            ]
            return cols, n
        raise BadRequest("instances must all be lists (in schema order) or all be objects")

    # --- columns ------------------------------------------------------------------------

    def _column(
        self, column: Column, values: Sequence[Any] | Array, where: str, text: bool = False
    ) -> Array:
        """One column's values as float64 (numeric) or object (string) with NaN for missing.

        `text`: the values come from a BYTES tensor, where numbers may be written as text."""
        if column.numeric:
            arr = _floats(_numbers_from_text(values, where, column) if text else values, where)
            if arr.ndim != 1:
                raise BadRequest(f"{where}: column {column.name!r} must hold scalars")
            return arr
        out = np.empty(len(values), dtype=object)
        for i, v in enumerate(values):
            if v is None:
                out[i] = np.nan
            elif isinstance(v, str):
                out[i] = v
            else:
                raise InvalidValue(f"{where}: column {column.name!r} takes strings, got {_show(v)}")
        return out

    def _assemble(self, cols: list[Array]) -> Rows:
        return np.column_stack(cols) if self.numeric else cols


def _tensor(
    t: Any, i: int, raw: memoryview | None, max_rows: int
) -> tuple[str, list[int], str, Any]:
    """An input's name, shape, datatype and values (JSON `data`, or decoded from `raw`)."""
    if not isinstance(t, dict):
        raise BadRequest(f"inputs[{i}] must be an object with name, shape, datatype, data")
    name, shape, datatype, data = t.get("name"), t.get("shape"), t.get("datatype"), t.get("data")
    if not isinstance(name, str):
        raise BadRequest(f"inputs[{i}]: 'name' must be a string")
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
    ):
        raise BadRequest(f"input {_show(name)}: 'shape' must be a list of non-negative integers")
    if not isinstance(datatype, str) or datatype not in DATATYPES:  # a list is unhashable
        raise BadRequest(f"input {_show(name)}: unknown datatype {_show(datatype)}")
    if raw is None and not isinstance(data, list):
        if _binary_size(t) is not None:
            raise BadRequest(
                f"input {_show(name)}: {tensors.BINARY_DATA_SIZE} without the request header "
                f"{tensors.HEADER_LENGTH}"
            )
        raise BadRequest(f"input {_show(name)}: 'data' must be a list")
    if raw is not None and data is not None:
        raise BadRequest(f"input {_show(name)}: both 'data' and {tensors.BINARY_DATA_SIZE}")
    if any(s == 0 for s in shape):
        raise BadRequest(f"input {_show(name)}: shape {_show(shape)} holds no rows")
    _check_rows(shape[0], max_rows, f"input {_show(name)}")
    if raw is not None:
        try:
            data = tensors.decode(raw, datatype, math.prod(shape))
        except tensors.MalformedTensor as exc:
            raise BadRequest(f"input {_show(name)}: {exc}") from None
    return name, shape, datatype, data


def _binary_size(t: dict[str, Any]) -> int | None:
    try:
        return tensors.binary_size(t)
    except tensors.MalformedTensor as exc:
        raise BadRequest(str(exc)) from None


def _check_rows(n: int, max_rows: int, where: str) -> None:
    if n > max_rows:
        raise TooManyRows(f"{where}: {n} rows, more than the {max_rows} a request may carry")


def _cut(text: str) -> str:
    """Text for an error message, cut short (a client may send megabytes)."""
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "..."


def _show(value: Any) -> str:
    """A value for an error message: its repr, cut short."""
    return _cut(repr(value))


def _flatten(data: list[Any] | Array, where: str, limit: int) -> list[Any] | Array:
    """Row-major values of a flat or nested list, at most `limit` + 1 of them (a binary
    tensor's values are flat already).

    A loop, not recursion: JSON may nest a thousand levels deep, past Python's stack.
    """
    if isinstance(data, np.ndarray) or not any(isinstance(v, list) for v in data):
        return data
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        for v in stack[-1]:
            if isinstance(v, list):
                stack.append(iter(v))
                break
            out.append(v)
            if len(out) > limit:
                return out  # the caller finds the values do not fill the shape
        else:
            stack.pop()
    return out


def _numbers_from_text(values: Sequence[Any] | Array, where: str, column: Column) -> list[Any]:
    """A BYTES tensor's values for a numeric column: text parsed as a number (`""` is
    missing, and so is `"nan"`, as NaN), other values as they are."""
    out: list[Any] = []
    for v in values:
        if isinstance(v, str):
            try:
                v = float(v) if v.strip() else None
            except ValueError:
                raise InvalidValue(
                    f"{where}: column {column.name!r} takes numbers, got {_show(v)}"
                ) from None
        out.append(v)
    return out


def _floats(values: Any, where: str) -> Array:
    """Numbers (null for missing) as float64; strings, objects, ragged rows or numbers
    beyond float32's range are refused."""
    try:
        arr = np.asarray(values)
    except (ValueError, TypeError):
        raise BadRequest(f"{where}: rows of unequal length or nested too deeply") from None
    kind = arr.dtype.kind
    if kind == "b":
        return arr.astype(np.float64)
    if kind in "fiu":
        out = arr.astype(np.float64, copy=False)
    elif kind == "O":
        for v in arr.flat:
            if v is not None and not isinstance(v, int | float):
                raise InvalidValue(f"{where}: expected numbers or null, got {_show(v)}")
        out = arr.astype(np.float64)
    else:
        got = "strings" if kind == "U" else str(arr.dtype)
        raise InvalidValue(f"{where}: expected numbers, got {got}")
    _check_range(out, where)
    return out


def _check_range(arr: Array, where: str) -> None:
    """Every value within ±MAX_ABS_VALUE or NaN (a null: missing)."""
    with np.errstate(invalid="ignore"):
        beyond = np.abs(arr) > MAX_ABS_VALUE  # NaN compares False: missing stays allowed
    if beyond.any():
        value = float(arr.flat[int(np.argmax(beyond))])
        raise InvalidValue(
            f"{where}: {value!r} is beyond ±{MAX_ABS_VALUE:.7g}, the range a model accepts"
        )


def structure_count(body: bytes, enough: int) -> int:
    """Commas and opening brackets of a JSON text outside its strings, or a count above
    `enough` (counting stops mattering there).

    The quick count takes every comma and bracket; only when that is above `enough` are
    those inside strings (which may hold any number of them) left out, with escaped
    backslashes and quotes removed first so that every remaining quote opens or closes
    a string.
    """
    quick = body.count(b",") + body.count(b"[") + body.count(b"{")
    if quick <= enough or b'"' not in body:
        return quick
    text = np.frombuffer(body.replace(b"\\\\", b"").replace(b'\\"', b""), dtype=np.uint8)
    count = 0
    inside = 0  # 1 while the scan is inside a string
    for start in range(0, text.size, _SCAN_CHUNK):
        part = text[start : start + _SCAN_CHUNK]
        # Quotes seen so far, modulo 256: its parity says whether a byte is in a string.
        quotes = np.cumsum(part == ord('"'), dtype=np.uint8)
        outside = ((quotes + inside) & 1) == 0
        marks = (part == ord(",")) | (part == ord("[")) | (part == ord("{"))
        count += int(np.count_nonzero(marks & outside))
        inside = (inside + int(quotes[-1])) & 1
        if count > enough:
            break
    return count
