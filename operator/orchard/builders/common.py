"""What every object Orchard builds shares: labels and the selectors that find them again,
the controller ownerReference, bounded names, applying only what changed, the restricted
pod security, the claim mounts and environment of the batch pods, and the settings of the
trainer image's pods.

Pure, like the builders that use it (`training`, `modelversion`, `serving`).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from orchard.api.common import API_VERSION, GROUP
from orchard.api.trainingjob import DEFAULT_ARTIFACTS_ENV, Artifacts
from orchard.artifacts.store import DEFAULT_PVC_ROOT, LOCAL_ROOTS_ENV, PVC_ROOT_ENV

DEFAULT_TRAINER_IMAGE = "localhost/orchard/trainer:dev"
TRAINER_IMAGE_ENV = "ORCHARD_TRAINER_IMAGE"
TRAINER_PULL_POLICY_ENV = "ORCHARD_TRAINER_IMAGE_PULL_POLICY"
DEFAULT_SERVER_IMAGE = "localhost/orchard/server:dev"
SERVER_IMAGE_ENV = "ORCHARD_SERVER_IMAGE"
SERVER_PULL_POLICY_ENV = "ORCHARD_SERVER_IMAGE_PULL_POLICY"
# Resources of the pods Orchard creates, unless a spec says otherwise (JSON, as in a pod).
TRAINER_RESOURCES_ENV = "ORCHARD_TRAINER_RESOURCES"
BATCH_RESOURCES_ENV = "ORCHARD_BATCH_RESOURCES"  # verification, evaluation and replay Jobs
TMP_SIZE_LIMIT_ENV = "ORCHARD_TMP_SIZE_LIMIT"  # the /tmp emptyDir of every batch pod
DEFAULT_TRAINER_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "250m", "memory": "512Mi"},
    "limits": {"cpu": "2", "memory": "2Gi"},
}
DEFAULT_BATCH_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}
DEFAULT_TMP_SIZE_LIMIT = "1Gi"

PVC_ROOT = DEFAULT_PVC_ROOT  # where pvc://<claim>/ is mounted, and the store looks
DATASET_SECRET_PREFIX = "ORCHARD_DATASET_"  # orchard.artifacts.store.S3Settings.from_env(prefix)
RUN_AS = 10001

# --- Labels ----------------------------------------------------------------------------

NAME_LABEL = "app.kubernetes.io/name"
# Not app.kubernetes.io/instance: Argo CD tracks its own objects by that label, and would
# take a child named after its owner for a part of an Application (to show OutOfSync, or prune).
INSTANCE_LABEL = f"{GROUP}/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
VERSION_LABEL = "app.kubernetes.io/version"
PART_OF = "orchard"
MANAGED_BY = "orchard-operator"
# The component of each kind's pods; the operator's watches select the batch ones by it.
TRAINING_COMPONENT = "training"
VERIFICATION_COMPONENT = "verification"
SERVING_COMPONENT = "serving"

TRAININGJOB_LABEL = f"{GROUP}/trainingjob"
MODEL_LABEL = f"{GROUP}/model"


def app_labels(name: str, instance: str, component: str | None = None) -> dict[str, str]:
    """The labels of an object Orchard makes: app.kubernetes.io's, and its owner's name."""
    out = {NAME_LABEL: name, INSTANCE_LABEL: instance}
    if component is not None:
        out[COMPONENT_LABEL] = component
    return out | {PART_OF_LABEL: PART_OF, MANAGED_BY_LABEL: MANAGED_BY}


def label_selector(labels: Mapping[str, str | Sequence[str]]) -> str:
    """The label-selector string of `labels`: `key=value`, or `key in (a,b)` for several
    values. Built from the same constants the builders label with, so a watch cannot
    drift from what it watches."""
    terms = []
    for key, value in labels.items():
        if isinstance(value, str):
            terms.append(f"{key}={value}")
        else:
            terms.append(f"{key} in ({','.join(value)})")
    return ",".join(terms)


# --- Settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainerSettings:
    """Operator-wide settings of the pods that train and verify.

    `default_artifacts` is where a TrainingJob without spec.artifacts writes; like the
    trainer image it is the admin's own setting, so the policy does not check it.
    """

    image: str = DEFAULT_TRAINER_IMAGE
    image_pull_policy: str = "IfNotPresent"
    default_artifacts: Artifacts | None = None
    # A trainer pod without spec.resources gets these; every other batch pod gets
    # `batch_resources`; every batch pod's /tmp is an emptyDir of at most `tmp_size_limit`.
    trainer_resources: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_TRAINER_RESOURCES)
    batch_resources: Mapping[str, Any] = field(default_factory=lambda: DEFAULT_BATCH_RESOURCES)
    tmp_size_limit: str = DEFAULT_TMP_SIZE_LIMIT

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainerSettings:
        """The settings in the environment; ValueError for a default store that is no
        artifact store URI, or resources that are no resources (the operator refuses to
        start with either)."""
        env = os.environ if env is None else env
        return cls(
            image=env.get(TRAINER_IMAGE_ENV) or DEFAULT_TRAINER_IMAGE,
            image_pull_policy=env.get(TRAINER_PULL_POLICY_ENV) or "IfNotPresent",
            default_artifacts=_default_artifacts(env.get(DEFAULT_ARTIFACTS_ENV) or None),
            trainer_resources=resources_setting(
                env, TRAINER_RESOURCES_ENV, DEFAULT_TRAINER_RESOURCES
            ),
            batch_resources=resources_setting(env, BATCH_RESOURCES_ENV, DEFAULT_BATCH_RESOURCES),
            tmp_size_limit=quantity_setting(env, TMP_SIZE_LIMIT_ENV, DEFAULT_TMP_SIZE_LIMIT),
        )

    def tmp_volume(self) -> dict[str, Any]:
        """The /tmp of a batch pod: an emptyDir, bounded (the pod is evicted beyond it)."""
        return {"name": "tmp", "emptyDir": {"sizeLimit": self.tmp_size_limit}}


@dataclass(frozen=True)
class ServerSettings:
    """Operator-wide settings of the serving pods (and of the verification Jobs, which
    run in the server image)."""

    image: str = DEFAULT_SERVER_IMAGE
    image_pull_policy: str = "IfNotPresent"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServerSettings:
        env = os.environ if env is None else env
        return cls(
            image=env.get(SERVER_IMAGE_ENV) or DEFAULT_SERVER_IMAGE,
            image_pull_policy=env.get(SERVER_PULL_POLICY_ENV) or "IfNotPresent",
        )


_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")


def quantity_setting(env: Mapping[str, str], name: str, default: str) -> str:
    """A Kubernetes quantity from the environment (ValueError for anything else)."""
    value = env.get(name) or default
    if not _QUANTITY.match(value):
        raise ValueError(f"{name}={value!r} is not a Kubernetes quantity (e.g. 1Gi, 500m)")
    return value


def resources_setting(
    env: Mapping[str, str], name: str, default: Mapping[str, Any]
) -> Mapping[str, Any]:
    """A container's resources from the environment, as JSON in a pod spec's form
    (`{"requests": {"cpu": "250m"}, "limits": {"memory": "2Gi"}}`); ValueError otherwise."""
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not JSON: {exc}") from exc
    if not isinstance(value, dict) or not value or set(value) - {"requests", "limits"}:
        raise ValueError(f"{name} must be an object of requests and/or limits: {raw!r}")
    for part in value.values():
        if not isinstance(part, dict) or not all(
            isinstance(k, str) and isinstance(v, str | int) and _QUANTITY.match(str(v))
            for k, v in part.items()
        ):
            raise ValueError(f"{name}: every request and limit must be a quantity: {raw!r}")
    return {key: {k: str(v) for k, v in part.items()} for key, part in value.items()}


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


# The label Kubernetes puts on a Job's pods: the Job's uid (a Job's pods are found by it).
JOB_UID_LABEL = "batch.kubernetes.io/controller-uid"


# --- Names and owners --------------------------------------------------------------------


def bounded_name(base: str, suffix: str = "", limit: int = 63) -> str:
    """`base` + `suffix`, shortened with a stable hash when longer than `limit`."""
    name = base + suffix
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    return f"{base[:keep].rstrip('-')}-{digest}{suffix}"


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


def owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """Whether an object names `uid` among its ownerReferences (a child found by name
    may be someone else's)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return uid is not None and any(ref.get("uid") == uid for ref in refs)


# --- Applying only what changed -----------------------------------------------------------

APPLIED_DIGEST_ANNOTATION = f"{GROUP}/applied-digest"


def with_applied_digest(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The object to apply, carrying the digest of itself (the annotation left out), so
    that the live object says which manifest it was last applied from."""
    meta = dict(obj.get("metadata") or {})
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k != APPLIED_DIGEST_ANNOTATION
    }
    bare = {**obj, "metadata": {**meta, "annotations": annotations}}
    canonical = json.dumps(bare, sort_keys=True, separators=(",", ":"), default=str)
    annotations[APPLIED_DIGEST_ANNOTATION] = hashlib.sha256(canonical.encode()).hexdigest()
    return {**obj, "metadata": {**meta, "annotations": annotations}}


def applied_already(manifest: Mapping[str, Any], live: Mapping[str, Any] | None) -> bool:
    """Whether a server-side apply of `manifest` (from `with_applied_digest`) would
    change nothing: the live object was applied from this very manifest (so no field
    Orchard set before has been left out since) and still holds every field of it as
    written (so no one changed one). When in doubt (a quantity the API server wrote
    another way, say), False: the apply is made."""
    if live is None:
        return False
    digest = ((manifest.get("metadata") or {}).get("annotations") or {}).get(
        APPLIED_DIGEST_ANNOTATION
    )
    found = ((live.get("metadata") or {}).get("annotations") or {}).get(APPLIED_DIGEST_ANNOTATION)
    return digest is not None and digest == found and _holds(live, manifest)


def _holds(have: Any, want: Any) -> bool:
    """`want` is in `have`: every key of a mapping (the API server adds defaults), every
    item of a list in place, every other value equal."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and _holds(have[k], v) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(have) == len(want)
            and all(_holds(h, w) for h, w in zip(have, want, strict=True))
        )
    return bool(have == want)


# --- Pods --------------------------------------------------------------------------------


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
