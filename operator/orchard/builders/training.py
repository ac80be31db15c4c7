"""The objects a TrainingJob owns: the ConfigMap holding its spec and the batch/v1 Job
whose pod runs `orchard train` on it.

Pure functions from the typed TrainingJob (and operator settings) to plain dicts, so
they are table-tested without a cluster and the handler only has to send them.
"""

from __future__ import annotations

import math
from typing import Any

import yaml

from orchard.api.common import API_VERSION, to_k8s
from orchard.api.trainingjob import TRAINER_CONTAINER, Artifacts, Search, TrainingJob
from orchard.builders.common import (
    MODEL_LABEL,
    TRAINING_COMPONENT,
    TRAININGJOB_LABEL,
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

SPEC_DIR = "/etc/orchard"
SPEC_FILE = "trainingjob.yaml"


def job_name(tj: TrainingJob) -> str:
    """The training Job's name. Indexed pods add `-<index>-<5>` and the name is also
    a label value, so it stays well under 63 characters."""
    return bounded_name(str(tj.metadata.name), limit=52)


def config_map_name(tj: TrainingJob) -> str:
    return bounded_name(str(tj.metadata.name), "-spec", limit=253)


def labels(tj: TrainingJob) -> dict[str, str]:
    """The labels of everything a TrainingJob owns (the handlers select Jobs by them)."""
    return app_labels("orchard-trainer", str(tj.metadata.name), TRAINING_COMPONENT) | {
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


def training_job(
    tj: TrainingJob, store: Artifacts, settings: TrainerSettings | None = None
) -> dict[str, Any]:
    """The batch/v1 Job that trains a TrainingJob (one Indexed Job for a search) and
    writes to `store` (spec.artifacts or the operator's default, `decisions.training`)."""
    settings = settings or TrainerSettings()
    spec = tj.spec
    name = job_name(tj)
    collected = spec.dataset.collected.uri if spec.dataset.collected else None
    volumes, mounts = claim_volumes(
        read_write=[pvc_claim(store.uri)],
        read_only=[pvc_claim(spec.dataset.uri), pvc_claim(collected)],
    )
    volumes = [
        settings.tmp_volume(),
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
        # A pod started again after another finished keeps what that one wrote.
        "args": [
            "-f",
            f"{SPEC_DIR}/{SPEC_FILE}",
            "--keep-existing",
            "--output",
            output_uri(tj, store),
        ],
        "env": base_env(),
        "volumeMounts": mounts,
        "securityContext": restricted_container_security(),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if env_from := secret_env(store.secret_name, spec.dataset.secret_name):
        container["envFrom"] = env_from
    # The spec's own resources, else the operator's default: never a BestEffort pod.
    container["resources"] = dict(spec.resources or settings.trainer_resources)
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
