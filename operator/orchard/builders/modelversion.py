"""The ModelVersion a successful TrainingJob registers, and the Job that verifies one.

A ModelVersion is a registry entry: it must outlive the TrainingJob that produced it
(finished TrainingJobs get cleaned up, a GitOps tool may prune them, yet the model keeps
serving). So it carries no ownerReference to the TrainingJob; its lineage is recorded
in `spec.source` and in labels, which also let the operator find what a TrainingJob
already registered.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from orchard.api.common import API_VERSION, GROUP, to_k8s
from orchard.api.modelversion import (
    CollectedRef,
    DatasetRef,
    Framework,
    ModelArtifact,
    ModelInput,
    ModelVersion,
    ModelVersionSpec,
    Source,
)
from orchard.api.trainingjob import Artifacts, TrainingJob
from orchard.artifacts.redact import redact_uri
from orchard.builders.common import (
    MODEL_LABEL,
    TRAININGJOB_LABEL,
    VERIFICATION_COMPONENT,
    ServerSettings,
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
from orchard.contracts import TrainerReport

TRAININGJOB_UID_LABEL = f"{GROUP}/trainingjob-uid"
# The lineage of a retraining's TrainingJob (orchard.builders.improvement writes them).
TRIGGER_ANNOTATION = f"{GROUP}/retrain-trigger"
PARENT_ANNOTATION = f"{GROUP}/parent-version"
DEPLOYMENT_ANNOTATION = f"{GROUP}/retrained-for"
MODELVERSION_LABEL = f"{GROUP}/modelversion"
VERIFY_CONTAINER = "verify"
VERIFY_DEADLINE_SECONDS = 300
VERIFY_TTL_SECONDS = 3600
DEFAULT_FRAMEWORK = {"name": "scikit-learn", "version": "unknown"}
_INPUT_TYPES = {"number", "integer", "string", "boolean"}


def version_name(model: str, version: int) -> str:
    """`<model>-v<N>`: the name the version is known by everywhere."""
    return f"{model}-v{version}"


def collected_ref(reported: dict[str, Any] | None) -> CollectedRef | None:
    """The collected rows the trainer reported adding, as the ModelVersion records them
    (None when there were none, or the report's shape is not one this operator reads)."""
    if not reported:
        return None
    fields = {k: reported.get(k) for k in ("uri", "rows", "since", "until", "digest")}
    fields["uri"] = redact_uri(str(fields.get("uri") or ""))
    try:
        return CollectedRef.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError:
        return None


def lineage(tj: TrainingJob) -> dict[str, str]:
    """What a retraining's TrainingJob records of why it ran (its annotations, set by the
    ModelDeployment that made it and owns it)."""
    notes = tj.metadata.annotations
    owned = any(ref.get("kind") == "ModelDeployment" for ref in tj.metadata.owner_references)
    if not owned:
        return {}
    keys = {"deployment": DEPLOYMENT_ANNOTATION, "trigger": TRIGGER_ANNOTATION,
            "parent": PARENT_ANNOTATION}  # fmt: skip
    return {field: notes[key][:253] for field, key in keys.items() if notes.get(key)}


def model_version(
    tj: TrainingJob, result: TrainerReport, version: int, store: Artifacts | None
) -> dict[str, Any]:
    """The ModelVersion registering a TrainingJob's (best) result as version `version`.

    `store` is the store the run wrote to (spec.artifacts or the operator's default): the
    artifact is where the trainer reported it, read back with the store's Secret.
    Validated through the API model, so a malformed trainer report fails here with a
    clear error instead of at the API server.
    """
    name = version_name(tj.spec.model, version)
    inputs = [
        ModelInput(name=str(i["name"]), type=i["type"])
        for i in result.inputs
        if i.get("name") and i.get("type") in _INPUT_TYPES
    ]
    dataset = None
    if result.dataset.get("uri"):
        # Redacted again here, whatever the trainer's image did: a ModelVersion's spec is
        # read by everyone who lists models, and the digest pins the bytes anyway.
        dataset = DatasetRef(
            uri=redact_uri(result.dataset["uri"]),
            digest=result.dataset.get("digest"),
            collected=collected_ref(result.collected),
        )
    task = (
        result.task if result.task in ("classification", "regression") else tj.spec.estimator.task
    )
    spec = ModelVersionSpec(
        model=tj.spec.model,
        version=version,
        task=task,
        artifact=ModelArtifact(
            uri=result.artifact_uri,
            digest=result.digest,
            secret_name=store.secret_name if store is not None else None,
        ),
        framework=Framework(**(result.framework or DEFAULT_FRAMEWORK)),
        metrics=result.metrics,
        params=result.params or dict(tj.spec.estimator.params),
        inputs=inputs,
        source=Source(
            training_job=tj.metadata.name,
            namespace=tj.metadata.namespace,
            trial=result.trial if tj.spec.search is not None else None,
            dataset=dataset,
            **lineage(tj),
        ),
    )
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": name,
            "namespace": tj.metadata.namespace,
            "labels": app_labels("orchard-model", name)
            | {
                MODEL_LABEL: tj.spec.model,
                TRAININGJOB_LABEL: str(tj.metadata.name),
                TRAININGJOB_UID_LABEL: str(tj.metadata.uid),
            },
        },
        "spec": to_k8s(spec),
    }


def verify_job_name(mv: ModelVersion) -> str:
    return bounded_name(str(mv.metadata.name), "-verify", limit=63)


def verify_labels(mv: ModelVersion) -> dict[str, str]:
    return app_labels("orchard-verify", str(mv.metadata.name), VERIFICATION_COMPONENT) | {
        MODELVERSION_LABEL: str(mv.metadata.name),
        MODEL_LABEL: mv.spec.model,
    }


def verify_job(
    mv: ModelVersion,
    settings: TrainerSettings | None = None,
    server: ServerSettings | None = None,
) -> dict[str, Any]:
    """A short Job that fetches the artifact, checks every digest against the one the
    ModelVersion records, and finds the runtime a server would answer through
    (`python -m orchard.serving.verify`): in the server image, which has what serving
    needs (ONNX Runtime, skl2onnx); the batch pods' resources and /tmp."""
    settings = settings or TrainerSettings()
    server = server or ServerSettings()
    artifact = mv.spec.artifact
    volumes, mounts = claim_volumes(read_write=[], read_only=[pvc_claim(artifact.uri)])
    container: dict[str, Any] = {
        "name": VERIFY_CONTAINER,
        "image": server.image,
        "imagePullPolicy": server.image_pull_policy,
        "command": ["python", "-m", "orchard.serving.verify"],
        "args": [artifact.uri, artifact.digest],
        "env": base_env(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *mounts],
        "securityContext": restricted_container_security(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "resources": dict(settings.batch_resources),
    }
    if env_from := secret_env(artifact.secret_name, None):
        container["envFrom"] = env_from
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": verify_job_name(mv),
            "namespace": mv.metadata.namespace,
            "labels": verify_labels(mv),
            "ownerReferences": [
                owner_reference("ModelVersion", str(mv.metadata.name), str(mv.metadata.uid))
            ],
        },
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": VERIFY_DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": VERIFY_TTL_SECONDS,
            "template": {
                "metadata": {"labels": verify_labels(mv)},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": restricted_pod_security(),
                    "containers": [container],
                    "volumes": [settings.tmp_volume(), *volumes],
                },
            },
        },
    }
