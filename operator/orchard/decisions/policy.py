"""Whether a spec keeps to the admin's policy (`orchard.api.policy`): pure checks.

Each check names the field that broke a rule and the rule itself, so the condition and
event a person reads say what to change, or whom to ask. Nothing here reads a Secret:
names are matched against patterns, so the operator needs no access to Secrets at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

from orchard.api.modeldeployment import ModelDeploymentSpec
from orchard.api.modelversion import ModelVersionSpec
from orchard.api.policy import Policy
from orchard.api.trainingjob import TrainingJobSpec

REASON = "PolicyViolation"


@dataclass(frozen=True)
class Violation:
    """One field that a rule refuses."""

    field: str  # where in the spec, e.g. spec.image
    rule: str  # the policy's key, e.g. images.allowedPrefixes
    message: str


def summary(violations: list[Violation]) -> str:
    """One line for a condition or an event: every violation with its rule."""
    return "; ".join(f"{v.field}: {v.message} (policy rule {v.rule})" for v in violations)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatchcase(name, p) for p in patterns)


def _image(image: str | None, configured: str, policy: Policy, field: str) -> list[Violation]:
    if image is None or image == configured:
        return []
    if any(image.startswith(p) for p in policy.images.allowed_prefixes if p):
        return []
    allowed = [configured, *(f"{p}*" for p in policy.images.allowed_prefixes)]
    return [
        Violation(field, "images.allowedPrefixes", f"image {image!r} is not allowed: {allowed}")
    ]


def _secret(name: str | None, policy: Policy, field: str) -> list[Violation]:
    if not name or _matches(name, policy.secrets.allowed_names):
        return []
    allowed = policy.secrets.allowed_names
    return [Violation(field, "secrets.allowedNames", f"Secret {name!r} does not match {allowed}")]


def _claim(uri: str | None, policy: Policy, field: str, *, write: bool) -> list[Violation]:
    parts = urlsplit(uri or "")
    if parts.scheme != "pvc" or not parts.netloc:
        return []
    patterns = policy.claims.writable if write else policy.claims.readable
    if _matches(parts.netloc, patterns):
        return []
    rule = "claims.writable" if write else "claims.readable"
    how = "written" if write else "read"
    return [
        Violation(field, rule, f"claim {parts.netloc!r} may not be {how} (allowed: {patterns})")
    ]


def _override(present: bool, allowed: bool, field: str, rule: str) -> list[Violation]:
    if not present or allowed:
        return []
    return [Violation(field, f"overrides.{rule}", "the policy does not let a spec set this")]


def trainingjob_violations(
    spec: TrainingJobSpec, policy: Policy, trainer_image: str
) -> list[Violation]:
    """Everything in a TrainingJob's spec that its Job may not be made with."""
    o = policy.overrides
    # Without spec.artifacts the run writes to the operator's default: the admin's own.
    store = spec.artifacts
    return [
        *_image(spec.image, trainer_image, policy, "spec.image"),
        *_secret(spec.dataset.secret_name, policy, "spec.dataset.secretName"),
        *_secret(store.secret_name if store else None, policy, "spec.artifacts.secretName"),
        *_claim(spec.dataset.uri, policy, "spec.dataset.uri", write=False),
        *_claim(
            spec.dataset.collected.uri if spec.dataset.collected else None,
            policy,
            "spec.dataset.collected.uri",
            write=False,
        ),
        *_claim(store.uri if store else None, policy, "spec.artifacts.uri", write=True),
        *_override(bool(spec.node_selector), o.node_selector, "spec.nodeSelector", "nodeSelector"),
        *_override(bool(spec.tolerations), o.tolerations, "spec.tolerations", "tolerations"),
        *_override(bool(spec.resources), o.resources, "spec.resources", "resources"),
    ]


def modelversion_violations(spec: ModelVersionSpec, policy: Policy) -> list[Violation]:
    """What a ModelVersion's artifact may not be read with (verification and serving)."""
    return [
        *_secret(spec.artifact.secret_name, policy, "spec.artifact.secretName"),
        *_claim(spec.artifact.uri, policy, "spec.artifact.uri", write=False),
    ]


def modeldeployment_violations(
    spec: ModelDeploymentSpec, policy: Policy, server_image: str
) -> list[Violation]:
    """Everything in a ModelDeployment's spec that its serving pods may not be made with."""
    collection = spec.monitoring.collection
    return [
        *_image(spec.server.image, server_image, policy, "spec.server.image"),
        *_override(bool(spec.resources), policy.overrides.resources, "spec.resources", "resources"),
        *_secret(collection.secret_name, policy, "spec.monitoring.collection.secretName"),
        *_claim(collection.uri, policy, "spec.monitoring.collection.uri", write=True),
    ]
