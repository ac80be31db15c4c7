"""The objects a TrainingJob owns: the ConfigMap holding its spec and the batch/v1 Job
whose pod runs `orchard train` on it.

Pure functions from the typed TrainingJob (and operator settings) to plain dicts, so
they are table-tested without a cluster and the handler only has to send them.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import ValidationError

from orchard.api.common import API_VERSION, GROUP, to_k8s
from orchard.api.trainingjob import DEFAULT_ARTIFACTS_ENV, Artifacts, Search, TrainingJob
from orchard.artifacts.store import DEFAULT_PVC_ROOT, LOCAL_ROOTS_ENV, PVC_ROOT_ENV

DEFAULT_TRAINER_IMAGE = "localhost/orchard/trainer:dev"
TRAINER_IMAGE_ENV = "ORCHARD_TRAINER_IMAGE"
TRAINER_PULL_POLICY_ENV = "ORCHARD_TRAINER_IMAGE_PULL_POLICY"

TRAINER_CONTAINER = "trainer"
SPEC_DIR = "/etc/orchard"
SPEC_FILE = "trainingjob.yaml"
PVC_ROOT = DEFAULT_PVC_ROOT  # where pvc://<claim>/ is mounted, and the store looks
DATASET_SECRET_PREFIX = "ORCHARD_DATASET_"  # orchard.artifacts.store.S3Settings.from_env(prefix)
RUN_AS = 10001

TRAININGJOB_LABEL = f"{GROUP}/trainingjob"
MODEL_LABEL = f"{GROUP}/model"
PART_OF = "orchard"
MANAGED_BY = "orchard-operator"


@dataclass(frozen=True)
class TrainerSettings:
    """Operator-wide settings of the pods that train and verify.

    `default_artifacts` is where a TrainingJob without spec.artifacts writes; like the
    trainer image it is the admin's own setting, so the policy does not check it.
    """

    image: str = DEFAULT_TRAINER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    default_artifacts: Artifacts | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainerSettings:
        """The settings in the environment; ValueError for a default store that is no
        artifact store URI (the operator refuses to start with it)."""
        env = os.environ if env is None else env
        return cls(
            image=env.get(TRAINER_IMAGE_ENV) or DEFAULT_TRAINER_IMAGE,
            image_pull_policy=env.get(TRAINER_PULL_POLICY_ENV) or "IfNotPresent",
            default_artifacts=_default_artifacts(env.get(DEFAULT_ARTIFACTS_ENV) or None),
        )


def _default_artifacts(uri: str | None) -> Artifacts | None:
    if uri is None:
        return None
    try:
        return Artifacts(uri=uri)
    except ValidationError as exc:
        raise ValueError(
            f"{DEFAULT_ARTIFACTS_ENV}={uri!r} is not an artifact store URI "
            "(pvc://<claim>/<prefix>, s3://<bucket>/<prefix> or file:///<path>)"
        ) from exc


def bounded_name(base: str, suffix: str = "", limit: int = 63) -> str:
    """`base` + `suffix`, shortened with a stable hash when longer than `limit`."""
    name = base + suffix
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-')}-{digest}{suffix}"


def job_name(tj: TrainingJob) -> str:
    """The training Job's name. Indexed pods add `-<index>-<5>` and the name is also
    a label value, so it stays well under 63 characters."""
    return bounded_name(str(tj.metadata.name), limit=52)


def config_map_name(tj: TrainingJob) -> str:
    return bounded_name(str(tj.metadata.name), "-spec", limit=253)


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    """The controller ownerReference that makes a child go with its owner."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(tj: TrainingJob) -> dict[str, str]:
    """The labels of everything a TrainingJob owns (the handlers select Jobs by them)."""
    return {
        "app.kubernetes.io/name": "orchard-trainer",
        "app.kubernetes.io/instance": str(tj.metadata.name),
        "app.kubernetes.io/component": "training",
        "app.kubernetes.io/part-of": PART_OF,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        TRAININGJOB_LABEL: str(tj.metadata.name),
        MODEL_LABEL: tj.spec.model,
    }


def _metadata(tj: TrainingJob, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": tj.metadata.namespace,
        "labels": labels(tj),
        "ownerReferences": [
            owner_reference("TrainingJob", str(tj.metadata.name), str(tj.metadata.uid))
        ],
    }


def trial_count(search: Search) -> int:
    """How many trials a search runs: every combination of the grid, at most maxTrials.

    Random search samples distinct combinations, so it is bounded the same way.
    """
    combinations = math.prod(len(values) for values in search.parameters.values())
    return max(1, min(combinations, search.max_trials))


def output_uri(tj: TrainingJob, store: Artifacts) -> str:
    """Where the trainer writes: `<store uri>/<model>/<name>-<uid prefix>` (a search adds
    `/trial-<N>`). The uid keeps a re-created TrainingJob of the same name from ever
    overwriting an artifact a ModelVersion already pins."""
    root = store.uri.rstrip("/")
    uid = str(tj.metadata.uid or "").replace("-", "")[:8]
    run = f"{tj.metadata.name}-{uid}" if uid else str(tj.metadata.name)
    return f"{root}/{tj.spec.model}/{run}"


def trainingjob_document(tj: TrainingJob) -> dict[str, Any]:
    """The TrainingJob as the trainer reads it: `orchard train -f` takes the same file
    locally and in the cluster."""
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainingJob",
        "metadata": {
            "name": tj.metadata.name,
            "namespace": tj.metadata.namespace,
            "uid": tj.metadata.uid,
        },
        "spec": to_k8s(tj.spec),
    }


def config_map(tj: TrainingJob) -> dict[str, Any]:
    """The immutable ConfigMap with the spec the trainer runs."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(tj, config_map_name(tj)),
        "immutable": True,
        "data": {SPEC_FILE: yaml.safe_dump(trainingjob_document(tj), sort_keys=False)},
    }


def pvc_claim(uri: str | None) -> str | None:
    """The claim a pvc://<claim>/<path> URI names, or None for other schemes."""
    if not uri:
        return None
    parts = urlsplit(uri)
    return (parts.netloc or None) if parts.scheme == "pvc" else None


def claim_volumes(
    read_write: list[str | None], read_only: list[str | None]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts for every claim the URIs name, each once, mounted where the
    artifact store looks (`/mnt/pvc/<claim>`); read-only unless something writes to it."""
    writable = {c for c in read_write if c}
    claims = sorted(writable | {c for c in read_only if c})
    volumes, mounts = [], []
    for i, claim in enumerate(claims):
        volume = f"pvc-{i}"
        volumes.append(
            {
                "name": volume,
                "persistentVolumeClaim": {"claimName": claim, "readOnly": claim not in writable},
            }
        )
        mounts.append(
            {"name": volume, "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": claim not in writable}
        )
    return volumes, mounts


def restricted_pod_security() -> dict[str, Any]:
    """Pod-level settings that satisfy the `restricted` Pod Security Standard."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "fsGroup": RUN_AS,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def restricted_container_security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def base_env() -> list[dict[str, Any]]:
    """Environment every Orchard batch pod needs with a read-only root filesystem.

    Local paths (file://, pvc://) are confined to the mounted claims: the pod's own
    filesystem holds nothing a user should read (/proc/self/environ holds its Secrets).
    """
    return [
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": PVC_ROOT_ENV, "value": PVC_ROOT},
        {"name": LOCAL_ROOTS_ENV, "value": PVC_ROOT},
    ]


def secret_env(artifacts_secret: str | None, dataset_secret: str | None) -> list[dict[str, Any]]:
    """S3 credentials from Secrets: the artifacts' as plain AWS_* variables, the
    dataset's under a prefix so that the two may differ."""
    out: list[dict[str, Any]] = []
    if artifacts_secret:
        out.append({"secretRef": {"name": artifacts_secret}})
    if dataset_secret:
        out.append({"prefix": DATASET_SECRET_PREFIX, "secretRef": {"name": dataset_secret}})
    return out


def training_job(
    tj: TrainingJob, store: Artifacts, settings: TrainerSettings | None = None
) -> dict[str, Any]:
    """The batch/v1 Job that trains a TrainingJob (one Indexed Job for a search) and
    writes to `store` (spec.artifacts or the operator's default, `decisions.training`)."""
    settings = settings or TrainerSettings()
    spec = tj.spec
    name = job_name(tj)
    volumes, mounts = claim_volumes(
        read_write=[pvc_claim(store.uri)], read_only=[pvc_claim(spec.dataset.uri)]
    )
    volumes = [
        {"name": "tmp", "emptyDir": {}},
        {"name": "spec", "configMap": {"name": config_map_name(tj)}},
        *volumes,
    ]
    mounts = [
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
        *mounts,
    ]
    container: dict[str, Any] = {
        "name": TRAINER_CONTAINER,
        "image": spec.image or settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["orchard", "train"],
        "args": ["-f", f"{SPEC_DIR}/{SPEC_FILE}", "--output", output_uri(tj, store)],
        "env": base_env(),
        "volumeMounts": mounts,
        "securityContext": restricted_container_security(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from := secret_env(store.secret_name, spec.dataset.secret_name):
        container["envFrom"] = env_from
    if spec.resources:
        container["resources"] = dict(spec.resources)
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": restricted_pod_security(),
        "containers": [container],
        "volumes": volumes,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if spec.tolerations:
        pod_spec["tolerations"] = [dict(t) for t in spec.tolerations]
    job_spec: dict[str, Any] = {
        "activeDeadlineSeconds": spec.active_deadline_seconds,
        "template": {"metadata": {"labels": labels(tj)}, "spec": pod_spec},
    }
    if spec.search is None:
        job_spec.update(backoffLimit=spec.backoff_limit, completions=1, parallelism=1)
    else:
        trials = trial_count(spec.search)
        # Each trial fails on its own: one failed trial (a missed gate) must not stop
        # the others, and the best of those that succeeded is registered.
        job_spec.update(
            completionMode="Indexed",
            completions=trials,
            parallelism=min(spec.search.parallelism, trials),
            backoffLimitPerIndex=spec.backoff_limit,
        )
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(tj, name),
        "spec": job_spec,
    }
