"""Ground truth that arrives after the answer: feedback matched to the predictions it is for.

Every inference response carries an `id` (the request's, or one the server makes), and
`POST /v2/models/{m}/feedback` with `{"id": "...", "labels": [one per row]}` gives the
true labels of that request's rows. Each pod remembers the predictions it answered, by
id, in `RecentPredictions` (bounded: the oldest are forgotten first). With several
replicas behind a Service the feedback may reach a pod that did not answer: that pod asks
its peers (`peers.Peers`), and the pod that answered scores the rows. So the design is
stateless across replicas: no pod needs another's memory or a shared store, each counts
only what it answered, and the operator sums the pods' counters as it sums their drift
counts. Feedback that no pod can match (its id never answered, or forgotten) is counted
as unmatched by the pod that received it and answered 404: never dropped in silence.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchard.serving.inputs import Array, BadRequest

MAX_LABEL_CHARS = 256  # of one label (a class name)


class AlreadyLabelled(BadRequest):
    """Feedback for a request whose rows were labelled before."""


@dataclass(frozen=True)
class Feedback:
    """One feedback request, as parsed: the id it is for and the true labels."""

    id: str
    labels: list[Any]


def parse_feedback(request: Any) -> Feedback:
    """`{"id": str, "labels": [...]}`, or BadRequest naming what is wrong."""
    if not isinstance(request, dict):
        raise BadRequest("feedback must be a JSON object with 'id' and 'labels'")
    request_id, labels = request.get("id"), request.get("labels")
    if not isinstance(request_id, str) or not request_id:
        raise BadRequest("feedback 'id' must be the id of an earlier inference response")
    if not isinstance(labels, list) or not labels:
        raise BadRequest("feedback 'labels' must be a non-empty list, one label per row")
    for i, label in enumerate(labels):
        if not isinstance(label, str | int | float) or (
            isinstance(label, float) and not math.isfinite(label)
        ):
            raise BadRequest(f"label {i} is {type(label).__name__}: a string or number expected")
        if isinstance(label, str) and len(label) > MAX_LABEL_CHARS:
            raise BadRequest(f"label {i} is longer than {MAX_LABEL_CHARS} characters")
    return Feedback(request_id, labels)


@dataclass
class Scored:
    """What a request's labels say of its predictions."""

    rows: int = 0
    correct: int = 0  # classification
    by_class: dict[str, tuple[int, int]] = field(default_factory=dict)  # label: (rows, correct)
    abs_error: float = 0.0  # regression
    squared_error: float = 0.0


def _class_labels(labels: list[Any], classes: Array | None) -> list[Any]:
    """Labels in the form the model's classes take, or BadRequest for one that cannot be."""
    kind = classes.dtype.kind if classes is not None else "U"
    out: list[Any] = []
    for i, label in enumerate(labels):
        if kind in "USO":
            if not isinstance(label, str):
                raise BadRequest(f"label {i} must be a string: this model's classes are strings")
            out.append(label)
        elif kind == "b":
            if not isinstance(label, bool):
                raise BadRequest(f"label {i} must be true or false: this model's classes are")
            out.append(label)
        elif isinstance(label, bool) or not isinstance(label, int | float):
            raise BadRequest(f"label {i} must be a number: this model's classes are numbers")
        else:
            out.append(label)
    return out


def score(
    predictions: Array, labels: list[Any], classification: bool, classes: Array | None
) -> Scored:
    """Compare one request's predictions with its true labels (BadRequest when the count
    or a label's type cannot be for them)."""
    if len(labels) != len(predictions):
        raise BadRequest(
            f"{len(labels)} labels for a request of {len(predictions)} rows: one label per row"
        )
    if not classification:
        for i, label in enumerate(labels):
            if isinstance(label, bool) or not isinstance(label, int | float):
                raise BadRequest(f"label {i} must be a number: this model predicts values")
        errors = np.asarray(labels, dtype=float) - np.asarray(predictions, dtype=float)
        return Scored(
            rows=len(labels),
            abs_error=float(np.abs(errors).sum()),
            squared_error=float(np.dot(errors, errors)),
        )
    typed = _class_labels(labels, classes)
    out = Scored(rows=len(typed))
    for label, predicted in zip(typed, predictions.tolist(), strict=True):
        right = label == predicted
        out.correct += right
        key = str(label)
        rows, correct = out.by_class.get(key, (0, 0))
        out.by_class[key] = (rows + 1, correct + right)
    return out


@dataclass
class _Remembered:
    predictions: Array
    labelled: bool = False


class RecentPredictions:
    """The predictions this pod answered, by response id: at most `max_ids` requests
    and `max_rows` rows, the oldest forgotten first. Runs on the event loop only."""

    def __init__(self, max_ids: int, max_rows: int) -> None:
        self.max_ids, self.max_rows = max_ids, max_rows
        self._by_id: OrderedDict[str, _Remembered] = OrderedDict()
        self.rows = 0

    def __len__(self) -> int:
        return len(self._by_id)

    def remember(self, request_id: str, predictions: Array) -> None:
        old = self._by_id.pop(request_id, None)
        if old is not None:  # an id used again: its latest answer is the one labelled
            self.rows -= len(old.predictions)
        if len(predictions) > self.max_rows:
            return
        self._by_id[request_id] = _Remembered(predictions)
        self.rows += len(predictions)
        while len(self._by_id) > self.max_ids or self.rows > self.max_rows:
            _, gone = self._by_id.popitem(last=False)
            self.rows -= len(gone.predictions)

    def knows(self, request_id: str) -> bool:
        return request_id in self._by_id

    def take(self, request_id: str) -> Array:
        """The predictions to label (KeyError when unknown; AlreadyLabelled once taken)."""
        entry = self._by_id[request_id]
        if entry.labelled:
            raise AlreadyLabelled(f"the rows of request {request_id!r} were labelled before")
        return entry.predictions

    def labelled(self, request_id: str) -> None:
        """The labels of `request_id` were counted: a second feedback for it is refused."""
        entry = self._by_id.get(request_id)
        if entry is not None:
            entry.labelled = True
