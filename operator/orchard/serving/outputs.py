"""What a client asks back: the outputs a request names, and the answer's tensors.

A model serves these outputs (`predict_proba` only a classifier with class probabilities):

=============  ===========  ==============  ===============  ==================================
V2 name        also         datatype        shape            what
=============  ===========  ==============  ===============  ==================================
output-0       predict      the labels'     [rows]           predicted labels (or values)
predict_proba               FP64            [rows, classes]  class probabilities, one column
                                                             per class in the order of the
                                                             output's `parameters.classes`
=============  ===========  ==============  ===============  ==================================

V2: the request's `outputs` names what it wants, each under the name it is answered by
(`{"name": "predict_proba", "parameters": {"binary_data": true}}`); a request that names
none gets `output-0` alone. Only what was named is returned. `parameters.binary_data`
asks for that output in binary (`tensors`), the request's `parameters.binary_data_output`
for every output that does not say.

V1: the request's `parameters.outputs` lists `predictions` (the labels) and/or
`probabilities` (rows of class probabilities, answered with `classes`, their order);
without it, `predictions` alone.

An unknown name, or `predict_proba` from a model without class probabilities, is a
`BadRequest` naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from orchard.serving import tensors
from orchard.serving.inputs import BadRequest
from orchard.serving.model import Prediction, output_data, output_datatype

LABELS = "output-0"
PROBABILITIES = "predict_proba"
V2_NAMES = {LABELS: LABELS, "predict": LABELS, PROBABILITIES: PROBABILITIES}
V1_PARAMETER = "outputs"
V1_NAMES = {"predictions": LABELS, "probabilities": PROBABILITIES}
CLASSES = "classes"  # the parameter (V2) or key (V1) that lists the probabilities' classes
PROBABILITIES_DATATYPE = "FP64"


@dataclass(frozen=True, slots=True)
class Wanted:
    """One output a request asks for: under the name it asked by, in JSON or binary."""

    name: str
    kind: str  # LABELS or PROBABILITIES
    binary: bool = False


LABELS_ONLY = (Wanted(LABELS, LABELS),)
LABELS_ONLY_BINARY = (Wanted(LABELS, LABELS, binary=True),)
V1_DEFAULT = (Wanted("predictions", LABELS),)


def wants_probabilities(wanted: Sequence[Wanted]) -> bool:
    for w in wanted:  # noqa: SIM110 (a loop: `any` and its generator cost 0.5 µs more)
        if w.kind == PROBABILITIES:
            return True
    return False


def requested_v2(request: dict[str, Any], probabilities: bool) -> tuple[Wanted, ...]:
    """The outputs a V2 request asks for (`probabilities`: whether the model has them)."""
    parameters = request.get("parameters")
    binary = False
    if parameters is not None:
        if not isinstance(parameters, dict):
            raise BadRequest("'parameters' must be an object")
        binary = _flag(parameters, tensors.BINARY_DATA_OUTPUT, "parameters") or False
    named = request.get("outputs")
    if named is None:
        return LABELS_ONLY_BINARY if binary else LABELS_ONLY
    if not isinstance(named, list):
        raise BadRequest("'outputs' must be a list of objects with a 'name'")
    wanted: list[Wanted] = []
    for i, output in enumerate(named):
        name = output.get("name") if isinstance(output, dict) else None
        if not isinstance(name, str):
            raise BadRequest(f"outputs[{i}] must be an object with a string 'name'")
        kind = _kind(name, V2_NAMES, probabilities)
        own = output.get("parameters")
        if own is not None and not isinstance(own, dict):
            raise BadRequest(f"output {name!r}: 'parameters' must be an object")
        as_binary = _flag(own, tensors.BINARY_DATA, f"output {name!r}") if own else None
        wanted.append(Wanted(name, kind, binary if as_binary is None else as_binary))
    return _once(wanted)


def requested_v1(request: dict[str, Any], probabilities: bool) -> tuple[Wanted, ...]:
    """The outputs a V1 request asks for in `parameters.outputs`."""
    parameters = request.get("parameters")
    if parameters is None:
        return V1_DEFAULT
    if not isinstance(parameters, dict):
        raise BadRequest("'parameters' must be an object")
    names = parameters.get(V1_PARAMETER)
    if names is None:
        return V1_DEFAULT
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise BadRequest(f"'parameters.{V1_PARAMETER}' must be a non-empty list of names")
    return _once([Wanted(n, _kind(n, V1_NAMES, probabilities)) for n in names])


def metadata(labels_datatype: str, classes: list[Any] | None) -> list[dict[str, Any]]:
    """The model metadata's `outputs`: the labels, and the probabilities when it has them."""
    described: list[dict[str, Any]] = [{"name": LABELS, "datatype": labels_datatype, "shape": [-1]}]
    if classes is not None:
        described.append(
            {
                "name": PROBABILITIES,
                "datatype": PROBABILITIES_DATATYPE,
                "shape": [-1, len(classes)],
                "parameters": {CLASSES: classes},
            }
        )
    return described


def v2_outputs(
    wanted: Sequence[Wanted], prediction: Prediction, classes: list[Any] | None
) -> tuple[list[dict[str, Any]], list[bytes]]:
    """The answer's output tensors, and the raw bytes of its binary ones, in order."""
    out: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for w in wanted:
        values, datatype, parameters = tensor_values(w, prediction, classes)
        tensor: dict[str, Any] = {
            "name": w.name, "shape": list(values.shape), "datatype": datatype,
            "parameters": parameters,
        }  # fmt: skip
        flat = values.ravel()  # row-major, as the protocol writes a tensor's data
        if w.binary:
            raw = tensors.encode(flat, datatype)
            parameters[tensors.BINARY_DATA_SIZE] = len(raw)
            chunks.append(raw)
        else:
            tensor["data"] = output_data(flat)
        out.append(tensor)
    return out, chunks


def v1_outputs(
    wanted: Sequence[Wanted], prediction: Prediction, classes: list[Any] | None
) -> dict[str, Any]:
    """The keys of a V1 answer: each asked name, and `classes` beside probabilities."""
    answer: dict[str, Any] = {}
    for w in wanted:
        values, _, parameters = tensor_values(w, prediction, classes)
        answer[w.name] = output_data(values) if values.ndim == 1 else values
        answer.update(parameters)
    return answer


def tensor_values(
    wanted: Wanted, prediction: Prediction, classes: list[Any] | None
) -> tuple[np.ndarray[Any, Any], str, dict[str, Any]]:
    """An output's values, its V2 datatype and its parameters (REST and gRPC alike)."""
    if wanted.kind == LABELS:
        return prediction.labels, output_datatype(prediction.labels), {}
    assert prediction.probabilities is not None, "probabilities were asked of the batch"
    proba = np.ascontiguousarray(prediction.probabilities, dtype=np.float64)
    return proba, PROBABILITIES_DATATYPE, {CLASSES: classes}


def _kind(name: str, names: dict[str, str], probabilities: bool) -> str:
    kind = names.get(name)
    if kind is None:
        known = [n for n, k in names.items() if probabilities or k != PROBABILITIES]
        raise BadRequest(f"unknown output {name[:40]!r}: this model answers {', '.join(known)}")
    if kind == PROBABILITIES and not probabilities:
        raise BadRequest(f"output {name!r} is not available: this model has no class probabilities")
    return kind


def _flag(parameters: dict[str, Any], key: str, where: str) -> bool | None:
    """A true-or-false parameter, None when it is not given."""
    value = parameters.get(key)
    if value is not None and not isinstance(value, bool):
        raise BadRequest(f"{where}: '{key}' must be true or false")
    return value


def _once(wanted: list[Wanted]) -> tuple[Wanted, ...]:
    names = [w.name for w in wanted]
    for name in names:
        if names.count(name) > 1:
            raise BadRequest(f"output {name!r} is asked for twice")
    return tuple(wanted)
