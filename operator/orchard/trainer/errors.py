"""The ways a training run fails, each with the reason the operator shows.

The reason is the CamelCase word that reaches `status.reason` of the TrainingJob (through
the pod's termination message); the message is for people and names the column, the
parameter or the metric at fault.

A message reaches `status.message`, events and the termination message, which more
people read than the data: it never quotes the dataset. It may name what the spec named
(dataset.target, dataset.features, a required column, a hyperparameter), and counts and
line numbers; values, and column names the spec did not name, stay in the file. Every
URI in a message is shown through `redact_text`, so no credential of a presigned URL
gets out either.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from orchard.artifacts.redact import redact_text

# Text a library quoted: scikit-learn, numpy and pandas quote the value they choke on
# ('could not convert string to float: 'x'', np.str_('x'), np.int64(3)).
# An apostrophe after a letter is English ("doesn't"), not an opening quote.
_QUOTED = re.compile(r"np\.\w+\([^()]*\)|(?<![A-Za-z])'[^'\n]*'|\"[^\"\n]*\"")
ELIDED = "'...'"
MAX_LIBRARY_MESSAGE = 300


def without_data(message: str, named: Iterable[str] = ()) -> str:
    """A library's message with every quoted value replaced by '...', unless the spec named
    that text itself (a hyperparameter, its value, a column of dataset.features).

    A heuristic for messages we did not write: the values a library quotes come from the
    data. What is left (shapes, counts, the parameter at fault) is what helps.
    """
    keep = {str(n) for n in named}

    def one(match: re.Match[str]) -> str:
        text = match.group(0)
        inner = text[1:-1] if text[0] in "'\"" else None
        return text if inner is not None and inner in keep else ELIDED

    scrubbed = _QUOTED.sub(one, message)
    if len(scrubbed) > MAX_LIBRARY_MESSAGE:
        scrubbed = scrubbed[: MAX_LIBRARY_MESSAGE - 3] + "..."
    return scrubbed


class TrainerError(Exception):
    """A training run that cannot produce a model; `reason` says which kind of failure."""

    reason = "TrainingError"

    def __init__(self, message: str, **details: Any) -> None:
        message = redact_text(message)
        super().__init__(message)
        self.message = message
        self.details = {k: v for k, v in details.items() if v is not None}

    def to_dict(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, **self.details}


class InvalidSpec(TrainerError):
    """The TrainingJob asks for something the trainer will not do (unknown estimator,
    bad hyperparameter, unreadable spec)."""

    reason = "InvalidSpec"


class DatasetUnavailable(TrainerError):
    """The dataset could not be fetched or parsed."""

    reason = "DatasetUnavailable"


class DataCheckFailed(TrainerError):
    """The data failed a declared check; `column` and `check` say which."""

    reason = "DataCheckFailed"

    def __init__(self, message: str, *, check: str, column: str | None = None) -> None:
        super().__init__(message, check=check, column=column)
        self.check = check
        self.column = column


class GateFailed(TrainerError):
    """The trained model missed its quality gate."""

    reason = "GateFailed"

    def __init__(
        self,
        message: str,
        *,
        metric: str,
        value: float | None,
        min: float | None,
        max: float | None,
    ) -> None:
        super().__init__(message, metric=metric, value=value, min=min, max=max)
        self.metric = metric
        self.value = value


class ArtifactStoreError(TrainerError):
    """The artifact could not be written."""

    reason = "ArtifactStoreError"


class TrainingError(TrainerError):
    """The estimator failed while fitting or evaluating."""

    reason = "TrainingError"


class ArtifactVerificationFailed(TrainerError):
    """`orchard evaluate`: an artifact could not be fetched or did not match its digest;
    `artifact` says which (candidate or baseline), `cause` the verifier's reason."""

    reason = "ArtifactVerificationFailed"


class NoEvaluationRows(TrainerError):
    """`orchard evaluate`: no held-out and no labelled production rows to score on."""

    reason = "NoEvaluationRows"


class NoReplayRows(TrainerError):
    """`orchard replay`: the artifact has no held-out rows and no labelled collected rows
    were found, so there is nothing to send."""

    reason = "NoReplayRows"
