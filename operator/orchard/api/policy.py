"""The admin's policy: what a namespace user's Orchard spec may ask of the pods it makes.

A TrainingJob, ModelVersion or ModelDeployment is written by whoever may create Orchard
objects in a namespace; the pods the operator builds from it run with the operator's
authority over that namespace (any Secret mounted, any claim written, any image run).
The policy, set by the cluster admin in the operator's own namespace (a file, see
`manifests/manager/policy.yaml`), bounds that: images, Secrets, claims and the pod
overrides a spec may make. What it refuses gets a `PolicyViolation` condition and event
that name the rule; nothing is created.

Defaults are closed where a spec could reach what its author cannot: only the operator's
own trainer and server images, only Secrets named `orchard-*`, claims written only when
named `orchard-*`; node selectors and tolerations are off, resources are on.
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import Field, ValidationError

from .common import CamelModel

POLICY_FILE_ENV = "ORCHARD_POLICY_FILE"
DEFAULT_POLICY_FILE = "/etc/orchard/policy/policy.yaml"


class ImagePolicy(CamelModel):
    """Which images a spec's `image` may name."""

    allowed_prefixes: list[str] = Field(
        default_factory=list,
        description="Image references starting with one of these are allowed, beside the "
        "operator's configured trainer and server images (always allowed), e.g. "
        "'registry.example/ml/'. Empty: only the configured images.",
    )


class OverridePolicy(CamelModel):
    """Which pod settings a spec may set for itself."""

    node_selector: bool = Field(default=False, description="spec.nodeSelector of TrainingJobs.")
    tolerations: bool = Field(default=False, description="spec.tolerations of TrainingJobs.")
    resources: bool = Field(default=True, description="spec.resources of every kind.")


class SecretPolicy(CamelModel):
    """Which Secrets a spec may name (dataset, artifacts, ModelVersion artifact)."""

    allowed_names: list[str] = Field(
        default_factory=lambda: ["orchard-*"],
        description="Shell-style patterns of Secret names (fnmatch), in the object's own "
        "namespace; a Secret a pattern does not match is never mounted.",
    )


class ClaimPolicy(CamelModel):
    """Which PersistentVolumeClaims a spec may mount, read-only and read-write."""

    readable: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Patterns of claim names a dataset or artifact may be read from.",
    )
    writable: list[str] = Field(
        default_factory=lambda: ["orchard-*"],
        description="Patterns of claim names a TrainingJob may write its artifacts to.",
    )


class Policy(CamelModel):
    """The whole policy; every part has closed defaults (see the module docstring)."""

    images: ImagePolicy = Field(default_factory=ImagePolicy)
    overrides: OverridePolicy = Field(default_factory=OverridePolicy)
    secrets: SecretPolicy = Field(default_factory=SecretPolicy)
    claims: ClaimPolicy = Field(default_factory=ClaimPolicy)

    @classmethod
    def from_yaml(cls, text: str) -> Policy:
        """A policy from its YAML text; an empty document is the default policy."""
        data: Any = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError("the policy must be a YAML mapping")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ValueError(f"invalid policy: {exc}") from exc
