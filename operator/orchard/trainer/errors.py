"""The ways a training run fails, each with the reason the operator shows.

The reason is the CamelCase word that reaches `status.reason` of the TrainingJob (through
the pod's termination message); the message is for people and names the column, the
parameter or the metric at fault.
"""

from __future__ import annotations

from typing import Any


class TrainerError(Exception):
    """A training run that cannot produce a model; `reason` says which kind of failure."""

    reason = "TrainingError"

    def __init__(self, message: str, **details: Any) -> None:
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
