"""What the ModelDeployment controller observes (orchard.decisions.observing) and the
handler's own small pieces: status patches, when the daemon runs."""

from __future__ import annotations

import datetime as dt
from typing import Any

from orchard.api.common import status_patch
from orchard.api.modeldeployment import ModelDeployment
from orchard.decisions import metrics_text as mt
from orchard.decisions import observing as ob
from orchard.handlers import modeldeployment as h
from orchard.serving.metrics import Metrics


def test_status_patch_sends_changes_and_nulls_only() -> None:
    old = {"phase": "Progressing", "canaryVersion": "v2", "requestedAction": "abort", "url": "u"}
    new = {"phase": "RolledBack", "url": "u", "lastRollback": {"from": "v2"}}
    assert status_patch(old, new) == {
        "phase": "RolledBack",
        "canaryVersion": None,
        "requestedAction": None,
        "lastRollback": {"from": "v2"},
    }
    # untouched keys (a person's requestedAction written meanwhile) are left out
    assert "requestedAction" not in status_patch({"phase": "Paused"}, {"phase": "Stable"})


def pod(name: str, track: str, version: str, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {"orchard.dev/track": track, "orchard.dev/model-version": version},
        },
        "status": {
            "podIP": "10.244.0.9",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def scrape(ok: int, errors: int, classes: dict[str, int]) -> mt.Scrape:
    m = Metrics("iris")
    for _ in range(ok):
        m.observe_request("v2_infer", 200, 0.003)
    for _ in range(errors):
        m.observe_request("v2_infer", 500, 0.003)
    m.classes.update(classes)
    return mt.parse_scrape(m.render().decode())


def test_window_sums_pods_of_each_track_since_the_baseline() -> None:
    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "iris", "namespace": "ml"},
            "spec": {"modelVersion": "v2"},
            "status": {"stableVersion": "v1", "canaryVersion": "v2", "currentStep": 0},
        }
    )
    pods = [
        pod("s1", "stable", "v1"),
        pod("s2", "stable", "v1"),
        pod("c1", "canary", "v2"),
        pod("old", "canary", "v0"),  # a previous canary's pod: not this version
    ]
    scrapes = {
        "s1": scrape(100, 0, {"a": 100}),
        "s2": scrape(80, 0, {"a": 80}),
        "c1": scrape(50, 10, {"a": 50}),
        "old": scrape(0, 999, {}),
    }
    baseline = {"c1": scrape(20, 0, {"a": 20})}
    result = ob.analyse_window(md, pods, scrapes, baseline, {})
    assert result.canary.requests == 40 and result.canary.errors == 10  # since the baseline
    assert result.stable is not None and result.stable.requests == 180
    assert result.verdict == "Fail" and result.reason == "ErrorRate"


def test_pod_readiness() -> None:
    assert ob.pod_ready(pod("a", "stable", "v1"))
    assert not ob.pod_ready(pod("a", "stable", "v1", ready=False))
    terminating = pod("a", "stable", "v1")
    terminating["metadata"]["deletionTimestamp"] = "2026-11-27T12:00:00Z"
    assert not ob.pod_ready(terminating)


NOW = dt.datetime(2026, 11, 27, 12, 0, 10, tzinfo=dt.UTC)


def deployment(**spec: object) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "metadata": {"name": "iris", "namespace": "ml", "generation": 4},
            "spec": {"modelVersion": "v2", "replicas": 3, **spec},
            "status": {"stableVersion": "v1", "canaryVersion": "v2", "currentStep": 0},
        }
    )


def test_observations_count_ready_pods_of_each_tracks_version() -> None:
    ready_at = pod("c1", "canary", "v2")
    ready_at["status"]["conditions"][0]["lastTransitionTime"] = "2026-11-27T12:00:00Z"
    pods = [
        pod("s1", "stable", "v1"),
        pod("s2", "stable", "v1", ready=False),
        pod("s0", "stable", "v0"),  # the previous stable version's pod
        ready_at,
        pod("c2", "canary", "v2"),
    ]
    traffic = ob.TrafficState(True, "ReplicaRatio")
    obs = ob.observe(deployment(), ob.Reads({}, pods, None, None, traffic), "u", NOW)
    assert (obs.stable_ready, obs.canary_ready, obs.stable_desired) == (1, 2, 3)
    assert obs.generation == 4 and obs.url == "u" and obs.traffic_reason == "ReplicaRatio"
    assert obs.canary_ready_since == dt.datetime(2026, 11, 27, 12, 0, 0, tzinfo=dt.UTC)


def test_observations_carry_the_versions_as_read_and_analyse_only_a_live_step() -> None:
    md = deployment()
    assert ob.version_names(md) == ("v1", "v2")
    ready = {
        "metadata": {"name": "v2"},
        "spec": {
            "model": "iris",
            "version": 2,
            "task": "classification",
            "artifact": {"uri": "pvc://models/iris/2", "digest": "sha256:" + "0" * 64},
            "framework": {"name": "scikit-learn", "version": "1.9.1"},
            "metrics": {"accuracy": 0.9},
        },
        "status": {"phase": "Ready"},
    }
    traffic = ob.TrafficState(True, "ReplicaRatio")
    obs = ob.observe(md, ob.Reads({"v1": None, "v2": ready}, [], None, None, traffic), "u", NOW)
    assert obs.stable is not None and not obs.stable.found  # read, and absent
    assert obs.candidate is not None and obs.candidate.metrics == {"accuracy": 0.9}
    assert obs.analysis is not None and obs.analysis.verdict == "Inconclusive"  # no traffic
    settled = md.model_copy(update={"status": md.status.model_copy(update={"current_step": None})})
    reads = ob.Reads({}, [], None, None, traffic)
    assert ob.observe(settled, reads, "u", NOW).analysis is None


def test_an_annotation_already_acted_on_is_not_pending() -> None:
    annotated = {
        "metadata": {
            "annotations": {"orchard.dev/rollout-action": "promote"},
            "managedFields": [
                {
                    "time": "2026-11-27T12:00:00Z",
                    "fieldsV1": {
                        "f:metadata": {"f:annotations": {"f:orchard.dev/rollout-action": {}}}
                    },
                }
            ],
        },
        "status": {"canaryVersion": "v2"},
    }
    assert ob.pending_action(annotated) == "promote"
    annotated["status"]["lastAction"] = {
        "action": "promote",
        "at": "2026-11-27T12:00:05Z",
        "source": "annotation",
    }
    assert ob.pending_action(annotated) is None
    assert ob.pending_action({"metadata": {}}) is None


def test_with_an_autoscaler_the_stable_count_is_what_it_last_asked_for() -> None:
    auto = deployment(autoscaling={"minReplicas": 2, "maxReplicas": 9})
    assert ob.stable_desired(auto, {"spec": {"replicas": 7}}) == 7
    assert ob.stable_desired(auto, None) == 2  # no Deployment yet: the autoscaler's floor
    assert ob.stable_desired(deployment(), {"spec": {"replicas": 7}}) == 3


def test_the_analysis_defaults_are_the_specs() -> None:
    from orchard.api.modeldeployment import Analysis
    from orchard.decisions import analysis as an

    assert an.Settings() == an.Settings.from_spec(Analysis())
    assert an.Settings.from_spec(Analysis(maxLatencyP95="150ms")).max_latency_p95_s == 0.15


def test_the_loop_runs_only_while_a_rollout_needs_it() -> None:
    """A first version coming up (Pending) moves on by events, not every interval."""
    assert not h.in_progress({}) and not h.in_progress({"phase": "Pending"})
    assert h.in_progress({"phase": "Progressing"}) and h.in_progress({"phase": "Paused"})
    assert not h.in_progress({"phase": "Stable"})
    assert not h.in_progress({"phase": "RolledBack"})
