"""The objects a ModelDeployment's improvement loop owns: the evaluation Job that scores
a candidate against the stable version on the same rows, and the TrainingJob of a
retraining. Pure functions from typed objects to plain dicts.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from orchard.api.common import API_VERSION, to_k8s
from orchard.api.improvement import TriggerType
from orchard.api.modeldeployment import MODELDEPLOYMENT_LABEL, ModelDeployment
from orchard.api.modelversion import ModelVersion
from orchard.api.trainingjob import CollectedRows, TrainingJobSpec
from orchard.builders.common import (
    MODEL_LABEL,
    TrainerSettings,
    app_labels,
    base_env,
    bounded_name,
    claim_volumes,
    owner_reference,
    pvc_claim,
    restricted_container_security,
    restricted_pod_security,
    secret_env,
)
from orchard.builders.modelversion import (
    DEPLOYMENT_ANNOTATION,
    PARENT_ANNOTATION,
    TRIGGER_ANNOTATION,
)
from orchard.builders.serving import collection_place

EVALUATION_COMPONENT = "evaluation"
EVALUATION_CONTAINER = "evaluate"  # orchard.decisions.evaluation reads its report there
EVALUATION_DEADLINE_SECONDS = 600
EVALUATION_TTL_SECONDS = 3600
REPLAY_COMPONENT = "replay"
REPLAY_CONTAINER = "replay"
REPLAY_DEADLINE_SECONDS = 300
# At most this many evaluation rows are sent to each pod of a quiet step.
REPLAY_MAX_ROWS = 200


def _stamp(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def evaluation_job_name(md: ModelDeployment, candidate: str, baseline: str) -> str:
    """One Job per (candidate, baseline) pair: a retried tick finds the one it made."""
    pair = hashlib.sha256(f"{candidate}\0{baseline}".encode()).hexdigest()[:8]
    return bounded_name(str(md.metadata.name), f"-eval-{pair}", limit=63)


def collected_uri(md: ModelDeployment) -> str | None:
    """The deployment's collection directory as a URI the trainer image reads."""
    place = collection_place(md)
    if place is None:
        return None
    return place.uri


def _rows_args(md: ModelDeployment, since: datetime | None) -> list[str]:
    """The labelled production rows answered since `since`, when the deployment collects."""
    collected = collected_uri(md)
    if collected is None:
        return []
    return ["--collected", collected, *(["--since", _stamp(since)] if since else [])]


def _batch_job(
    md: ModelDeployment,
    name: str,
    component: str,
    container: str,
    command: list[str],
    artifacts: list[ModelVersion],
    deadline: int,
    settings: TrainerSettings,
) -> dict[str, Any]:
    """A short Job of the deployment in the trainer image: the claims of `artifacts` and
    of the deployment's collection read-only, the first artifact's Secret, no token."""
    collected = collected_uri(md)
    volumes, mounts = claim_volumes(
        read_write=[],
        read_only=[*(pvc_claim(a.spec.artifact.uri) for a in artifacts), pvc_claim(collected)],
    )
    labels = app_labels(f"orchard-{component}", str(md.metadata.name), component) | {
        MODELDEPLOYMENT_LABEL: str(md.metadata.name),
        MODEL_LABEL: artifacts[0].spec.model,
    }
    spec: dict[str, Any] = {
        "name": container,
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["orchard", command[0]],
        "args": command[1:],
        "env": base_env(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
        "securityContext": restricted_container_security(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": dict(settings.batch_resources),
    }
    collection_secret = md.spec.monitoring.collection.secret_name if collected else None
    if env_from := secret_env(artifacts[0].spec.artifact.secret_name, collection_secret):
        spec["envFrom"] = env_from
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": md.metadata.namespace,
            "labels": labels,
            "ownerReferences": [
                owner_reference("ModelDeployment", str(md.metadata.name), str(md.metadata.uid))
            ],
        },
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": deadline,
            "ttlSecondsAfterFinished": EVALUATION_TTL_SECONDS,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": restricted_pod_security(),
                    "containers": [spec],
                    "volumes": [settings.tmp_volume(), *volumes],
                },
            },
        },
    }


def evaluation_job(
    md: ModelDeployment,
    candidate: ModelVersion,
    baseline: ModelVersion,
    since: datetime | None,
    settings: TrainerSettings | None = None,
) -> dict[str, Any]:
    """The Job that runs `orchard evaluate` on the candidate and the stable version: the
    candidate's held-out rows plus the labelled production rows collected since `since`
    (when the candidate was registered, so none of them trained it)."""
    name = evaluation_job_name(md, str(candidate.metadata.name), str(baseline.metadata.name))
    command = [
        "evaluate",
        "--candidate", candidate.spec.artifact.uri,
        "--candidate-digest", candidate.spec.artifact.digest,
        "--baseline", baseline.spec.artifact.uri,
        "--baseline-digest", baseline.spec.artifact.digest,
        *_rows_args(md, since),
    ]  # fmt: skip
    return _batch_job(md, name, EVALUATION_COMPONENT, EVALUATION_CONTAINER, command,
                      [candidate, baseline], EVALUATION_DEADLINE_SECONDS,
                      settings or TrainerSettings())  # fmt: skip


def replay_job_name(md: ModelDeployment, version: str, step: int, asked: datetime) -> str:
    """One Job per replay asked (a version's step, at a moment)."""
    key = hashlib.sha256(f"{version}\0{step}\0{_stamp(asked)}".encode()).hexdigest()[:8]
    return bounded_name(str(md.metadata.name), f"-replay-{key}", limit=63)


def replay_job(
    md: ModelDeployment,
    candidate: ModelVersion,
    targets: list[str],
    asked: datetime,
    step: int,
    since: datetime | None,
    settings: TrainerSettings | None = None,
) -> dict[str, Any]:
    """The Job that runs `orchard replay`: the candidate's evaluation rows sent to every
    ready pod of both tracks (`targets`), marked as replayed, so a quiet step is judged."""
    name = replay_job_name(md, str(candidate.metadata.name), step, asked)
    command = [
        "replay",
        "--artifact", candidate.spec.artifact.uri,
        "--digest", candidate.spec.artifact.digest,
        "--model", str(md.metadata.name),
        "--max-rows", str(REPLAY_MAX_ROWS),
        *(arg for target in targets for arg in ("--target", target)),
        *_rows_args(md, since),
    ]  # fmt: skip
    return _batch_job(md, name, REPLAY_COMPONENT, REPLAY_CONTAINER, command, [candidate],
                      REPLAY_DEADLINE_SECONDS, settings or TrainerSettings())  # fmt: skip


def retrain_name(md: ModelDeployment, count: int) -> str:
    """`<deployment>-retrain-<n>`: the n-th retraining of this deployment."""
    return bounded_name(str(md.metadata.name), f"-retrain-{count}", limit=52)


def retrain_spec(
    md: ModelDeployment,
    template: TrainingJobSpec,
    since: datetime,
    until: datetime,
) -> TrainingJobSpec:
    """The template's spec with the deployment's collected, labelled rows of the window
    added to its dataset (when the deployment collects)."""
    spec = template.model_copy(deep=True)
    collected = collected_uri(md)
    retrain = md.spec.retrain
    if collected is None or retrain is None:
        return spec
    rows = CollectedRows(
        uri=collected, since=since, until=until, min_rows=retrain.min_collected_rows
    )
    return spec.model_copy(update={"dataset": spec.dataset.model_copy(update={"collected": rows})})


def retrain_training_job(
    md: ModelDeployment,
    spec: TrainingJobSpec,
    count: int,
    trigger: TriggerType,
    parent: str | None,
) -> dict[str, Any]:
    """The TrainingJob of the deployment's `count`-th retraining, owned by it (it goes
    with the deployment; the ModelVersion it registers stays), its lineage annotated."""
    name = retrain_name(md, count)
    annotations = {TRIGGER_ANNOTATION: trigger, DEPLOYMENT_ANNOTATION: str(md.metadata.name)}
    if parent:
        annotations[PARENT_ANNOTATION] = parent
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "metadata": {
            "name": name,
            "namespace": md.metadata.namespace,
            "labels": app_labels("orchard-retrain", str(md.metadata.name))
            | {MODELDEPLOYMENT_LABEL: str(md.metadata.name), MODEL_LABEL: spec.model},
            "annotations": annotations,
            "ownerReferences": [
                owner_reference("ModelDeployment", str(md.metadata.name), str(md.metadata.uid))
            ],
        },
        "spec": to_k8s(spec),
    }
