"""What a ModelDeployment's decision asks of the cluster, applied: its serving
Deployments, Services, autoscaler and route weight; the evaluation Job of a candidate;
its status and events; and the `evaluations` of the ModelVersions it serves (their
`usedBy` follows the watch, in `handlers.usage`).

Every object applied is built by `orchard.builders.serving` from spec and status alone,
so applying them again is harmless and a restarted operator converges on the same ones.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping
from typing import Any

import kopf

from orchard import kube
from orchard.api.common import API_VERSION, parse_timestamp, status_patch, to_k8s
from orchard.api.modeldeployment import ModelDeployment, ModelDeploymentStatus
from orchard.api.modelversion import ModelVersion, VersionEvaluation
from orchard.builders import improvement as imp
from orchard.builders import serving as sv
from orchard.builders.common import (
    ServerSettings,
    TrainerSettings,
    applied_already,
    owned_by,
    with_applied_digest,
)
from orchard.decisions import observing as ob
from orchard.decisions import rollout as ro

from .traffic_routes import set_route_weight
from .usage import read_version

HPA_API_VERSION = "autoscaling/v2"


async def _versions(
    wanted: tuple[str | None, ...], reads: ob.Reads, namespace: str
) -> dict[str, ModelVersion]:
    """The ModelVersions the status serves: as read this tick, else fetched now."""
    found: dict[str, ModelVersion] = {}
    for name in {n for n in wanted if n}:
        body = reads.versions.get(name)
        if name not in reads.versions:
            body = await read_version(namespace, name)
        mv, _ = ob.version_info(name, body)
        if mv is not None:
            found[name] = mv
    return found


async def ensure_children(
    md: ModelDeployment,
    status: ModelDeploymentStatus,
    reads: ob.Reads,
    obs: ro.Observations,
    now: dt.datetime,
    logger: kopf.Logger,
) -> None:
    """Apply what the status asks for: Deployments, Services, HPA, HTTPRoute weights.

    Raises `sv.UnsupportedArtifact` for a version no serving pod can read.
    """
    settings = ServerSettings.from_env()
    spec, name, namespace = md.spec, str(md.metadata.name), str(md.metadata.namespace)
    versions = await _versions((status.stable_version, status.canary_version), reads, namespace)
    total = obs.stable_desired if spec.autoscaling else spec.replicas
    stable_mv = versions.get(status.stable_version or "")
    if stable_mv is not None:
        replicas = None if spec.autoscaling else ro.stable_replicas(spec, status, total)
        stable = sv.deployment(md, "stable", stable_mv, replicas, settings)
        await _apply_unless_applied(stable, reads.stable_deployment)
    else:
        logger.info("stable version %s not found yet", status.stable_version)
    canary_mv = versions.get(status.canary_version or "")
    canary_now = int(((reads.canary_deployment or {}).get("spec") or {}).get("replicas") or 0)
    if status.canary_version and canary_mv is not None:
        replicas = ro.canary_replicas(spec, status, total)
        canary = sv.deployment(md, "canary", canary_mv, replicas, settings)
        await _apply_unless_applied(canary, reads.canary_deployment)
    elif canary_now:  # scale the canary away (its Deployment stays, at zero pods)
        await kube.merge_patch(
            "apps/v1",
            "Deployment",
            sv.deployment_name(name, "canary"),
            namespace,
            {"spec": {"replicas": 0}},
        )
    for svc in sv.services(md):
        await kube.apply(svc)
    hpa = sv.hpa(md)
    if hpa is not None:
        await kube.apply(hpa)
    elif md.status.observed_generation != md.metadata.generation and md.metadata.generation != 1:
        # Autoscaling turned off is a change of spec; a spec never changed (generation 1)
        # never asked for an autoscaler, and is not asked about one.
        await _remove_own_hpa(md)
    if reads.traffic.route is not None:
        await set_route_weight(md, status, reads.traffic.route, now, obs.canary_ready_since, logger)


async def _apply_unless_applied(obj: dict[str, Any], live: Mapping[str, Any] | None) -> None:
    """Apply a serving Deployment unless the one read this tick already is that manifest
    (`applied_already`): most ticks change nothing of it."""
    manifest = with_applied_digest(obj)
    if not applied_already(manifest, live):
        await kube.apply(manifest)


def _registered_at(mv: ModelVersion) -> dt.datetime | None:
    """When a version was registered: production rows answered after it never trained it."""
    created = mv.metadata.creation_timestamp
    return parse_timestamp(created) if created else None


async def ensure_evaluation(
    md: ModelDeployment, status: ModelDeploymentStatus, reads: ob.Reads, logger: kopf.Logger
) -> None:
    """The evaluation status asks for, while it runs: its Job, made once (a Job of that
    name that is not this deployment's is left alone, and the evaluation times out)."""
    asked = status.evaluation
    if asked is None or asked.phase != "Running":
        return
    namespace = str(md.metadata.namespace)
    name = imp.evaluation_job_name(md, asked.candidate, asked.baseline)
    asked.job = name
    existing = await kube.get("batch/v1", "Job", name, namespace)
    if existing is not None:
        if not owned_by(existing, md.metadata.uid):
            logger.warning("Job %s exists and is not this deployment's", name)
        return
    versions = await _versions((asked.candidate, asked.baseline), reads, namespace)
    candidate, baseline = versions.get(asked.candidate), versions.get(asked.baseline)
    if candidate is None or baseline is None:
        return  # gone: the evaluation times out and says so
    job = imp.evaluation_job(
        md, candidate, baseline, _registered_at(candidate), TrainerSettings.from_env()
    )
    with contextlib.suppress(kube.Conflict):  # made by an earlier tick
        await kube.create(job)


async def ensure_replay(
    md: ModelDeployment, status: ModelDeploymentStatus, reads: ob.Reads, logger: kopf.Logger
) -> None:
    """The replay status asks for, while it runs: its Job, made once, sending the
    candidate's evaluation rows to the ready pods of both tracks."""
    asked = status.replay
    if asked is None or asked.phase != "Running" or asked.started_at is None:
        return
    namespace = str(md.metadata.namespace)
    name = imp.replay_job_name(md, asked.version, asked.step, asked.started_at)
    asked.job = name
    if await kube.get("batch/v1", "Job", name, namespace) is not None:
        return
    candidate = (await _versions((asked.version,), reads, namespace)).get(asked.version)
    targets = ob.replay_targets(md.model_copy(update={"status": status}), reads.pods)
    if candidate is None or not targets:
        logger.info("replay of %s: no version or no ready pod to send to yet", asked.version)
        return  # the replay times out and says so
    job = imp.replay_job(
        md,
        candidate,
        targets,
        asked.started_at,
        asked.step,
        _registered_at(candidate),
        TrainerSettings.from_env(),
    )
    with contextlib.suppress(kube.Conflict):
        await kube.create(job)


async def record_evaluation(
    md: ModelDeployment, old: ModelDeploymentStatus, new: ModelDeploymentStatus
) -> None:
    """A verdict just given: the candidate ModelVersion's status keeps it too."""
    done = new.evaluation
    if done is None or done.verdict is None or done == old.evaluation:
        return
    namespace = str(md.metadata.namespace)
    body = await kube.get(API_VERSION, "ModelVersion", done.candidate, namespace)
    if body is None:
        return
    record = VersionEvaluation(
        deployment=str(md.metadata.name),
        against=done.baseline,
        metric=done.metric,
        value=done.candidate_value,
        against_value=done.baseline_value,
        rows=done.rows,
        dataset_digest=done.dataset_digest,
        verdict=done.verdict,
        reason=done.reason,
        at=done.at,
    )
    kept = list((body.get("status") or {}).get("evaluations") or [])
    await kube.patch_status(
        "ModelVersion", done.candidate, namespace, {"evaluations": [*kept, to_k8s(record)][-10:]}
    )


async def _remove_own_hpa(md: ModelDeployment) -> None:
    """Autoscaling was turned off: remove the autoscaler this deployment made (only it:
    one of the same name that someone else made is left alone)."""
    name, namespace = sv.hpa_name(str(md.metadata.name)), str(md.metadata.namespace)
    existing = await kube.get(HPA_API_VERSION, "HorizontalPodAutoscaler", name, namespace)
    if existing is not None and owned_by(existing, md.metadata.uid):
        await kube.delete(HPA_API_VERSION, "HorizontalPodAutoscaler", name, namespace)


async def write_status(
    body: Mapping[str, Any],
    old: ModelDeploymentStatus,
    decision: ro.Decision,
    logger: kopf.Logger,
) -> None:
    """Patch what changed in status over the object as read (`kube.Conflict` when it
    changed since), then post the decision's events."""
    meta = body["metadata"]
    patch = status_patch(to_k8s(old), to_k8s(decision.status))
    if patch:
        await kube.patch_status(
            "ModelDeployment", meta["name"], meta["namespace"], patch,
            resource_version=meta.get("resourceVersion"),
        )  # fmt: skip
    for event in decision.events:
        logger.info("%s: %s", event.reason, event.message)
        try:
            await kube.post_event(dict(body), event.reason, event.message, type_=event.type)
        except kube.KubeError as err:
            logger.warning("cannot post event %s: %s", event.reason, err)
