"""ModelDeployment: serve a ModelVersion, and roll a new one out as a canary with analysis.

A new target version (`spec.modelVersion` changed, or one `spec.track` selected) starts a
rollout: it is first scored against the stable version on the same rows, then serves a
growing share of traffic, step by step, while its error rate, latency and predictions are
compared with the stable version's; a failed analysis rolls it back. `spec.retrain` trains
new versions on a trigger (`orchard.api.improvement`).
"""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from typing import Any, ClassVar, Literal, Self

from pydantic import ConfigDict, Field, model_validator

from orchard.artifacts.drift import PSI_THRESHOLD

from .common import (
    AGE_COLUMN,
    GROUP,
    PHASE_COLUMN,
    READY_COLUMN,
    CamelModel,
    Conditions,
    DnsLabel,
    DnsSubdomain,
    Duration,
    PrinterColumn,
    Resource,
    ResourceInfo,
    cel,
    validations,
)
from .improvement import (
    EvaluationStatus,
    ReplayStatus,
    Retrain,
    RetrainingStatus,
    Track,
    TrackingStatus,
)

RolloutAction = Literal["promote", "abort"]

# The labels of every serving pod (and Deployment) a ModelDeployment owns: the builders
# write them, the controller selects and counts pods by them.
MODELDEPLOYMENT_LABEL = f"{GROUP}/modeldeployment"
TRACK_LABEL = f"{GROUP}/track"  # stable | canary
MODEL_VERSION_LABEL = f"{GROUP}/model-version"


class Autoscaling(CamelModel):
    """A HorizontalPodAutoscaler for the stable Deployment, instead of a fixed replica count."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.minReplicas <= self.maxReplicas",
                "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
                field_path=".minReplicas",
            )
        )
    )

    min_replicas: int = Field(default=1, ge=1, le=100, description="Fewest replicas.")
    max_replicas: int = Field(ge=1, le=100, description="Most replicas.")
    target_cpu_utilization_percentage: int = Field(
        default=80,
        ge=1,
        le=100,
        alias="targetCPUUtilizationPercentage",
        description="Average CPU use, in percent of requests, to scale at.",
    )

    @model_validator(mode="after")
    def _bounds(self) -> Self:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
        return self


class Server(CamelModel):
    """The model server in each serving pod."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.grpcPort != self.port",
                "server.grpcPort must differ from server.port",
                field_path=".grpcPort",
            )
        )
    )

    image: str | None = Field(
        default=None,
        max_length=512,
        description="Server image; by default the one the operator is configured with. "
        "Another image only where the admin's policy allows its prefix "
        "(images.allowedPrefixes), else the deployment is Degraded with PolicyViolation.",
    )
    port: int = Field(default=8080, ge=1, le=65535, description="HTTP port of the server.")
    grpc_port: int = Field(
        default=8081,
        ge=0,
        le=65535,
        description="gRPC port of the server: the Open Inference Protocol's "
        "GRPCInferenceService, the Service's port named grpc (KServe's 8081); 0 for none.",
    )
    max_batch_size: int = Field(
        default=32, ge=1, le=4096, description="Most requests batched into one prediction."
    )
    max_batch_wait_ms: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description="Longest a request waits for a batch to fill, in milliseconds.",
    )

    @model_validator(mode="after")
    def _distinct_ports(self) -> Self:
        if self.grpc_port == self.port:
            raise ValueError("server.grpcPort must differ from server.port")
        return self


class CanaryStep(CamelModel):
    """One step of a rollout: send this share of traffic to the canary, then wait."""

    weight: int = Field(ge=1, le=100, description="Percent of traffic to the canary (1..100).")
    pause: Duration = Field(
        default="15s", description="How long to hold this step while analysing, e.g. 30s, 2m."
    )


class Analysis(CamelModel):
    """The checks that decide whether a canary may go on; any failure rolls it back."""

    interval: Duration = Field(default="5s", description="How often the canary is analysed.")
    min_requests: int = Field(
        default=20,
        ge=0,
        description="Fewest canary requests in a step before a verdict is given.",
    )
    max_error_rate: float = Field(
        default=0.05, ge=0, le=1, description="Highest canary error rate allowed (0..1)."
    )
    max_latency_p95: Duration = Field(
        default="500ms", description="Highest canary 95th percentile latency, e.g. 150ms."
    )
    max_latency_ratio: float = Field(
        default=2.0, gt=0, description="Highest canary p95 latency as a multiple of stable's."
    )
    max_prediction_shift: float = Field(
        default=0.2,
        ge=0,
        le=1,
        description="Largest shift of the canary's predictions from the stable's (0..1).",
    )
    max_metric_drop: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Largest drop of the registered test metric against stable's, checked "
        "before any traffic moves.",
    )
    metric: str | None = Field(
        default=None,
        max_length=64,
        description="Registered metric to compare; by default the first both versions have.",
    )
    replay: bool | None = Field(
        default=None,
        description="When a step's pause ends with fewer than minRequests canary requests, "
        "send the candidate's evaluation rows to the pods of both tracks (a Job; the server "
        "leaves replayed requests out of monitoring, feedback and collection) and judge the "
        "step on them; by default on for a deployment that tracks a model (spec.track), "
        "off otherwise (a quiet step then pauses).",
    )


def _default_steps() -> list[CanaryStep]:
    return [CanaryStep(weight=25, pause="15s"), CanaryStep(weight=50, pause="15s")]


class Canary(CamelModel):
    """How a new version is rolled out."""

    steps: list[CanaryStep] = Field(
        default_factory=_default_steps,
        min_length=1,
        max_length=10,
        description="Traffic steps, weights strictly increasing; after the last the canary is "
        "promoted.",
        json_schema_extra=validations(
            cel(
                "self.map(s, s.weight).isSorted() && "
                "self.all(a, self.exists_one(b, b.weight == a.weight))",
                "canary.steps weights must be strictly increasing",
            )
        ),
    )
    analysis: Analysis = Field(
        default_factory=Analysis, description="The checks run at every step."
    )

    @model_validator(mode="after")
    def _increasing(self) -> Self:
        weights = [s.weight for s in self.steps]
        if any(b <= a for a, b in pairwise(weights)):
            raise ValueError("canary.steps weights must be strictly increasing")
        return self


# Gateway API, whose HTTPRoutes (v1) carry the traffic split and whose ReferenceGrants
# (v1beta1) let a route in another namespace be set.
GATEWAY_GROUP = "gateway.networking.k8s.io"
HTTPROUTE_API_VERSION = f"{GATEWAY_GROUP}/v1"
REFERENCEGRANT_API_VERSION = f"{GATEWAY_GROUP}/v1beta1"


class HTTPRouteRef(CamelModel):
    """A Gateway API HTTPRoute whose backend weights the operator sets."""

    name: DnsSubdomain = Field(
        description="Name of the HTTPRoute. Orchard sets the backends of the rules whose "
        "backendRefs all name this deployment's Services (its main Service, or "
        "<name>-stable / <name>-canary) and never touches the route's other rules."
    )
    namespace: DnsLabel | None = Field(
        default=None,
        description="Its namespace; by default the deployment's. A route in another "
        "namespace is set only where a ReferenceGrant there allows it (from group "
        "orchard.dev, kind ModelDeployment, this namespace; to kind HTTPRoute).",
    )


class Traffic(CamelModel):
    """How traffic is split between stable and canary."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.mode != 'gatewayAPI' || has(self.httpRoute)",
                "traffic.httpRoute is required when traffic.mode is gatewayAPI",
                field_path=".httpRoute",
                reason="FieldValueRequired",
            )
        )
    )

    mode: Literal["replicas", "gatewayAPI"] = Field(
        default="replicas",
        description="replicas: one Service over both Deployments, split by pod counts; "
        "gatewayAPI: weights on an HTTPRoute.",
    )
    http_route: HTTPRouteRef | None = Field(
        default=None, alias="httpRoute", description="The HTTPRoute, with mode gatewayAPI."
    )

    @model_validator(mode="after")
    def _route(self) -> Self:
        if self.mode == "gatewayAPI" and self.http_route is None:
            raise ValueError("traffic.httpRoute is required when traffic.mode is gatewayAPI")
        return self


LiveMetric = Literal["accuracy", "mae", "rmse"]


class AccuracyMonitoring(CamelModel):
    """Live accuracy from feedback: true labels sent after the answers
    (`POST /v2/models/{name}/feedback`), judged against a threshold."""

    metric: LiveMetric | None = Field(
        default=None,
        description="accuracy (higher is better) or mae / rmse (lower is better); by default "
        "accuracy for a classifier and rmse for a regression.",
    )
    threshold: float | None = Field(
        default=None,
        ge=0,
        description="The lowest accuracy, or the highest error, allowed; by default the "
        "version's registered test value worsened by maxDegradation.",
    )
    max_degradation: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Without a threshold: how much worse than the registered test value the "
        "live metric may be, as a fraction of it (0.05: accuracy 0.95 may fall to 0.9025).",
    )
    min_labels: int = Field(
        default=100,
        ge=1,
        le=1_000_000_000,
        description="Fewest labelled rows in the window before accuracy is judged; fewer "
        "leave AccuracyDegraded Unknown with reason NotEnoughSamples.",
    )


class Collection(CamelModel):
    """Production data kept for retraining: a sample of requests (rows, prediction, id,
    time, version) and the feedback labels, written by each serving pod as Parquet
    segments (docs/collection.md)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.uri) || !self.uri.split('/').exists(s, s == '..')",
                "collection.uri must not leave its claim (no '..')",
                field_path=".uri",
            ),
            cel(
                "!has(self.sampleRate) || self.sampleRate == 0.0 || has(self.uri)",
                "collection.uri is required when collection.sampleRate is above 0",
                field_path=".uri",
                reason="FieldValueRequired",
            ),
        )
    )

    sample_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Share of inference requests collected (0: none, 1: every one). Off by "
        "default: what production sends is kept only where someone chose to keep it.",
    )
    uri: str | None = Field(
        default=None,
        max_length=1024,
        pattern=r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?|s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9])"
        r"(/[^/]+)*/?$",
        description="Where (required with a sampleRate above 0): pvc://<claim>/<path>/ or "
        "s3://<bucket>/<prefix>/, under which each deployment writes "
        "<namespace>/<name>/<version>/. A claim must be one the admin's policy lets specs "
        "write (claims.writable), and its directory writable by the serving pods.",
    )
    secret_name: DnsSubdomain | None = Field(
        default=None,
        description="For an s3:// uri: the Secret with AWS_ACCESS_KEY_ID, "
        "AWS_SECRET_ACCESS_KEY and optionally AWS_ENDPOINT_URL that may write there.",
    )
    flush_interval: Duration = Field(
        default="30s", description="Longest a collected row waits in memory before it is written."
    )

    @model_validator(mode="after")
    def _place(self) -> Self:
        if self.uri is not None and ".." in self.uri.split("/"):
            raise ValueError("collection.uri must not leave its claim (no '..')")
        if self.sample_rate > 0 and self.uri is None:
            raise ValueError("collection.uri is required when collection.sampleRate is above 0")
        return self

    max_segment_rows: int = Field(
        default=10_000, ge=100, le=1_000_000, description="Most rows in one Parquet segment."
    )


class Monitoring(CamelModel):
    """Watching what the stable version serves against its own training baseline."""

    enabled: bool = Field(
        default=True,
        description="Compare the stable pods' inputs and predictions with the training "
        "baseline every interval (conditions DriftDetected, status.monitoring).",
    )
    window: Duration = Field(
        default="1h",
        description="The span of traffic each evaluation counts, e.g. 30m, 24h; it restarts "
        "when another version becomes stable.",
    )
    interval: Duration = Field(
        default="1m", description="How often the stable pods' counts are read and judged."
    )
    drift_threshold: float = Field(
        default=PSI_THRESHOLD,
        gt=0,
        le=10,
        description="Population stability index above which an input or the predictions "
        "have drifted (0.1 moderate, 0.2 the usual alarm).",
    )
    min_samples: int = Field(
        default=200,
        ge=1,
        le=1_000_000_000,
        description="Fewest predicted rows in the window before drift is judged; fewer "
        "leave DriftDetected Unknown with reason NotEnoughSamples.",
    )
    accuracy: AccuracyMonitoring = Field(
        default_factory=AccuracyMonitoring, description="Live accuracy from feedback."
    )
    collection: Collection = Field(
        default_factory=Collection, description="Production data kept for retraining."
    )


class ModelDeploymentSpec(CamelModel):
    """Which ModelVersion to serve (named, or followed by a rule), how, how to roll out
    the next one, and when to train one."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "has(self.modelVersion) != has(self.track)",
                "set exactly one of modelVersion or track",
                reason="FieldValueInvalid",
            ),
            cel(
                "!has(self.retrain) || !has(self.retrain.template.spec) || !has(self.track) "
                "|| self.retrain.template.spec.model == self.track.model",
                "retrain.template.spec.model must be the tracked model",
                field_path=".retrain.template.spec.model",
            ),
        )
    )

    model_version: DnsSubdomain | None = Field(
        default=None,
        description="Name of the ModelVersion to serve; or leave it out and set track.",
    )
    track: Track | None = Field(
        default=None,
        description="Follow a registered model: the operator selects the version "
        "(status.targetVersion) and rolls it out.",
    )
    retrain: Retrain | None = Field(
        default=None,
        description="Train a new version on a trigger (drift, accuracy, a schedule, new "
        "labels); with track, a better one rolls out by itself.",
    )
    replicas: int = Field(
        default=2, ge=0, le=100, description="Serving pods of the stable version."
    )
    resources: dict[str, Any] | None = Field(
        default=None,
        description="Resource requests and limits of the server container; without them "
        "requests 50m CPU and 256Mi, limits 1 CPU and 1Gi.",
    )
    autoscaling: Autoscaling | None = Field(
        default=None, description="Scale the stable version on CPU instead of replicas."
    )
    server: Server = Field(default_factory=Server, description="The model server.")
    canary: Canary = Field(default_factory=Canary, description="How new versions roll out.")
    traffic: Traffic = Field(default_factory=Traffic, description="How traffic is split.")
    monitoring: Monitoring = Field(
        default_factory=Monitoring, description="Drift checks of the served version."
    )

    @model_validator(mode="after")
    def _one_target(self) -> Self:
        if (self.model_version is None) == (self.track is None):
            raise ValueError("set exactly one of modelVersion or track")
        template = self.retrain.template.spec if self.retrain is not None else None
        if template is not None and self.track is not None and template.model != self.track.model:
            raise ValueError("retrain.template.spec.model must be the tracked model")
        return self


DeploymentPhase = Literal["Pending", "Stable", "Progressing", "Paused", "RolledBack", "Degraded"]


class CanaryWeight(CamelModel):
    """The canary's share of traffic."""

    desired: int = Field(default=0, ge=0, le=100, description="Percent the current step asks.")
    effective: int = Field(
        default=0, ge=0, le=100, description="Percent actually achieved (pod ratio or route)."
    )


class VersionSample(CamelModel):
    """What one version's traffic looked like over an analysis window."""

    requests: int = Field(default=0, ge=0, description="Requests in the window.")
    error_rate: float = Field(default=0.0, ge=0, le=1, description="Share of failed requests.")
    latency_p95_ms: float | None = Field(
        default=None, ge=0, alias="latencyP95Ms", description="95th percentile latency, ms."
    )


class AnalysisResult(CamelModel):
    """The last analysis of the canary."""

    verdict: Literal["Pass", "Fail", "Inconclusive"] = Field(description="The outcome.")
    reason: str | None = Field(default=None, description="Why, in a word or a sentence.")
    at: datetime | None = Field(default=None, description="When it was made.")
    canary: VersionSample | None = Field(default=None, description="The canary's traffic.")
    stable: VersionSample | None = Field(default=None, description="The stable's traffic.")
    prediction_shift: float | None = Field(
        default=None, ge=0, description="Shift of the canary's predictions from stable's."
    )


class Rollback(CamelModel):
    """A rollback the operator made."""

    from_: str = Field(alias="from", description="The version rolled back (the canary).")
    to: str = Field(description="The version kept (the stable).")
    reason: str = Field(description="Why.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="The figures that failed the analysis."
    )
    at: datetime | None = Field(default=None, description="When.")


class HistoryEntry(CamelModel):
    """A version that served as stable."""

    version: str = Field(description="ModelVersion name.")
    from_: datetime | None = Field(default=None, alias="from", description="Stable since.")
    to: datetime | None = Field(default=None, description="Stable until.")


class ActionRecord(CamelModel):
    """A manual rollout action the operator carried out."""

    action: RolloutAction = Field(description="promote or abort.")
    at: datetime | None = Field(default=None, description="When it was carried out.")
    source: Literal["annotation", "status"] = Field(
        default="annotation", description="Whether it came from the annotation or the status."
    )


class InputDrift(CamelModel):
    """One input's drift over the monitoring window."""

    feature: str = Field(description="The input's name.")
    psi: float = Field(ge=0, description="Population stability index against training.")
    samples: int = Field(ge=0, description="Values counted in the window.")
    missing_share: float | None = Field(
        default=None, ge=0, le=1, description="Share of rows where the input was missing."
    )
    out_of_range_share: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of a number's values outside the training rows' min..max.",
    )


class PredictionDrift(CamelModel):
    """The predictions' drift over the window: class shares, or a regression's value bins,
    against the test rows' predictions at training."""

    psi: float = Field(ge=0, description="Population stability index against training.")
    samples: int = Field(ge=0, description="Predictions counted in the window.")


class LiveAccuracy(CamelModel):
    """The stable version measured on the feedback labels of the window's rows."""

    metric: LiveMetric = Field(description="accuracy, mae or rmse.")
    value: float | None = Field(default=None, description="Measured on the labelled rows.")
    labels: int = Field(default=0, ge=0, description="Labelled rows in the window.")
    unmatched: int = Field(
        default=0, ge=0, description="Labels of feedback no pod could match to an answer."
    )
    threshold: float | None = Field(default=None, description="The bound it is judged by.")
    registered: float | None = Field(
        default=None, description="The version's registered test value of the metric."
    )
    recall: dict[str, float] = Field(
        default_factory=dict, description="Per true class: the share predicted right."
    )
    estimated: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="An estimate of accuracy without labels: the classifier's confidence on a "
        "sample of the window's rows, calibrated on the held-out rows at training.",
    )
    estimated_from: int = Field(default=0, ge=0, description="Sampled rows the estimate rests on.")


class TrackMonitoring(CamelModel):
    """One track's traffic over the window, against its version's training baseline."""

    version: str | None = Field(default=None, description="The ModelVersion watched.")
    window_start: datetime | None = Field(
        default=None, description="Since when the window counts (at most spec.monitoring.window)."
    )
    samples: int = Field(default=0, ge=0, description="Rows predicted in the window.")
    drift_score: float | None = Field(
        default=None, ge=0, description="The highest PSI of any input or of the predictions."
    )
    inputs: list[InputDrift] = Field(
        default_factory=list, max_length=10, description="The most drifted inputs, worst first."
    )
    prediction_drift: PredictionDrift | None = Field(
        default=None, description="Drift of the predictions."
    )
    accuracy: LiveAccuracy | None = Field(default=None, description="Live accuracy.")
    pods: int = Field(default=0, ge=0, description="Pods whose counts were read.")


class MonitoringStatus(TrackMonitoring):
    """The last evaluation of the stable version's traffic against its training baseline
    (the conditions judge it), and of a canary's, separately, while one serves."""

    collection: str | None = Field(
        default=None,
        description="Where the serving pods write collected requests and labels "
        "(spec.monitoring.collection), or why they cannot.",
    )
    canary: TrackMonitoring | None = Field(
        default=None,
        description="The canary's own window while a rollout is under way (no condition "
        "judges it: the canary analysis does).",
    )
    last_evaluated: datetime | None = Field(default=None, description="When it was made.")


class ModelDeploymentStatus(CamelModel):
    """What serves now and where the rollout stands."""

    phase: DeploymentPhase | None = Field(default=None, description="Where the rollout stands.")
    observed_generation: int | None = Field(
        default=None, ge=0, description="The .metadata.generation this status reflects."
    )
    conditions: Conditions = Field(
        default_factory=list,
        description="Ready, Progressing, Degraded, TrafficSplit, DriftDetected and "
        "AccuracyDegraded conditions.",
    )
    target_version: str | None = Field(
        default=None,
        description="The version the deployment moves to: spec.modelVersion, or the one "
        "spec.track selected.",
    )
    stable_version: str | None = Field(default=None, description="ModelVersion serving stably.")
    canary_version: str | None = Field(default=None, description="ModelVersion being rolled out.")
    canary_weight: CanaryWeight | None = Field(
        default=None, description="The canary's share of traffic."
    )
    current_step: int | None = Field(default=None, ge=0, description="Index of the canary step.")
    step_started_at: datetime | None = Field(default=None, description="When the step began.")
    rollout_started_at: datetime | None = Field(default=None, description="When the rollout began.")
    analysis: AnalysisResult | None = Field(default=None, description="The last analysis.")
    last_rollback: Rollback | None = Field(default=None, description="The last rollback.")
    history: list[HistoryEntry] = Field(
        default_factory=list, max_length=10, description="Versions that served, newest last."
    )
    url: str | None = Field(default=None, description="In-cluster URL of the model's Service.")
    replicas: int | None = Field(default=None, ge=0, description="Serving pods.")
    ready_replicas: int | None = Field(default=None, ge=0, description="Ready serving pods.")
    requested_action: RolloutAction | None = Field(
        default=None,
        description="Set by a person (status patch) to promote or abort the rollout now.",
    )
    last_action: ActionRecord | None = Field(
        default=None, description="The last manual action carried out."
    )
    reason: str | None = Field(default=None, description="Why the deployment is in its phase.")
    message: str | None = Field(default=None, description="Details, for people.")
    monitoring: MonitoringStatus | None = Field(
        default=None, description="Drift of the stable version's traffic (spec.monitoring)."
    )
    tracking: TrackingStatus | None = Field(
        default=None, description="What spec.track selected, and the challengers refused."
    )
    replay: ReplayStatus | None = Field(
        default=None, description="The last replay of evaluation rows for a quiet step."
    )
    evaluation: EvaluationStatus | None = Field(
        default=None,
        description="The last champion / challenger evaluation: the candidate and the stable "
        "version scored on the same rows before any traffic moved.",
    )
    retraining: RetrainingStatus | None = Field(
        default=None, description="The last retraining (spec.retrain) and its result."
    )


class ModelDeployment(Resource):
    """A ModelDeployment object."""

    RESOURCE: ClassVar[ResourceInfo] = ResourceInfo(
        kind="ModelDeployment",
        plural="modeldeployments",
        singular="modeldeployment",
        short_names=["md"],
        description="ModelDeployment serves a ModelVersion over HTTP and rolls new versions out "
        "as canaries with automated analysis and rollback.",
        printer_columns=[
            PrinterColumn(
                name="Tracks",
                type="string",
                json_path=".spec.track.model",
                description="The registered model followed (spec.track).",
            ),
            PrinterColumn(
                name="Target",
                type="string",
                json_path=".status.targetVersion",
                description="The ModelVersion the deployment moves to.",
            ),
            PHASE_COLUMN,
            READY_COLUMN,
            PrinterColumn(
                name="Stable",
                type="string",
                json_path=".status.stableVersion",
                description="Stable version.",
            ),
            PrinterColumn(
                name="Canary",
                type="string",
                json_path=".status.canaryVersion",
                description="Canary version.",
            ),
            PrinterColumn(
                name="Weight",
                type="integer",
                json_path=".status.canaryWeight.effective",
                description="Canary traffic, percent.",
            ),
            PrinterColumn(
                name="Replicas",
                type="integer",
                json_path=".status.readyReplicas",
                description="Ready serving pods.",
            ),
            PrinterColumn(
                name="Drift",
                type="number",
                json_path=".status.monitoring.driftScore",
                description="Highest PSI of the stable version's inputs or predictions.",
            ),
            PrinterColumn(
                name="Accuracy",
                type="number",
                json_path=".status.monitoring.accuracy.value",
                description="The stable version's live accuracy (or error) from feedback.",
            ),
            PrinterColumn(
                name="URL", type="string", json_path=".status.url", description="URL.", priority=1
            ),
            AGE_COLUMN,
        ],
    )

    kind: Literal["ModelDeployment"] = "ModelDeployment"
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)
