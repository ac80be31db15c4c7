"""What a ModelVersion's verification Job says, and who still uses a ModelVersion.

Pure: the handlers pass in the Job, its pods and the ModelDeployments as dicts.
The verifier (`python -m orchard.artifacts.verify`) reports through its pod's
termination message: `{"verified": true, ...}` or `{"error": {"reason", "message"}}`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from orchard.api.common import ConditionStatus, now, set_condition
from orchard.api.modelversion import (
    ALLOW_DELETION,
    ModelVersionPhase,
    ModelVersionStatus,
    RuntimeStatus,
)
from orchard.decisions.training import IMAGE_PROBLEM, clip, parse_time, pod_report

VERIFYING = "Verifying"
VERIFIED = "Verified"
VERIFICATION_FAILED = "VerificationFailed"
DIGEST_MISMATCH = "DigestMismatch"
ARTIFACT_NOT_FOUND = "ArtifactNotFound"
JOB_CONFLICT = "JobConflict"  # the verification Job's name is taken by someone else's
INVALID_JOB = "InvalidJob"
START_FAILED = "StartFailed"


@dataclass(frozen=True)
class Verification:
    """Where the verification of a ModelVersion's artifact stands."""

    phase: ModelVersionPhase
    reason: str
    message: str
    at: datetime | None = None
    stop_job: bool = False
    runtime: RuntimeStatus | None = None  # what the verifier found would serve

    @property
    def terminal(self) -> bool:
        return self.phase in ("Ready", "Failed")


def _report(message: str | None) -> Mapping[str, Any] | None:
    if not message:
        return None
    for candidate in [message, *reversed(message.strip().splitlines())]:
        candidate = candidate.strip()
        if candidate.startswith("{"):
            try:
                data = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(data, Mapping):
                return data
    return None


def _terminated(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        terminated = (status.get("state") or {}).get("terminated")
        if terminated:
            return dict(terminated)
    return None


def verification_outcome(
    job: Mapping[str, Any] | None, pods: Sequence[Mapping[str, Any]]
) -> Verification:
    """Decide the verification's phase from its Job and pods."""
    if job is None:
        return Verification("Pending", VERIFYING, "the verification Job does not exist yet")
    conditions = {
        c.get("type"): c
        for c in job.get("status", {}).get("conditions") or []
        if c.get("status") == "True"
    }
    newest = sorted(pods, key=lambda p: p.get("metadata", {}).get("creationTimestamp", ""))
    if "Failed" not in conditions:
        # A verifier that exited 0 and said so decides at once (the Job completes after).
        for pod in newest:
            terminated = _terminated(pod)
            report = _report(terminated.get("message")) if terminated else None
            if terminated and terminated.get("exitCode") == 0 and report and report.get("verified"):
                at = parse_time(terminated.get("finishedAt"))
                return _verified(report, at)
    if "Complete" in conditions:
        at = parse_time(job.get("status", {}).get("completionTime"))
        for pod in reversed(newest):
            terminated = _terminated(pod)
            report = _report(terminated.get("message")) if terminated else None
            if terminated and terminated.get("exitCode") == 0 and report and report.get("verified"):
                return _verified(report, at)
        return Verification(
            "Failed", VERIFICATION_FAILED, "the verifier exited 0 but did not report success", at
        )
    if "Failed" in conditions:
        at = parse_time(conditions["Failed"].get("lastTransitionTime"))
        for pod in reversed(newest):
            terminated = _terminated(pod)
            if not terminated:
                continue
            report = _report(terminated.get("message"))
            error = report.get("error") if report else None
            if isinstance(error, Mapping):
                return Verification(
                    "Failed",
                    str(error.get("reason") or VERIFICATION_FAILED),
                    clip(str(error.get("message") or "")),
                    at,
                )
            tail = clip(terminated.get("message") or "", 512)
            return Verification(
                "Failed",
                VERIFICATION_FAILED,
                f"the verifier exited with code {terminated.get('exitCode')}: {tail}".rstrip(": "),
                at,
            )
        return Verification(
            "Failed",
            str(conditions["Failed"].get("reason") or VERIFICATION_FAILED),
            clip(str(conditions["Failed"].get("message") or "the verification Job failed")),
            at,
        )
    for pod in newest:
        waiting = pod_report(pod).waiting
        if waiting and waiting.reason == IMAGE_PROBLEM:
            return Verification("Failed", IMAGE_PROBLEM, waiting.message, stop_job=True)
    return Verification("Verifying", VERIFYING, "checking the artifact's digests")


def _verified(report: Mapping[str, Any], at: datetime | None) -> Verification:
    return Verification("Ready", VERIFIED, _verified_message(report), at, runtime=_runtime(report))


def _runtime(report: Mapping[str, Any]) -> RuntimeStatus | None:
    """The report's runtime (None: a verifier that does not say, or says nonsense)."""
    found = report.get("runtime")
    if not isinstance(found, Mapping):
        return None
    try:
        return RuntimeStatus(
            name=found.get("name"), reason=clip(str(found.get("reason") or ""), 1024),
            checked_rows=found.get("rows"),
        )  # fmt: skip
    except ValueError:
        return None


def _verified_message(report: Mapping[str, Any]) -> str:
    files = report.get("files")
    count = f" and {len(files)} file(s) it lists" if isinstance(files, Mapping | list) else ""
    return f"metadata.json matches the recorded digest{count}"


def verification_status(
    previous: ModelVersionStatus,
    outcome: Verification,
    *,
    generation: int | None,
    at: datetime | None = None,
) -> ModelVersionStatus:
    """The status from a verification outcome: phase, ArtifactVerified and Ready."""
    conditions = list(previous.conditions)
    verified: ConditionStatus
    ready: ConditionStatus
    if outcome.phase == "Ready":
        verified, ready = "True", "True"
    elif outcome.phase == "Failed":
        verified, ready = "False", "False"
    else:
        verified, ready = "Unknown", "False"
    conditions = set_condition(
        conditions,
        "ArtifactVerified",
        verified,
        outcome.reason,
        outcome.message,
        generation=generation,
        at=at,
    )
    conditions = set_condition(
        conditions, "Ready", ready, outcome.reason, outcome.message, generation=generation, at=at
    )
    return previous.model_copy(
        update={
            "phase": outcome.phase,
            "observed_generation": generation,
            "conditions": conditions,
            "verified_at": (outcome.at or at or now())
            if outcome.phase == "Ready"
            else previous.verified_at,
            "reason": outcome.reason,
            "message": outcome.message,
            "runtime": outcome.runtime if outcome.phase == "Ready" else previous.runtime,
        }
    )


def versions_used(deployment: Mapping[str, Any]) -> frozenset[str]:
    """The ModelVersions one ModelDeployment serves or is about to serve: named in spec,
    or still serving as stable or canary while a rollout moves on. One that is being
    deleted uses nothing any more."""
    if (deployment.get("metadata") or {}).get("deletionTimestamp"):
        return frozenset()
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    named = (spec.get("modelVersion"), status.get("stableVersion"), status.get("canaryVersion"))
    return frozenset(str(v) for v in named if v)


def deployments_using(name: str, deployments: Iterable[Mapping[str, Any]]) -> list[str]:
    """The ModelDeployments that use a ModelVersion (`versions_used`), sorted."""
    return sorted(
        str(md.get("metadata", {}).get("name")) for md in deployments if name in versions_used(md)
    )


# --- The deletion guard --------------------------------------------------------------------

DELETION_BLOCKED = "DeletionBlocked"
IN_USE = "InUse"


def deletion_guarded(status: Mapping[str, Any], annotations: Mapping[str, str]) -> bool:
    """Whether deleting the version needs the guard (and so a finalizer): a ModelDeployment
    used it when last seen (`status.usedBy`), and no one allowed the deletion with the
    annotation `orchard.dev/allow-deletion: "true"`."""
    return bool(status.get("usedBy")) and annotations.get(ALLOW_DELETION) != "true"


def in_use_message(name: str, users: Sequence[str], retry_in: float) -> str:
    return (
        f"ModelVersion {name} is used by ModelDeployment(s) {', '.join(users)}; it will be "
        f"deleted once none uses it (checked again in {retry_in:.0f} s, or at once when "
        f"one stops using it), or at once with the annotation {ALLOW_DELETION}=true"
    )


def deletion_blocked(
    previous: ModelVersionStatus,
    users: Sequence[str],
    message: str,
    *,
    generation: int | None,
    at: datetime | None = None,
) -> ModelVersionStatus:
    """The status of a version whose deletion waits: DeletionBlocked True (InUse) while a
    deployment uses it, and usedBy as found (none: the deletion goes ahead)."""
    conditions = list(previous.conditions)
    if users:
        conditions = set_condition(
            conditions, DELETION_BLOCKED, "True", IN_USE, message, generation=generation, at=at
        )
    else:
        conditions = [c for c in conditions if c.type != DELETION_BLOCKED]
    return previous.model_copy(update={"conditions": conditions, "used_by": list(users)})
