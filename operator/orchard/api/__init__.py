"""The Orchard API (group orchard.dev, version v1alpha1): models of the three kinds.

These models are the one source of the CRD schemas (see `orchard.api.crdgen`). No I/O here.
Parse an object with e.g. `TrainingJob.model_validate(obj)`; write one back with `to_k8s(model)`.
"""

from .common import (
    API_VERSION,
    CATEGORY,
    FINALIZER,
    GROUP,
    RETRAIN_REQUEST_ANNOTATION,
    ROLLOUT_ACTION_ANNOTATION,
    VERSION,
    CamelModel,
    Condition,
    ObjectMeta,
    Resource,
    ResourceInfo,
    get_condition,
    is_true,
    now,
    parse_duration,
    parse_timestamp,
    set_condition,
    to_k8s,
)
from .modeldeployment import (
    Canary,
    CanaryStep,
    ModelDeployment,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)
from .modelversion import ModelVersion, ModelVersionSpec, ModelVersionStatus
from .trainingjob import (
    CLASSIFIERS,
    REGRESSORS,
    Dataset,
    Estimator,
    TrainingJob,
    TrainingJobSpec,
    TrainingJobStatus,
)

KINDS: tuple[type[Resource], ...] = (TrainingJob, ModelVersion, ModelDeployment)

__all__ = [
    "API_VERSION",
    "CATEGORY",
    "CLASSIFIERS",
    "FINALIZER",
    "GROUP",
    "KINDS",
    "REGRESSORS",
    "RETRAIN_REQUEST_ANNOTATION",
    "ROLLOUT_ACTION_ANNOTATION",
    "VERSION",
    "CamelModel",
    "Canary",
    "CanaryStep",
    "Condition",
    "Dataset",
    "Estimator",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelVersion",
    "ModelVersionSpec",
    "ModelVersionStatus",
    "ObjectMeta",
    "Resource",
    "ResourceInfo",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
    "get_condition",
    "is_true",
    "now",
    "parse_duration",
    "parse_timestamp",
    "set_condition",
    "to_k8s",
]
