"""manifests/argocd/argocd-cm.yaml, judged by Argo CD's own code: the `argocd` binary built
from its Go module (`make argocd`) evaluates each health script and action offline with
`argocd admin settings resource-overrides`, on objects whose status the operator's status
models accept (each fixture is validated against them first, so none can drift from what
the controllers write)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import kubectl

from orchard.api import (
    RETRAIN_REQUEST_ANNOTATION,
    ROLLOUT_ACTION_ANNOTATION,
    ModelDeployment,
    ModelVersion,
    TrainingJob,
)
from tests.cluster.harness.common import build_dir

ROOT = Path(__file__).resolve().parents[2]
ARGOCD_CM = ROOT / "manifests" / "argocd" / "argocd-cm.yaml"
ARGOCD = build_dir("argocd") / "argocd"
MODELS: dict[str, Any] = {
    "TrainingJob": TrainingJob,
    "ModelVersion": ModelVersion,
    "ModelDeployment": ModelDeployment,
}
# The spec of each kind's sample (manifests/samples), beside the statuses below.
SPECS: dict[str, dict[str, Any]] = {
    kind: yaml.safe_load((ROOT / "manifests" / "samples" / f"{kind.lower()}.yaml").read_text())[
        "spec"
    ]
    for kind in MODELS
}


@pytest.fixture(scope="module")
def argocd() -> Path:
    if not (ARGOCD.parent / ".complete").exists():
        reason = f"no argocd build at {ARGOCD.parent} (make argocd)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return ARGOCD


def cond(type_: str, status: str, reason: str, message: str) -> dict[str, str]:
    return {"type": type_, "status": status, "reason": reason, "message": message}


def obj(
    kind: str,
    status: dict[str, Any] | None,
    generation: int = 2,
    spec: dict[str, Any] | None = None,
    **meta: Any,
) -> Any:
    body: dict[str, Any] = {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "iris", "namespace": "ml", "generation": generation, **meta},
        "spec": spec or SPECS[kind],
    }
    if status is not None:
        body["status"] = status
    MODELS[kind].model_validate(body)  # a status the operator could have written
    return body


def resource_overrides(argocd: Path, tmp_path: Path, body: Any, *args: str) -> str:
    path = tmp_path / "object.yaml"
    path.write_text(yaml.safe_dump(body))
    proc = subprocess.run(
        [str(argocd), "admin", "settings", "resource-overrides", args[0], str(path), *args[1:],
         "--argocd-cm-path", str(ARGOCD_CM)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def health(argocd: Path, tmp_path: Path, body: Any) -> tuple[str, str]:
    """STATUS and MESSAGE as `argocd admin settings resource-overrides health` prints them."""
    out = resource_overrides(argocd, tmp_path, body, "health")
    fields = dict(line.split(": ", 1) for line in out.splitlines() if ": " in line)
    return fields["STATUS"], fields.get("MESSAGE", "")


SERVING = cond("Ready", "True", "Serving", "2 stable pods ready")
NOT_DEGRADED = cond("Degraded", "False", "Serving", "iris-v1 serves")
# fmt: off
CASES: list[tuple[str, Any, str, str]] = [
    # -- what every kind shares: the operator has not reported, or not on this generation
    ("TrainingJob", obj("TrainingJob", None), "Progressing", "Waiting for the operator"),
    ("ModelVersion", obj("ModelVersion", None), "Progressing", "Waiting for the operator"),
    ("ModelDeployment", obj("ModelDeployment", None), "Progressing", "Waiting for the operator"),
    (
        "spec changed, not yet observed",
        obj("ModelDeployment", {"phase": "Stable", "observedGeneration": 1,
                                "stableVersion": "iris-v1", "conditions": [SERVING]}),
        "Progressing", "observe generation 2",
    ),
    (
        "no observedGeneration at all",
        obj("TrainingJob", {"phase": "Succeeded", "modelVersion": "iris-v2"}),
        "Progressing", "observe generation 2",
    ),
    # -- TrainingJob
    (
        "training",
        obj("TrainingJob", {"phase": "Running", "observedGeneration": 2, "reason": "JobRunning",
                            "message": "Job iris-train-1 is running"}),
        "Progressing", "JobRunning: Job iris-train-1 is running",
    ),
    (
        "trained and registered",
        obj("TrainingJob", {"phase": "Succeeded", "observedGeneration": 2,
                            "modelVersion": "iris-v2", "reason": "Registered"}),
        "Healthy", "Registered iris-v2",
    ),
    (
        "training failed",
        obj("TrainingJob", {"phase": "Failed", "observedGeneration": 2, "reason": "GateFailed",
                            "message": "accuracy 0.61 < minimum 0.9"}),
        "Degraded", "GateFailed: accuracy 0.61 < minimum 0.9",
    ),
    # -- ModelVersion
    (
        "verifying",
        obj("ModelVersion", {"phase": "Verifying", "observedGeneration": 2,
                             "reason": "Verifying", "message": "checking the artifact"}),
        "Progressing", "Verifying: checking the artifact",
    ),
    (
        "verified",
        obj("ModelVersion", {"phase": "Ready", "observedGeneration": 2, "reason": "Verified",
                             "message": "every file matches its sha256"}),
        "Healthy", "Verified: every file matches its sha256",
    ),
    (
        "verification failed",
        obj("ModelVersion", {"phase": "Failed", "observedGeneration": 2,
                             "reason": "DigestMismatch", "message": "model.joblib was altered"}),
        "Degraded", "DigestMismatch: model.joblib was altered",
    ),
    # -- ModelDeployment
    (
        "deploying the first version",
        obj("ModelDeployment", {"phase": "Pending", "observedGeneration": 2, "reason": "Deploying",
                                "message": "deploying iris-v2"}),
        "Progressing", "Deploying: deploying iris-v2",
    ),
    (
        "stable and serving",
        obj("ModelDeployment", {"phase": "Stable", "observedGeneration": 2,
                                "stableVersion": "iris-v2", "reason": "Stable",
                                "message": "iris-v2 serves", "conditions": [SERVING]}),
        "Healthy", "Stable: iris-v2 serves",
    ),
    (
        "stable but no pod ready",
        obj("ModelDeployment", {"phase": "Stable", "observedGeneration": 2,
                                "stableVersion": "iris-v2", "conditions": [
                                    cond("Ready", "False", "NoReadyPods",
                                         "no ready pod serves iris-v2")]}),
        "Degraded", "NoReadyPods: no ready pod serves iris-v2",
    ),
    (
        "canary under analysis",
        obj("ModelDeployment", {"phase": "Progressing", "observedGeneration": 2,
                                "stableVersion": "iris-v1", "canaryVersion": "iris-v2",
                                "reason": "Analysing", "message": "step 1 of 2 at 20%",
                                "conditions": [SERVING, NOT_DEGRADED]}),
        "Progressing", "Analysing: step 1 of 2 at 20%",
    ),
    (
        "rollout paused",
        obj("ModelDeployment", {"phase": "Paused", "observedGeneration": 2,
                                "stableVersion": "iris-v1", "canaryVersion": "iris-v2",
                                "reason": "RolloutPaused", "message": "paused at step 2",
                                "conditions": [SERVING, NOT_DEGRADED]}),
        "Suspended", "RolloutPaused: paused at step 2",
    ),
    (
        "rolled back",
        obj("ModelDeployment", {"phase": "RolledBack", "observedGeneration": 2,
                                "stableVersion": "iris-v1", "reason": "MetricDrop",
                                "message": "accuracy fell 0.12", "conditions": [
                                    SERVING, cond("Degraded", "True", "RolledBack",
                                                  "iris-v2 rolled back: accuracy fell 0.12")]}),
        "Degraded", "RolledBack: iris-v2 rolled back: accuracy fell 0.12",
    ),
    (
        "its version failed",
        obj("ModelDeployment", {"phase": "Degraded", "observedGeneration": 2,
                                "reason": "ModelVersionFailed", "message": "iris-v2 failed",
                                "conditions": [cond("Degraded", "True", "ModelVersionFailed",
                                                    "iris-v2 failed verification")]}),
        "Degraded", "ModelVersionFailed: iris-v2 failed verification",
    ),
]
# fmt: on


@pytest.mark.parametrize(("case", "body", "status", "message"), CASES, ids=[c[0] for c in CASES])
def test_health(
    argocd: Path, tmp_path: Path, case: str, body: Any, status: str, message: str
) -> None:
    got_status, got_message = health(argocd, tmp_path, body)
    assert (got_status, message in got_message) == (status, True), (got_status, got_message)


def actions(argocd: Path, tmp_path: Path, body: Any) -> dict[str, bool]:
    """Action name → disabled, from `list-actions`' table."""
    out = resource_overrides(argocd, tmp_path, body, "list-actions")
    header, *rows = [line.split() for line in out.splitlines() if line.strip()]
    assert header == ["NAME", "DISABLED"], out
    return {name: disabled == "true" for name, disabled in rows}


ROLLING = obj("ModelDeployment", {"phase": "Progressing", "observedGeneration": 2,
                                  "stableVersion": "iris-v1", "canaryVersion": "iris-v2",
                                  "conditions": [SERVING, NOT_DEGRADED]})  # fmt: skip
PAUSED = obj("ModelDeployment", {"phase": "Paused", "observedGeneration": 2,
                                 "stableVersion": "iris-v1",
                                 "canaryVersion": "iris-v2"})  # fmt: skip
STABLE = obj("ModelDeployment", {"phase": "Stable", "observedGeneration": 2,
                                 "stableVersion": "iris-v2", "conditions": [SERVING]})  # fmt: skip


def test_actions_are_offered_only_while_a_rollout_is_under_way(
    argocd: Path, tmp_path: Path
) -> None:
    offered = {"promote": False, "abort": False, "retrain": True}  # no spec.retrain
    assert actions(argocd, tmp_path, ROLLING) == offered
    assert actions(argocd, tmp_path, PAUSED) == offered
    assert actions(argocd, tmp_path, STABLE) == {"promote": True, "abort": True, "retrain": True}


def test_retrain_is_offered_when_the_deployment_retrains_and_none_runs(
    argocd: Path, tmp_path: Path
) -> None:
    tracking = yaml.safe_load(
        (ROOT / "manifests" / "samples" / "modeldeployment-tracking.yaml").read_text()
    )
    retraining = {"phase": "Stable", "observedGeneration": 2, "stableVersion": "iris-v2",
                  "conditions": [SERVING]}  # fmt: skip
    idle = obj("ModelDeployment", retraining, spec=tracking["spec"])
    assert actions(argocd, tmp_path, idle)["retrain"] is False
    running = dict(retraining, retraining={"count": 1, "phase": "Running",
                                           "trainingJob": "iris-retrain-1"})  # fmt: skip
    busy = obj("ModelDeployment", running, spec=tracking["spec"])
    assert actions(argocd, tmp_path, busy)["retrain"] is True

    out = resource_overrides(argocd, tmp_path, idle, "run-action", "retrain")
    assert changed_annotations(out) == {RETRAIN_REQUEST_ANNOTATION: "1"}, out


def changed_annotations(out: str) -> dict[str, str]:
    """The annotations `run-action` reports as added (its diff's `>` lines)."""
    added = [line[2:] for line in out.splitlines() if line.startswith("> ")]
    parsed = yaml.safe_load("\n".join(added)) or {}
    return dict(parsed.get("annotations") or {})


@pytest.mark.parametrize("action", ["promote", "abort"])
def test_an_action_writes_the_annotation_the_controller_acts_on(
    argocd: Path, tmp_path: Path, action: str
) -> None:
    out = resource_overrides(argocd, tmp_path, ROLLING, "run-action", action)
    assert changed_annotations(out) == {
        ROLLOUT_ACTION_ANNOTATION: action,
        f"{ROLLOUT_ACTION_ANNOTATION}-request": "1",
    }, out


def test_asking_again_is_a_new_request(argocd: Path, tmp_path: Path) -> None:
    """The second promote changes the object (so the write is a new one, with a new time in
    managedFields), and spec is never touched."""
    notes = {ROLLOUT_ACTION_ANNOTATION: "promote", f"{ROLLOUT_ACTION_ANNOTATION}-request": "4"}
    asked = obj("ModelDeployment", ROLLING["status"], annotations=notes)
    out = resource_overrides(argocd, tmp_path, asked, "run-action", "promote")
    assert f'{ROLLOUT_ACTION_ANNOTATION}-request: "5"' in out, out
    assert "spec" not in out.split("Following fields have been changed:")[-1], out


def test_every_kind_has_a_health_check() -> None:
    data = yaml.safe_load(ARGOCD_CM.read_text())["data"]
    for kind in MODELS:
        assert f"resource.customizations.health.orchard.dev_{kind}" in data, kind


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl renders kustomize")
def test_the_synced_samples_come_in_waves() -> None:
    """The volume, then what trains or imports a version, then what serves it."""
    out = kubectl("kustomize", str(ROOT / "manifests" / "argocd" / "samples"), timeout=60).stdout
    waves = {
        d["kind"]: int(d["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"])
        for d in yaml.safe_load_all(out)
        if d
    }
    assert waves["PersistentVolumeClaim"] < waves["TrainingJob"] < waves["ModelDeployment"]
    assert "ModelVersion" not in waves  # the samples' placeholder import would never be Ready
