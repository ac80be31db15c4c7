"""A ModelVersion's verification outcome and who still uses it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from orchard.api.common import get_condition, to_k8s
from orchard.api.modelversion import ModelVersionStatus
from orchard.decisions.modelversion import (
    deployments_using,
    verification_outcome,
    verification_status,
)

T0 = "2026-11-27T10:00:00Z"
T1 = "2026-11-27T10:00:09Z"


def job(*conditions: tuple[str, str]) -> dict[str, Any]:
    return {
        "metadata": {"name": "penguins-v1-verify"},
        "status": {
            "startTime": T0,
            "completionTime": T1 if ("Complete", "") in conditions else None,
            "conditions": [
                {"type": t, "status": "True", "reason": r, "lastTransitionTime": T1}
                for t, r in conditions
            ],
        },
    }


def pod(state: dict[str, Any], phase: str = "Running") -> dict[str, Any]:
    return {
        "metadata": {"name": "penguins-v1-verify-abcde", "creationTimestamp": T0},
        "status": {
            "phase": phase,
            "containerStatuses": [
                {"name": "verify", "image": "localhost/orchard/trainer:dev", "state": state}
            ],
        },
    }


def terminated(code: int, body: dict[str, Any] | str) -> dict[str, Any]:
    message = body if isinstance(body, str) else json.dumps(body)
    return {
        "terminated": {
            "exitCode": code,
            "reason": "Completed" if code == 0 else "Error",
            "message": message,
        }
    }


OK = {"verified": True, "digest": "sha256:" + "ab" * 32, "files": {"model.joblib": "sha256:x"}}


@pytest.mark.parametrize(
    ("the_job", "pods", "phase", "reason"),
    [
        (None, [], "Pending", "Verifying"),
        (job(), [pod({"running": {"startedAt": T0}})], "Verifying", "Verifying"),
        (job(("Complete", "")), [pod(terminated(0, OK), "Succeeded")], "Ready", "Verified"),
        (
            job(("Failed", "BackoffLimitExceeded")),
            [
                pod(
                    terminated(
                        1,
                        {
                            "error": {
                                "reason": "DigestMismatch",
                                "message": "metadata.json "
                                "has digest sha256:1, but the recorded digest is "
                                "sha256:2",
                            }
                        },
                    ),
                    "Failed",
                )
            ],
            "Failed",
            "DigestMismatch",
        ),
        (
            job(("Failed", "BackoffLimitExceeded")),
            [
                pod(
                    terminated(1, {"error": {"reason": "ArtifactNotFound", "message": "gone"}}),
                    "Failed",
                )
            ],
            "Failed",
            "ArtifactNotFound",
        ),
        (
            job(("Failed", "BackoffLimitExceeded")),
            [pod(terminated(1, "Traceback\nModuleNotFoundError: orchard"), "Failed")],
            "Failed",
            "VerificationFailed",
        ),
        (job(("Failed", "DeadlineExceeded")), [], "Failed", "DeadlineExceeded"),
        (
            job(("Complete", "")),
            [pod(terminated(0, "no report"), "Succeeded")],
            "Failed",
            "VerificationFailed",
        ),
        (
            job(),
            [
                pod(
                    {"waiting": {"reason": "ErrImageNeverPull", "message": "not present"}},
                    "Pending",
                )
            ],
            "Failed",
            "ImageProblem",
        ),
    ],
)
def test_verification_outcomes(
    the_job: dict[str, Any] | None, pods: list[dict[str, Any]], phase: str, reason: str
) -> None:
    outcome = verification_outcome(the_job, pods)
    assert (outcome.phase, outcome.reason) == (phase, reason)
    assert outcome.message


def test_verified_status_sets_both_conditions() -> None:
    outcome = verification_outcome(job(("Complete", "")), [pod(terminated(0, OK), "Succeeded")])
    status = verification_status(ModelVersionStatus(used_by=["web"]), outcome, generation=1)
    assert status.phase == "Ready"
    assert status.verified_at is not None
    assert status.used_by == ["web"]  # kept: another controller owns it
    for type_ in ("ArtifactVerified", "Ready"):
        c = get_condition(status.conditions, type_)
        assert c is not None and c.status == "True" and c.observed_generation == 1
    assert "1 file(s)" in (status.message or "")


def test_the_verifiers_runtime_is_recorded_and_nonsense_is_not() -> None:
    said = {**OK, "runtime": {"name": "onnx", "reason": "labels as the pipeline's", "rows": 90}}
    outcome = verification_outcome(job(("Complete", "")), [pod(terminated(0, said), "Succeeded")])
    status = verification_status(ModelVersionStatus(), outcome, generation=1)
    assert status.runtime is not None
    assert (status.runtime.name, status.runtime.checked_rows) == ("onnx", 90)
    assert status.runtime.reason == "labels as the pipeline's"
    assert to_k8s(status)["runtime"] == {
        "name": "onnx", "reason": "labels as the pipeline's", "checkedRows": 90,
    }  # fmt: skip
    for nonsense in ({"name": "tensorrt", "reason": "x"}, "onnx", {"rows": -1}):
        report = {**OK, "runtime": nonsense}
        pods = [pod(terminated(0, report), "Succeeded")]
        found = verification_outcome(job(("Complete", "")), pods)
        assert found.phase == "Ready" and found.runtime is None  # still verified
    # A verifier that says nothing of the runtime (an older image) leaves none.
    plain = verification_outcome(job(("Complete", "")), [pod(terminated(0, OK), "Succeeded")])
    assert verification_status(status, plain, generation=2).runtime is None


def test_failed_and_pending_status() -> None:
    failed = verification_outcome(
        job(("Failed", "BackoffLimitExceeded")),
        [pod(terminated(1, {"error": {"reason": "DigestMismatch", "message": "m"}}), "Failed")],
    )
    status = verification_status(ModelVersionStatus(), failed, generation=1)
    verified = get_condition(status.conditions, "ArtifactVerified")
    assert verified is not None and verified.status == "False"
    assert verified.reason == "DigestMismatch"
    assert status.verified_at is None
    pending = verification_status(
        ModelVersionStatus(), verification_outcome(job(), []), generation=1
    )
    verified = get_condition(pending.conditions, "ArtifactVerified")
    assert verified is not None and verified.status == "Unknown"
    assert pending.phase == "Verifying"


def md(
    name: str, spec_version: str, stable: str | None = None, canary: str | None = None
) -> dict[str, Any]:
    status = {k: v for k, v in {"stableVersion": stable, "canaryVersion": canary}.items() if v}
    return {"metadata": {"name": name}, "spec": {"modelVersion": spec_version}, "status": status}


def test_deployments_using() -> None:
    mds = [
        md("web", "penguins-v2", stable="penguins-v1", canary="penguins-v2"),
        md("batch", "penguins-v1", stable="penguins-v1"),
        md("other", "iris-v3", stable="iris-v3"),
        {"metadata": {"name": "fresh"}, "spec": {"modelVersion": "penguins-v3"}},
    ]
    assert deployments_using("penguins-v1", mds) == ["batch", "web"]
    assert deployments_using("penguins-v2", mds) == ["web"]
    assert deployments_using("penguins-v3", mds) == ["fresh"]
    assert deployments_using("penguins-v9", mds) == []
    assert deployments_using("penguins-v1", []) == []


def test_a_verifier_that_exited_0_decides_before_the_job_completes() -> None:
    outcome = verification_outcome(job(), [pod(terminated(0, OK), "Succeeded")])
    assert (outcome.phase, outcome.reason) == ("Ready", "Verified")
    failing = verification_outcome(
        job(),
        [pod(terminated(1, {"error": {"reason": "DigestMismatch", "message": "m"}}), "Failed")],
    )
    assert failing.phase == "Verifying"  # a retry (backoffLimit 1) may still come
