"""Shapes shared by the three kinds: the base model, conditions, metadata, CEL rules.

The pydantic models in this package are the one source of the CRD schemas. Python
attributes are snake_case; the wire (YAML, JSON, the API server) is camelCase. Rules
the API server checks across fields are declared here with `cel(...)` on the model
they concern and mirrored in a pydantic validator, so Python and the server agree.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "orchard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "orchard"

# The finalizer and annotation prefix Orchard owns (Kopf's own bookkeeping goes under it too).
FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP
ROLLOUT_ACTION_ANNOTATION = f"{GROUP}/rollout-action"
# A person's (or Argo CD's retrain action's) request for one retraining now: any new value.
RETRAIN_REQUEST_ANNOTATION = f"{GROUP}/retrain-request"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
DIGEST = r"^sha256:[a-f0-9]{64}$"

DnsLabel = Annotated[str, Field(pattern=DNS1123_LABEL, min_length=1, max_length=63)]
DnsSubdomain = Annotated[str, Field(pattern=DNS1123_SUBDOMAIN, min_length=1, max_length=253)]
Duration = Annotated[str, Field(pattern=DURATION, max_length=32)]
Digest = Annotated[str, Field(pattern=DIGEST, max_length=71)]


def cel(
    rule: str, message: str, *, field_path: str | None = None, reason: str | None = None
) -> dict[str, str]:
    """One CEL `x-kubernetes-validations` entry, checked by the API server."""
    out = {"rule": rule, "message": message}
    if field_path:
        out["fieldPath"] = field_path
    if reason:
        out["reason"] = reason
    return out


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules, for a model's config or a field."""
    return {"x-kubernetes-validations": list(rules)}


class CamelModel(BaseModel):
    """Base of every spec and status shape: camelCase on the wire, snake_case in Python."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        serialize_by_alias=True,
        extra="forbid",
        protected_namespaces=(),
    )


def to_k8s(model: BaseModel) -> dict[str, Any]:
    """The JSON-ready dict the API server expects: camelCase, no nulls."""
    out: dict[str, Any] = model.model_dump(mode="json", by_alias=True, exclude_none=True)
    return out


def status_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A merge patch from one status to another: changed keys, null for removed ones.

    Keys not changed are left out, so a field a person wrote meanwhile (a ModelDeployment's
    status.requestedAction) is not overwritten.
    """
    return {k: new.get(k) for k in set(old) | set(new) if old.get(k) != new.get(k)}


class ObjectMeta(BaseModel):
    """The part of Kubernetes object metadata Orchard reads; the rest is kept as is."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="allow"
    )

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    creation_timestamp: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    owner_references: list[dict[str, Any]] = Field(default_factory=list)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(CamelModel):
    """One observation of the object's state, in the standard Kubernetes shape."""

    type: str = Field(
        description="Type of the condition in CamelCase, e.g. Ready.",
        pattern=r"^[A-Za-z]([A-Za-z0-9]*)$",
        max_length=64,
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        default="",
        description="A CamelCase word a program can match on, e.g. JobSucceeded.",
        max_length=128,
    )
    message: str = Field(
        default="", description="A human-readable explanation of the condition.", max_length=4096
    )
    last_transition_time: datetime | None = Field(
        default=None, description="When the status of this condition last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The .metadata.generation the condition was set from.",
    )


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=16,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


def now() -> datetime:
    """The current time in UTC, to the second (what Kubernetes timestamps carry)."""
    return datetime.now(UTC).replace(microsecond=0)


def parse_timestamp(text: str) -> datetime:
    """An RFC 3339 time as the API server writes it ("2026-11-27T10:00:00Z", 'Z' for UTC),
    timezone-aware; ValueError if it is not one. The one place Orchard reads the format."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def get_condition(conditions: list[Condition], type_: str) -> Condition | None:
    """The condition of the given type, or None."""
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str = "",
    message: str = "",
    *,
    generation: int | None = None,
    at: datetime | None = None,
) -> list[Condition]:
    """A new list with the condition set; the transition time moves only when status changes."""
    old = get_condition(conditions, type_)
    when = (
        old.last_transition_time
        if old is not None and old.status == status and old.last_transition_time is not None
        else (at or now())
    )
    new = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=when,
        observed_generation=generation,
    )
    out = [c for c in conditions if c.type != type_]
    index = next((i for i, c in enumerate(conditions) if c.type == type_), len(out))
    out.insert(index, new)
    return out


def is_true(conditions: list[Condition], type_: str) -> bool:
    """Whether the condition of the given type has status True."""
    cond = get_condition(conditions, type_)
    return cond is not None and cond.status == "True"


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a duration string such as "150ms", "30s", "2m" or "1h30m"."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 150ms, 30s, 2m, 1h30m)")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in _DURATION_PART.findall(text))


class PrinterColumn(BaseModel):
    """One `kubectl get` column of a kind."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str = ""
    priority: int = 0


class ResourceInfo(BaseModel):
    """How a kind is named and shown by the API server; declared on each kind's model."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    printer_columns: list[PrinterColumn]
    description: str

    group: ClassVar[str] = GROUP
    version: ClassVar[str] = VERSION

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


READY_COLUMN = PrinterColumn(
    name="Ready",
    type="string",
    json_path='.status.conditions[?(@.type=="Ready")].status',
    description="Whether the Ready condition is True.",
)
PHASE_COLUMN = PrinterColumn(
    name="Phase", type="string", json_path=".status.phase", description="Where the object stands."
)
AGE_COLUMN = PrinterColumn(
    name="Age", type="date", json_path=".metadata.creationTimestamp", description="Age."
)


class Resource(BaseModel):
    """A whole Orchard object as the API server returns it: kind, metadata, spec, status.

    Subclasses set `kind`, `spec`, `status` and the `RESOURCE` naming.
    """

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, serialize_by_alias=True, extra="ignore"
    )

    RESOURCE: ClassVar[ResourceInfo]

    api_version: Literal["orchard.dev/v1alpha1"] = "orchard.dev/v1alpha1"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
