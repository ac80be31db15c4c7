"""The admin's policy: what a namespace user's spec may ask of the pods Orchard makes."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest

from orchard.api.modeldeployment import ModelDeploymentSpec, ModelDeploymentStatus
from orchard.api.modelversion import ModelVersionSpec
from orchard.api.policy import Policy
from orchard.api.trainingjob import TrainingJobSpec
from orchard.decisions import policy as pol
from orchard.decisions import rollout as ro
from orchard.handlers import policy as policy_file

ROOT = Path(__file__).resolve().parents[2]
TRAINER = "localhost/orchard/trainer:dev"
SERVER = "localhost/orchard/server:dev"
DIGEST = "sha256:" + "ab" * 32


def tj_spec(**spec: Any) -> TrainingJobSpec:
    base: dict[str, Any] = {
        "model": "iris",
        "dataset": {"builtin": "iris"},
        "estimator": {"name": "LogisticRegression"},
        "artifacts": {"uri": "pvc://orchard-artifacts/"},
    }
    return TrainingJobSpec.model_validate({**base, **spec})


def mv_spec(**artifact: Any) -> ModelVersionSpec:
    return ModelVersionSpec.model_validate(
        {
            "model": "iris",
            "version": 1,
            "task": "classification",
            "artifact": {"uri": "pvc://orchard-artifacts/iris/1/", "digest": DIGEST, **artifact},
            "framework": {"name": "scikit-learn", "version": "1.5"},
        }
    )


def rules(violations: list[pol.Violation]) -> list[tuple[str, str]]:
    return [(v.field, v.rule) for v in violations]


def test_the_shipped_policy_file_is_the_default_policy() -> None:
    text = (ROOT / "manifests" / "manager" / "policy.yaml").read_text()
    assert Policy.from_yaml(text) == Policy()
    assert Policy.from_yaml("") == Policy()


def test_the_default_spec_keeps_to_the_default_policy() -> None:
    assert pol.trainingjob_violations(tj_spec(), Policy(), TRAINER) == []
    # Without spec.artifacts the run writes to the operator's default, the admin's own.
    assert pol.trainingjob_violations(tj_spec(artifacts=None), Policy(), TRAINER) == []
    assert pol.modelversion_violations(mv_spec(), Policy()) == []
    md = ModelDeploymentSpec(model_version="iris-v1")
    assert pol.modeldeployment_violations(md, Policy(), SERVER) == []


def test_a_spec_cannot_run_an_image_of_its_choosing() -> None:
    found = pol.trainingjob_violations(tj_spec(image="evil/miner:1"), Policy(), TRAINER)
    assert rules(found) == [("spec.image", "images.allowedPrefixes")]
    assert "evil/miner:1" in found[0].message and TRAINER in found[0].message
    md = ModelDeploymentSpec.model_validate(
        {"modelVersion": "iris-v1", "server": {"image": "evil/server:1"}}
    )
    assert rules(pol.modeldeployment_violations(md, Policy(), SERVER)) == [
        ("spec.server.image", "images.allowedPrefixes")
    ]


def test_the_configured_image_and_allowed_prefixes_pass() -> None:
    policy = Policy.model_validate({"images": {"allowedPrefixes": ["registry.example/ml/"]}})
    assert pol.trainingjob_violations(tj_spec(image=TRAINER), Policy(), TRAINER) == []
    ok = tj_spec(image="registry.example/ml/trainer:2")
    assert pol.trainingjob_violations(ok, policy, TRAINER) == []
    near = tj_spec(image="registry.example/ml-other/trainer:2")
    assert rules(pol.trainingjob_violations(near, policy, TRAINER)) == [
        ("spec.image", "images.allowedPrefixes")
    ]


def test_a_spec_cannot_mount_a_secret_it_was_not_meant_to_have() -> None:
    spec = tj_spec(
        dataset={"uri": "s3://data/iris.csv", "target": "y", "secretName": "ci-deploy-token"},
        artifacts={"uri": "s3://models/", "secretName": "orchard-s3"},
    )
    found = pol.trainingjob_violations(spec, Policy(), TRAINER)
    assert rules(found) == [("spec.dataset.secretName", "secrets.allowedNames")]
    assert "ci-deploy-token" in found[0].message
    assert rules(pol.modelversion_violations(mv_spec(secretName="db-password"), Policy())) == [
        ("spec.artifact.secretName", "secrets.allowedNames")
    ]
    wide = Policy.model_validate({"secrets": {"allowedNames": ["*"]}})
    assert pol.trainingjob_violations(spec, wide, TRAINER) == []


def test_a_spec_cannot_write_into_a_claim_it_does_not_own() -> None:
    spec = tj_spec(
        dataset={"uri": "pvc://postgres-data/iris.csv", "target": "y"},
        artifacts={"uri": "pvc://postgres-data/models/"},
    )
    found = pol.trainingjob_violations(spec, Policy(), TRAINER)
    assert rules(found) == [("spec.artifacts.uri", "claims.writable")]
    closed = Policy.model_validate({"claims": {"readable": ["datasets"]}})
    assert ("spec.dataset.uri", "claims.readable") in rules(
        pol.trainingjob_violations(spec, closed, TRAINER)
    )
    collected = tj_spec(
        dataset={"builtin": "iris", "collected": {"uri": "pvc://postgres-data/collected/ml/x/"}}
    )
    assert ("spec.dataset.collected.uri", "claims.readable") in rules(
        pol.trainingjob_violations(collected, closed, TRAINER)
    )
    assert rules(pol.modelversion_violations(mv_spec(), closed)) == [
        ("spec.artifact.uri", "claims.readable")
    ]


def test_scheduling_overrides_need_the_admins_leave() -> None:
    spec = tj_spec(
        nodeSelector={"gpu": "a100"},
        tolerations=[{"key": "dedicated", "operator": "Exists"}],
        resources={"limits": {"memory": "1Gi"}},
    )
    assert rules(pol.trainingjob_violations(spec, Policy(), TRAINER)) == [
        ("spec.nodeSelector", "overrides.nodeSelector"),
        ("spec.tolerations", "overrides.tolerations"),
    ]
    open_ = Policy.model_validate({"overrides": {"nodeSelector": True, "tolerations": True}})
    assert pol.trainingjob_violations(spec, open_, TRAINER) == []
    no_resources = Policy.model_validate({"overrides": {"resources": False}})
    assert ("spec.resources", "overrides.resources") in rules(
        pol.trainingjob_violations(spec, no_resources, TRAINER)
    )


def test_the_summary_names_each_field_and_rule() -> None:
    found = pol.trainingjob_violations(
        tj_spec(image="evil:1", nodeSelector={"a": "b"}), Policy(), TRAINER
    )
    text = pol.summary(found)
    assert "spec.image" in text and "policy rule images.allowedPrefixes" in text
    assert "spec.nodeSelector" in text and "policy rule overrides.nodeSelector" in text


def test_a_malformed_policy_is_refused_not_loosened() -> None:
    with pytest.raises(ValueError, match="invalid policy"):
        Policy.from_yaml("images: {allowedPrefix: ['x/']}")  # misspelt key
    with pytest.raises(ValueError, match="mapping"):
        Policy.from_yaml("- a list")


def test_the_policy_file_is_reread_when_it_changes_and_a_bad_edit_is_ignored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "policy.yaml"
    monkeypatch.setenv("ORCHARD_POLICY_FILE", str(path))
    monkeypatch.setattr(policy_file, "_cache", None)
    assert policy_file.current() == Policy()  # no file: the defaults
    path.write_text("overrides: {tolerations: true}\n")
    assert policy_file.current().overrides.tolerations is True
    path.write_text("overrides: {tolerations: maybe}\n")
    os.utime(path, (1, 2))  # a new modification time, whatever the clock's resolution
    assert policy_file.current().overrides.tolerations is True  # the previous one is kept
    monkeypatch.setattr(policy_file, "_cache", None)
    with pytest.raises(ValueError):  # at startup a bad file stops the operator
        policy_file.current()


def test_a_refused_deployment_is_degraded_and_says_so_once() -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    spec = ModelDeploymentSpec(model_version="iris-v2")
    serving = ModelDeploymentStatus.model_validate(
        {"phase": "Stable", "stableVersion": "iris-v1", "reason": "Serving"}
    )
    first = ro.refused(spec, serving, now, 3, pol.REASON, "spec.server.image: no")
    st = first.status
    assert (st.phase, st.reason, st.observed_generation) == ("Degraded", "PolicyViolation", 3)
    assert st.stable_version == "iris-v1"  # what serves keeps serving
    ready = next(c for c in st.conditions if c.type == "Ready")
    assert (ready.status, ready.reason, ready.message) == (
        "False",
        "PolicyViolation",
        "spec.server.image: no",
    )
    assert [(e.type, e.reason) for e in first.events] == [("Warning", "PolicyViolation")]
    again = ro.refused(spec, st, now, 3, pol.REASON, "spec.server.image: no")
    assert again.events == []


def test_collection_writes_only_where_specs_may_write_with_a_secret_they_may_use() -> None:
    def collecting(uri: str, secret: str | None = None) -> ModelDeploymentSpec:
        collection = {"sampleRate": 1, "uri": uri, "secretName": secret}
        return ModelDeploymentSpec.model_validate(
            {"modelVersion": "iris-v1", "monitoring": {"collection": collection}}
        )

    allowed = collecting("pvc://orchard-artifacts/collected/")
    assert pol.modeldeployment_violations(allowed, Policy(), SERVER) == []
    other_claim = collecting("pvc://finance-ledger/collected/")
    assert rules(pol.modeldeployment_violations(other_claim, Policy(), SERVER)) == [
        ("spec.monitoring.collection.uri", "claims.writable")
    ]
    bucket = collecting("s3://ml-data/served/", secret="cloud-admin-keys")
    assert rules(pol.modeldeployment_violations(bucket, Policy(), SERVER)) == [
        ("spec.monitoring.collection.secretName", "secrets.allowedNames")
    ]
