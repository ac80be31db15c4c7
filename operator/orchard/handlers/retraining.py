"""Retraining controller: a ModelDeployment with `spec.retrain` trains new versions by itself.

Every monitoring interval (and a request by the `orchard.dev/retrain-request`
annotation is seen at the next one), the shape of `trainingjob.sync`: read the deployment and its
last retraining TrainingJob; decide (`orchard.decisions.retraining`: the last one's end,
and whether a trigger fires, with one at a time and a cooldown); ensure the new
TrainingJob (the template's spec with the collected, labelled production rows of the
window added, owned by the deployment, its lineage annotated); write
`status.retraining` and post the events. The TrainingJob controller trains and registers
it; with `spec.track`, the rollout controller then judges and rolls out what it registered.
It holds the ModelDeployment's lock, as the rollout and monitoring do.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from orchard import kube
from orchard.api.common import (
    API_VERSION,
    GROUP,
    RETRAIN_REQUEST_ANNOTATION,
    VERSION,
    parse_duration,
    to_k8s,
)
from orchard.api.modeldeployment import ModelDeployment
from orchard.api.trainingjob import TrainingJob, TrainingJobSpec
from orchard.builders import improvement as imp
from orchard.builders.common import owned_by
from orchard.decisions import retraining as rt
from orchard.decisions.rollout import annotation_set_at

from .loops import Loops
from .modeldeployment import lock
from .monitoring import monitoring_interval

RBAC_RULES: list[dict[str, Any]] = [
    {"apiGroups": [GROUP], "resources": ["modeldeployments"], "verbs": ["get"]},
    {"apiGroups": [GROUP], "resources": ["modeldeployments/status"], "verbs": ["patch"]},
    {"apiGroups": [GROUP], "resources": ["trainingjobs"], "verbs": ["get", "create"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
]

TEMPLATE_NOT_FOUND = "TemplateNotFound"
NAME_TAKEN = "TrainingJobNameTaken"

_checks = Loops("retraining check", retry_after=60.0)


def wants_retraining(spec: Mapping[str, Any], **_: Any) -> bool:
    return bool(spec.get("retrain"))


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def follow_retraining(
    event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str,
    spec: Mapping[str, Any], logger: kopf.Logger, **_: Any,
) -> None:  # fmt: skip
    """Every monitoring interval while the spec asks for retraining, in a loop of
    `handlers.loops` (a Kopf daemon would hold a finalizer)."""
    key = (str(namespace), name)
    gone = event.get("type") == "DELETED"
    deleting = bool(body.get("metadata", {}).get("deletionTimestamp"))
    interval = monitoring_interval(spec)

    async def check() -> float:
        await tick(key[0], key[1], logger)
        return interval

    _checks.follow(key, not gone and not deleting and wants_retraining(spec), check)


async def read_training(md: ModelDeployment) -> rt.TrainingSeen | None:
    """The last retraining's TrainingJob, if status names one (someone else's of that
    name counts as gone)."""
    st = md.status.retraining
    if st is None or st.training_job is None:
        return None
    body = await kube.get(API_VERSION, "TrainingJob", st.training_job, str(md.metadata.namespace))
    if body is None or not owned_by(body, md.metadata.uid):
        return rt.TrainingSeen(found=False)
    status = body.get("status") or {}
    return rt.TrainingSeen(
        phase=status.get("phase"),
        model_version=status.get("modelVersion"),
        reason=status.get("reason"),
        message=status.get("message"),
    )


def monitored(md: ModelDeployment, metadata: Mapping[str, Any]) -> rt.Monitored:
    """What the decision needs of the deployment: monitoring's view of the stable
    version, and when a retraining was last asked for (the annotation's write, from the
    object's managedFields)."""
    st = md.status
    asked = (metadata.get("annotations") or {}).get(RETRAIN_REQUEST_ANNOTATION)
    watched = st.monitoring.version if st.monitoring is not None else None
    accuracy = st.monitoring.accuracy if st.monitoring is not None else None
    return rt.Monitored(
        stable_version=st.stable_version,
        watched_version=watched,
        conditions=list(st.conditions),
        labels=accuracy.labels if accuracy is not None else 0,
        in_rollout=st.canary_version is not None,
        requested_at=annotation_set_at(metadata, RETRAIN_REQUEST_ANNOTATION) if asked else None,
    )


async def template_spec(md: ModelDeployment) -> TrainingJobSpec | str:
    """The spec a retraining starts from, or why there is none."""
    assert md.spec.retrain is not None
    template = md.spec.retrain.template
    if template.spec is not None:
        return template.spec
    assert template.training_job_ref is not None
    ref = template.training_job_ref.name
    body = await kube.get(API_VERSION, "TrainingJob", ref, str(md.metadata.namespace))
    if body is None:
        return f"TrainingJob {ref} (retrain.template.trainingJobRef) not found"
    try:
        return TrainingJob.model_validate(body).spec
    except ValidationError as exc:
        return f"TrainingJob {ref} cannot be read: {exc}"[:1000]


async def start(md: ModelDeployment, decision: rt.Decision, now: dt.datetime) -> None:
    """Create the retraining's TrainingJob; a failure to is the retraining's failure."""
    assert md.spec.retrain is not None and decision.start is not None
    st = decision.status
    template = await template_spec(md)
    if isinstance(template, str):
        st.phase, st.reason, st.message = "Failed", TEMPLATE_NOT_FOUND, template
        decision.events.append(("Warning", rt.FAILED, template))
        return
    window = dt.timedelta(seconds=parse_duration(md.spec.retrain.window))
    spec = imp.retrain_spec(md, template, since=now - window, until=now)
    job = imp.retrain_training_job(md, spec, st.count, decision.start, md.status.stable_version)
    st.training_job = job["metadata"]["name"]
    try:
        await kube.create(job)
    except kube.Conflict:
        existing = await kube.get(
            API_VERSION, "TrainingJob", st.training_job, str(md.metadata.namespace)
        )
        if existing is None or not owned_by(existing, md.metadata.uid):
            text = f"a TrainingJob named {st.training_job} exists and is not this deployment's"
            st.phase, st.reason, st.message = "Failed", NAME_TAKEN, text
            decision.events.append(("Warning", rt.FAILED, text))
    except (kube.Invalid, kube.Forbidden) as exc:
        text = f"the API server refused the TrainingJob {st.training_job}: {exc}"[:1000]
        st.phase, st.reason, st.message = "Failed", "InvalidTrainingJob", text
        decision.events.append(("Warning", rt.FAILED, text))


async def tick(namespace: str, name: str, logger: kopf.Logger) -> None:
    """Read, decide, ensure the TrainingJob, write status.retraining, tell."""
    async with lock(namespace, name):
        body = await kube.get(API_VERSION, "ModelDeployment", name, namespace)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            return
        try:
            md = ModelDeployment.model_validate(body)
        except ValidationError:
            return  # the rollout controller reports the schema mismatch
        if md.spec.retrain is None:
            return
        now = dt.datetime.now(dt.UTC).replace(microsecond=0)
        decision = rt.decide(
            md.spec.retrain,
            md.status.retraining,
            monitored(md, body.get("metadata") or {}),
            await read_training(md),
            now,
        )
        if decision.start is not None:
            await start(md, decision, now)
        old = to_k8s(md.status.retraining) if md.status.retraining is not None else None
        new = to_k8s(decision.status)
        if new != old:
            await kube.patch_status("ModelDeployment", name, namespace, {"retraining": new})
        for type_, reason, message in decision.events:
            logger.info("%s: %s", reason, message)
            try:
                await kube.post_event(dict(body), reason, message, type_=type_)
            except kube.KubeError as err:
                logger.warning("cannot post event %s: %s", reason, err)
