"""Where a short Job the operator runs in the trainer image stands (the evaluation of a
candidate, the replay of its rows): pure, from the Job and its pods as read.

Such a program reports one JSON object in its termination message (a report, or
`{"error": {"reason", "message"}}`), as the trainer does (docs/artifact-format.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from .training import IMAGE_PROBLEMS, TRAINING_ERROR, clip, termination_objects

JobPhase = Literal["Running", "Succeeded", "Failed"]
Report = TypeVar("Report")
JOB_FAILED = "JobFailed"


@dataclass(frozen=True)
class Outcome(Generic[Report]):
    phase: JobPhase
    report: Report | None = None
    reason: str = ""
    message: str = ""


POD_COUNTS = ("active", "ready", "terminating", "succeeded", "failed")


def pods_may_exist(job: Mapping[str, Any]) -> bool:
    """Whether a Job may have pods to read: the Job controller has started it
    (`status.startTime`, written in the sync that makes its first pods) or counts some.
    One it has not started (just made, suspended, or no Job controller runs) has none; a
    pod made in the moment before its Job's status says so is read on the Job's next
    event, which that status write is."""
    status = job.get("status") or {}
    return bool(status.get("startTime")) or any(status.get(count) for count in POD_COUNTS)


def _failure(data: Mapping[str, Any]) -> tuple[str, str] | None:
    error = data.get("error")
    if not isinstance(error, Mapping):
        return None
    return str(error.get("reason") or JOB_FAILED), clip(str(error.get("message") or ""))


def outcome(
    job: Mapping[str, Any] | None,
    pods: Sequence[Mapping[str, Any]],
    container: str,
    parse: Callable[[Mapping[str, Any]], Report | None],
    failed: str,
) -> Outcome[Report]:
    """The report of `container` once it ended (parsed by `parse`), a failure with the
    reason the program gave (else `failed`, or the Job's own), or Running."""
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            if status.get("name") != container:
                continue
            state = status.get("state") or {}
            waiting = state.get("waiting") or {}
            if waiting.get("reason") in IMAGE_PROBLEMS:
                message = clip(str(waiting.get("message") or ""))
                return Outcome("Failed", reason=str(waiting["reason"]), message=message)
            terminated = state.get("terminated")
            if not terminated:
                continue
            for data in termination_objects(terminated.get("message")):
                report = parse(data)
                if report is not None and terminated.get("exitCode") == 0:
                    return Outcome("Succeeded", report)
                if (why := _failure(data)) is not None:
                    return Outcome("Failed", reason=why[0], message=why[1])
            if terminated.get("exitCode") != 0:
                kind = terminated.get("reason") or TRAINING_ERROR
                message = f"{container} exited {terminated.get('exitCode')} ({kind})"
                return Outcome("Failed", reason=failed, message=message)
    for cond in ((job or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            message = clip(str(cond.get("message") or f"the {container} Job failed"))
            return Outcome("Failed", reason=str(cond.get("reason") or failed), message=message)
    return Outcome("Running")
