"""The objects a ModelDeployment owns: a Deployment per track, Services, HTTPRoute, HPA.

Two tracks, `stable` and `canary`, each a Deployment of the model server serving one
ModelVersion. With traffic mode `replicas` one Service selects the ready pods of both
tracks, so traffic splits by the ratio of ready pods; with `gatewayAPI` that Service
selects the stable track only and an HTTPRoute splits by weights between two per-track
Services. Pure functions from typed inputs to plain dicts; the handler only sends them.

By pod counts the split is per connection (kube-proxy picks a pod when a connection
opens): a client holding one keep-alive connection stays on the pod it met first, so
the split shows over many clients or reconnecting ones. An HTTPRoute splits requests.

Each Service has the port `http` and, unless `spec.server.grpcPort` is 0, `grpc` (the
Open Inference Protocol's gRPC service, appProtocol `kubernetes.io/h2c`). gRPC keeps one
HTTP/2 connection per client, so by pod counts a gRPC client stays on one track; an
HTTPRoute splits HTTP only, and gRPC through the Service goes to the stable track.
Probes stay on HTTP.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from orchard.api.common import GROUP, parse_duration
from orchard.api.modeldeployment import (
    GATEWAY_GROUP,
    MODEL_VERSION_LABEL,
    MODELDEPLOYMENT_LABEL,
    TRACK_LABEL,
    ModelDeployment,
)
from orchard.api.modelversion import ModelVersion
from orchard.builders.common import (
    MODEL_LABEL,
    PVC_ROOT,
    SERVING_COMPONENT,
    VERSION_LABEL,
    ServerSettings,
    app_labels,
    bounded_name,
    owner_reference,
    pvc_claim,
    restricted_container_security,
    restricted_pod_security,
)
from orchard.contracts import COLLECT_ENV_PREFIX

Track = Literal["stable", "canary"]

SERVER_CONTAINER = "server"
FETCH_CONTAINER = "fetch-model"
MODEL_ROOT = "/models"
FETCHED_DIR = f"{MODEL_ROOT}/artifact"
PRESTOP_SECONDS = 3
GRPC_APP_PROTOCOL = "kubernetes.io/h2c"  # HTTP/2 over cleartext, as Kubernetes names it
COLLECT_ROOT = "/var/run/orchard/collected"  # the deployment's collection directory
# A serving container without spec.resources, and the init container that fetches an S3
# artifact: fixed requests and limits, never a BestEffort pod.
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "256Mi"},
    "limits": {"cpu": "1", "memory": "1Gi"},
}
FETCH_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "50m", "memory": "128Mi"},
    "limits": {"cpu": "500m", "memory": "512Mi"},
}

# The init container's whole program: copy an S3 prefix into the shared emptyDir with
# the artifact store the trainer wrote it with. The server verifies the digests after.
FETCH_PROGRAM = (
    "import sys; from pathlib import Path; "
    "from orchard.artifacts.store import get_dir; "
    "get_dir(sys.argv[1], Path(sys.argv[2])); "
    "print('fetched', sys.argv[1])"
)


class UnsupportedArtifact(ValueError):
    """A ModelVersion's artifact URI that a serving pod cannot read."""


# --- Names and labels -----------------------------------------------------------------------


def deployment_name(md_name: str, track: Track) -> str:
    return bounded_name(md_name, f"-{track}")


def service_name(md_name: str) -> str:
    """The Service clients use: the ModelDeployment's own name."""
    return md_name


def track_service_name(md_name: str, track: Track) -> str:
    return bounded_name(md_name, f"-{track}")


def hpa_name(md_name: str) -> str:
    return md_name


def peers_service_name(md_name: str) -> str:
    """The headless Service whose DNS name lists the serving pods (for feedback)."""
    return bounded_name(md_name, "-pods")


def monitoring_window_name(md_name: str) -> str:
    """The ConfigMap that keeps the monitoring window across operator restarts."""
    return bounded_name(md_name, "-monitoring")


MONITORING_WINDOW_KEY = "window.json"


def selector(md_name: str, track: Track | None = None) -> dict[str, str]:
    """Label selector of a track's pods, or of both tracks' pods."""
    out = {MODELDEPLOYMENT_LABEL: md_name}
    if track is not None:
        out[TRACK_LABEL] = track
    return out


def labels(
    md: ModelDeployment, track: Track | None = None, version: str | None = None
) -> dict[str, str]:
    name = str(md.metadata.name)
    # What the Deployments and Services select by is part of the labels by construction.
    out = app_labels("orchard-server", name, SERVING_COMPONENT) | selector(name, track)
    if version is not None:
        out[MODEL_VERSION_LABEL] = version
        out[VERSION_LABEL] = version[:63]
    return out


def _metadata(md: ModelDeployment, name: str, lab: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": md.metadata.namespace,
        "labels": lab,
        "ownerReferences": [
            owner_reference("ModelDeployment", str(md.metadata.name), str(md.metadata.uid))
        ],
    }


def url(md: ModelDeployment) -> str:
    """The in-cluster URL of the model's Service."""
    return (
        f"http://{service_name(str(md.metadata.name))}.{md.metadata.namespace}.svc:"
        f"{md.spec.server.port}"
    )


# --- The artifact in the pod --------------------------------------------------------------------


def artifact_volumes(
    mv: ModelVersion, image: str, pull_policy: str
) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """(model dir, volumes, server mounts, init containers) that put the artifact in the pod.

    pvc://<claim>/<path>: the claim mounted read-only where the artifact store looks.
    s3://<bucket>/<prefix>: an init container fetches it into an emptyDir.
    file:///<path>: a path already inside the image (for local experiments).
    """
    uri = mv.spec.artifact.uri
    parts = urlsplit(uri)
    if parts.scheme == "pvc":
        claim = pvc_claim(uri)
        assert claim is not None
        path = f"{PVC_ROOT}/{claim}/{parts.path.lstrip('/')}".rstrip("/")
        if ".." in path.split("/"):
            raise UnsupportedArtifact(f"artifact path leaves its claim: {uri}")
        volume = {
            "name": "artifact",
            "persistentVolumeClaim": {"claimName": claim, "readOnly": True},
        }
        mount = {"name": "artifact", "mountPath": f"{PVC_ROOT}/{claim}", "readOnly": True}
        return path, [volume], [mount], []
    if parts.scheme == "s3":
        env: list[dict[str, Any]] = [
            {"name": "HOME", "value": "/tmp"},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
        ]
        env_from: list[dict[str, Any]] = []
        if mv.spec.artifact.secret_name:
            env_from.append({"secretRef": {"name": mv.spec.artifact.secret_name}})
        init = {
            "name": FETCH_CONTAINER,
            "image": image,
            "imagePullPolicy": pull_policy,
            "command": ["python", "-c", FETCH_PROGRAM, uri, FETCHED_DIR],
            "env": env,
            "envFrom": env_from,
            "volumeMounts": [
                {"name": "model", "mountPath": MODEL_ROOT},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
            "securityContext": restricted_container_security(),
            "resources": FETCH_RESOURCES,
        }
        volume = {"name": "model", "emptyDir": {"sizeLimit": "2Gi"}}
        mount = {"name": "model", "mountPath": MODEL_ROOT, "readOnly": True}
        return FETCHED_DIR, [volume], [mount], [init]
    if parts.scheme == "file":
        return parts.path.rstrip("/") or "/", [], [], []
    raise UnsupportedArtifact(f"a serving pod cannot read artifact URI {uri!r} (pvc://, s3://)")


# --- Children -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectionPlace:
    """Where a deployment's pods write collected data: a directory of a claim, or a
    prefix of a bucket."""

    scheme: Literal["pvc", "s3"]
    root: str  # the claim, or the bucket
    path: str  # within it: <uri path>/<namespace>/<name>

    @property
    def uri(self) -> str:
        return f"{self.scheme}://{self.root}/{self.path}/"


def collection_place(md: ModelDeployment) -> CollectionPlace | None:
    """The deployment's directory of the spec's place; None when nothing is collected.
    The place is always the spec's (the admin's policy judges it): serving pods get write
    access to no claim or bucket that the spec does not name."""
    collection = md.spec.monitoring.collection
    uri = collection.uri
    if not md.spec.monitoring.enabled or collection.sample_rate <= 0 or uri is None:
        return None
    parts = urlsplit(uri)
    if parts.scheme not in ("pvc", "s3") or not parts.netloc:
        return None
    base = parts.path.strip("/")
    path = "/".join(p for p in (base, str(md.metadata.namespace), str(md.metadata.name)) if p)
    if ".." in path.split("/"):
        return None  # refused at admission too
    return CollectionPlace("pvc" if parts.scheme == "pvc" else "s3", parts.netloc, path)


def _collection(
    md: ModelDeployment, mv: ModelVersion
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(volumes, mounts, env, args) for the server to collect into its place, if any.
    On a claim the mount is the deployment's own directory of it (a subPath), writable;
    the rest of the claim, artifacts included, stays out of reach. On S3 the spec's
    Secret gives the server its credentials, under COLLECT_ENV_PREFIX."""
    place = collection_place(md)
    if place is None:
        return [], [], [], []
    settings = md.spec.monitoring.collection
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if place.scheme == "pvc":
        volumes = [{"name": "collection", "persistentVolumeClaim": {"claimName": place.root}}]
        mounts = [{"name": "collection", "mountPath": COLLECT_ROOT, "subPath": place.path}]
        target = f"{COLLECT_ROOT}/{mv.metadata.name}"
    else:
        target = f"{place.uri}{mv.metadata.name}/"
    env: list[dict[str, Any]] = [
        {"name": "ORCHARD_COLLECT_TO", "value": target},
        {"name": "ORCHARD_COLLECT_SAMPLE_RATE", "value": f"{settings.sample_rate:g}"},
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
    ]
    if place.scheme == "s3" and settings.secret_name:
        env.extend(
            {
                "name": f"{COLLECT_ENV_PREFIX}{key}",
                "valueFrom": {"secretKeyRef": {"name": settings.secret_name, "key": key,
                                               "optional": key.endswith("URL")}},
            }
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL")
        )  # fmt: skip
    args = [
        "--collect-flush-seconds", f"{parse_duration(settings.flush_interval):g}",
        "--collect-segment-rows", str(settings.max_segment_rows),
    ]  # fmt: skip
    return volumes, mounts, env, args


def _one_volume_per_claim(
    volumes: list[dict[str, Any]], extra: list[dict[str, Any]], mounts: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The extra volumes and their mounts, with a claim that a volume already holds mounted
    from that volume: kubelet never mounts two volumes of one claim in a pod. The shared
    volume is then writable, and each mount says whether it is (the artifact's is not)."""
    by_claim = {
        v["persistentVolumeClaim"]["claimName"]: v for v in volumes if "persistentVolumeClaim" in v
    }
    kept, renamed = [], {}
    for volume in extra:
        held = by_claim.get(volume.get("persistentVolumeClaim", {}).get("claimName"))
        if held is None:
            kept.append(volume)
            continue
        held["persistentVolumeClaim"]["readOnly"] = False
        renamed[volume["name"]] = held["name"]
    return kept, [m | {"name": renamed.get(m["name"], m["name"])} for m in mounts]


def deployment(
    md: ModelDeployment,
    track: Track,
    mv: ModelVersion,
    replicas: int | None,
    settings: ServerSettings | None = None,
) -> dict[str, Any]:
    """The Deployment of one track serving one ModelVersion.

    `replicas` None leaves the count to an autoscaler. The rolling update never takes a
    ready pod away before its replacement is ready, so promotion keeps full capacity.
    """
    settings = settings or ServerSettings()
    name = str(md.metadata.name)
    version = str(mv.metadata.name)
    server = md.spec.server
    image = server.image or settings.image
    model_dir, volumes, mounts, inits = artifact_volumes(mv, image, settings.image_pull_policy)
    collect_volumes, collect_mounts, collect_env, collect_args = _collection(md, mv)
    collect_volumes, collect_mounts = _one_volume_per_claim(
        volumes, collect_volumes, collect_mounts
    )
    pod_labels = labels(md, track, version) | {MODEL_LABEL: mv.spec.model}
    args = [
        "serve",
        "--model-dir",
        model_dir,
        "--model-name",
        name,
        "--model-version",
        version,
        "--expected-digest",
        mv.spec.artifact.digest,
        "--port",
        str(server.port),
        "--grpc-port",
        str(server.grpc_port),
        "--max-batch-size",
        str(server.max_batch_size),
    ]
    if server.max_batch_wait_ms is not None:
        args += ["--max-batch-wait-ms", f"{server.max_batch_wait_ms:g}"]
    args += collect_args
    ports = [{"name": "http", "containerPort": server.port, "protocol": "TCP"}]
    if server.grpc_port:
        ports.append({"name": "grpc", "containerPort": server.grpc_port, "protocol": "TCP"})
    container = {
        "name": SERVER_CONTAINER,
        "image": image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["orchard"],
        "args": args,
        "ports": ports,
        # A refused artifact's one line (contracts.SERVE_REFUSED_PREFIX) reaches status.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "env": [
            {"name": "HOME", "value": "/tmp"},
            {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
            {"name": "PYTHONUNBUFFERED", "value": "1"},
            # Feedback that reaches a pod that did not answer is asked of the others.
            {"name": "ORCHARD_PEERS", "value": peers_service_name(name)},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            *collect_env,
        ],
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 2,
            "timeoutSeconds": 2,
            "failureThreshold": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "initialDelaySeconds": 5,
            "periodSeconds": 10,
            "timeoutSeconds": 3,
            "failureThreshold": 3,
        },
        # Leave the Service's endpoints before stopping, so no request meets a closed port.
        "lifecycle": {"preStop": {"sleep": {"seconds": PRESTOP_SECONDS}}},
        "resources": md.spec.resources or DEFAULT_RESOURCES,
        "securityContext": restricted_container_security(),
        "volumeMounts": [*mounts, *collect_mounts, {"name": "tmp", "mountPath": "/tmp"}],
    }
    spec: dict[str, Any] = {
        "selector": {"matchLabels": selector(name, track)},
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
        },
        "revisionHistoryLimit": 2,
        "template": {
            "metadata": {"labels": pod_labels},
            "spec": {
                "securityContext": restricted_pod_security(),
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 10,
                "initContainers": inits,
                "containers": [container],
                "volumes": [
                    *volumes,
                    *collect_volumes,
                    {"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}},
                ],
            },
        },
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(md, deployment_name(name, track), labels(md, track, version)),
        "spec": spec,
    }


def _service(
    md: ModelDeployment, name: str, sel: dict[str, str], track: Track | None
) -> dict[str, Any]:
    server = md.spec.server
    ports = [{"name": "http", "port": server.port, "targetPort": "http", "protocol": "TCP"}]
    if server.grpc_port:  # HTTP/2 without TLS: Kubernetes' own name for it
        ports.append(
            {"name": "grpc", "port": server.grpc_port, "targetPort": "grpc", "protocol": "TCP",
             "appProtocol": GRPC_APP_PROTOCOL}
        )  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(md, name, labels(md, track)),
        "spec": {"type": "ClusterIP", "selector": sel, "ports": ports},
    }


def service(md: ModelDeployment) -> dict[str, Any]:
    """The Service clients use. By pod counts it selects both tracks, so the share of
    ready pods is the share of traffic; with an HTTPRoute it selects the stable track."""
    name = str(md.metadata.name)
    track: Track | None = "stable" if md.spec.traffic.mode == "gatewayAPI" else None
    return _service(md, service_name(name), selector(name, track), None)


def track_service(md: ModelDeployment, track: Track) -> dict[str, Any]:
    """A Service of one track: the HTTPRoute's backends."""
    name = str(md.metadata.name)
    return _service(md, track_service_name(name, track), selector(name, track), track)


def monitoring_window(md: ModelDeployment, window_json: str) -> dict[str, Any]:
    """The stored monitoring window (`orchard.decisions.monitoring.dumps`)."""
    name = monitoring_window_name(str(md.metadata.name))
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(md, name, labels(md)),
        "data": {MONITORING_WINDOW_KEY: window_json},
    }


def peers_service(md: ModelDeployment) -> dict[str, Any]:
    """A headless Service over both tracks' ready pods: its DNS name resolves to their
    addresses, which is how a pod finds the others to ask about feedback."""
    name = str(md.metadata.name)
    svc = _service(md, peers_service_name(name), selector(name), None)
    svc["spec"]["clusterIP"] = "None"
    return svc


def services(md: ModelDeployment) -> list[dict[str, Any]]:
    """Every Service the mode needs, and the pods' headless one."""
    out = [service(md), peers_service(md)]
    if md.spec.traffic.mode == "gatewayAPI":
        out += [track_service(md, "stable"), track_service(md, "canary")]
    return out


def _owned_rule(rule: Mapping[str, Any], md: ModelDeployment, route_namespace: str) -> bool:
    """A rule is this deployment's when it has backends and every one is one of its
    Services (the main one, or a track's) in its namespace: that is how a person hands a
    rule to Orchard. Every other rule of the route is someone else's and is never changed."""
    refs = rule.get("backendRefs") or []
    name, namespace = str(md.metadata.name), str(md.metadata.namespace)
    ours = {
        service_name(name),
        track_service_name(name, "stable"),
        track_service_name(name, "canary"),
    }
    return bool(refs) and all(
        ref.get("group", "") in ("", "core")
        and ref.get("kind", "Service") == "Service"
        and ref.get("name") in ours
        and (ref.get("namespace") or route_namespace) == namespace
        for ref in refs
    )


def http_route_owned_rules(route: Mapping[str, Any], md: ModelDeployment) -> list[int]:
    """The indices of the route's rules whose backends the operator sets."""
    namespace = str((route.get("metadata") or {}).get("namespace") or md.metadata.namespace)
    rules = (route.get("spec") or {}).get("rules") or []
    return [i for i, rule in enumerate(rules) if _owned_rule(rule, md, namespace)]


def http_route_rules(
    md: ModelDeployment, route: Mapping[str, Any], weight: int
) -> list[dict[str, Any]]:
    """The route's rules with the backends of this deployment's rules set to the two tracks.

    Only rules that send traffic to this deployment's Services change, and in them only
    `backendRefs`; every other rule, and matches and filters, stay as written. Weights
    are (100 - w, w) in percent. A route in another namespace names the Services' namespace.
    """
    name = str(md.metadata.name)
    port = md.spec.server.port
    route_namespace = (route.get("metadata") or {}).get("namespace") or md.metadata.namespace
    cross = route_namespace != md.metadata.namespace

    def backend(track: Track, share: int) -> dict[str, Any]:
        ref: dict[str, Any] = {
            "group": "",
            "kind": "Service",
            "name": track_service_name(name, track),
        }
        if cross:
            ref["namespace"] = str(md.metadata.namespace)
        return {**ref, "port": port, "weight": share}

    backends = [backend("stable", 100 - weight), backend("canary", weight)]
    owned = set(http_route_owned_rules(route, md))
    rules = list((route.get("spec") or {}).get("rules") or [])
    return [
        {**dict(rule), "backendRefs": backends} if i in owned else dict(rule)
        for i, rule in enumerate(rules)
    ]


def http_route_weights(route: Mapping[str, Any], md: ModelDeployment) -> tuple[int, int] | None:
    """(stable, canary) weights the first of this deployment's rules carries now."""
    owned = http_route_owned_rules(route, md)
    if not owned:
        return None
    rule = ((route.get("spec") or {}).get("rules") or [])[owned[0]]
    name = str(md.metadata.name)
    weights = {ref.get("name"): int(ref.get("weight", 1)) for ref in rule.get("backendRefs") or []}
    stable = weights.get(track_service_name(name, "stable"))
    canary = weights.get(track_service_name(name, "canary"))
    if stable is None or canary is None:
        return None
    return stable, canary


def reference_granted(grants: Sequence[Mapping[str, Any]], md: ModelDeployment, route: str) -> bool:
    """Whether a Gateway API ReferenceGrant in the route's namespace lets ModelDeployments
    of this one's namespace set that HTTPRoute: the route's owner consents, not the user."""
    for grant in grants:
        spec = grant.get("spec") or {}
        sources = spec.get("from") or []
        if not any(
            f.get("group") == GROUP
            and f.get("kind") == "ModelDeployment"
            and f.get("namespace") == md.metadata.namespace
            for f in sources
        ):
            continue
        if any(
            t.get("group") == GATEWAY_GROUP
            and t.get("kind") == "HTTPRoute"
            and t.get("name") in (None, "", route)
            for t in spec.get("to") or []
        ):
            return True
    return False


def http_route_accepted(route: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether a parent Gateway accepted the route, with the reason it gives."""
    parents = (route.get("status") or {}).get("parents") or []
    for parent in parents:
        for cond in parent.get("conditions") or []:
            if cond.get("type") == "Accepted":
                if cond.get("status") == "True":
                    return True, "Accepted"
                return False, str(cond.get("reason") or "NotAccepted")
    return False, "NoParentStatus"


def hpa(md: ModelDeployment) -> dict[str, Any] | None:
    """The autoscaler of the stable Deployment, when spec.autoscaling asks for one."""
    auto = md.spec.autoscaling
    if auto is None:
        return None
    name = str(md.metadata.name)
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(md, hpa_name(name), labels(md, "stable")),
        "spec": {
            "scaleTargetRef": {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "name": deployment_name(name, "stable"),
            },
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": auto.target_cpu_utilization_percentage,
                        },
                    },
                }
            ],
        },
    }
