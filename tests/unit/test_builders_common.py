"""What the builders share: labels and the selectors that find them, claims, settings."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping

import pytest

from orchard.api.modeldeployment import ModelDeployment
from orchard.api.modelversion import ModelVersion
from orchard.api.trainingjob import Artifacts, TrainingJob
from orchard.builders import serving as sv
from orchard.builders.common import (
    PART_OF,
    PART_OF_LABEL,
    TrainerSettings,
    app_labels,
    label_selector,
    pvc_claim,
)
from orchard.builders.modelversion import verify_job
from orchard.builders.training import training_job

DIGEST = "sha256:" + "ab" * 32


def matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether labels satisfy a selector of `k=v` and `k in (a,b)` terms (what the
    API server does with the watches' selectors)."""
    for term in re.split(r",(?![^(]*\))", selector):  # commas outside the parentheses
        if " in (" in term:
            key, values = term.split(" in (")
            if labels.get(key) not in values.rstrip(")").split(","):
                return False
        else:
            key, value = term.split("=")
            if labels.get(key) != value:
                return False
    return True


def test_label_selector() -> None:
    assert label_selector({PART_OF_LABEL: PART_OF}) == "app.kubernetes.io/part-of=orchard"
    assert label_selector({"a": "1", "b": ("x", "y")}) == "a=1,b in (x,y)"
    assert label_selector({"b": ["x"]}) == "b in (x)"


def test_app_labels() -> None:
    assert app_labels("orchard-trainer", "iris", "training") == {
        "app.kubernetes.io/name": "orchard-trainer",
        "orchard.dev/instance": "iris",
        "app.kubernetes.io/component": "training",
        "app.kubernetes.io/part-of": "orchard",
        "app.kubernetes.io/managed-by": "orchard-operator",
    }
    assert "app.kubernetes.io/component" not in app_labels("orchard-model", "iris-v1")


def test_the_operators_watches_select_what_the_builders_label() -> None:
    """The Job and pod watches are filtered on the server: they must see every training
    and verification Job and pod and every serving pod the builders make, and no other."""
    from orchard.handlers.trainingjob import ORCHARD_JOBS, ORCHARD_PODS

    assert ORCHARD_JOBS == "app.kubernetes.io/part-of=orchard"
    assert ORCHARD_PODS == (
        "app.kubernetes.io/part-of=orchard,"
        "app.kubernetes.io/component in (training,verification,serving)"
    )
    tj = TrainingJob.model_validate(
        {
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u1"},
            "spec": {
                "model": "iris",
                "dataset": {"builtin": "iris"},
                "estimator": {"name": "SVC"},
            },
        }
    )
    mv = ModelVersion.model_validate(
        {
            "metadata": {"name": "iris-v1", "namespace": "ml", "uid": "u2"},
            "spec": {
                "model": "iris",
                "version": 1,
                "task": "classification",
                "artifact": {"uri": "pvc://orchard-artifacts/iris/1/", "digest": DIGEST},
                "framework": {"name": "scikit-learn", "version": "1.5"},
            },
        }
    )
    store = Artifacts(uri="pvc://orchard-artifacts/")
    for job in (training_job(tj, store), verify_job(mv)):
        assert matches(ORCHARD_JOBS, job["metadata"]["labels"])
        assert matches(ORCHARD_PODS, job["spec"]["template"]["metadata"]["labels"])
    md = ModelDeployment.model_validate(
        {"metadata": {"name": "iris", "namespace": "ml"}, "spec": {"modelVersion": "iris-v1"}}
    )
    serving = sv.labels(md, "stable", "iris-v1")
    assert matches(ORCHARD_JOBS, serving) and matches(ORCHARD_PODS, serving)
    assert not matches(ORCHARD_PODS, {"app.kubernetes.io/part-of": "shop", "app": "web"})
    assert sv.selector("iris", "stable").items() <= serving.items()


@pytest.mark.parametrize(
    ("uri", "claim"),
    [
        ("pvc://orchard-artifacts/models", "orchard-artifacts"),
        ("pvc://c", "c"),
        ("s3://bucket/x", None),
        ("file:///tmp/x", None),
        (None, None),
    ],
)
def test_pvc_claim(uri: str | None, claim: str | None) -> None:
    assert pvc_claim(uri) == claim


def test_settings_read_the_default_store() -> None:
    env = {"ORCHARD_DEFAULT_ARTIFACTS": "pvc://orchard-artifacts/"}
    assert TrainerSettings.from_env(env).default_artifacts == Artifacts(
        uri="pvc://orchard-artifacts/"
    )
    assert TrainerSettings.from_env({}).default_artifacts is None
    assert TrainerSettings.from_env({"ORCHARD_DEFAULT_ARTIFACTS": ""}).default_artifacts is None


@pytest.mark.parametrize("uri", ["/var/models", "https://models.test/", "s3://models/?x=1"])
def test_settings_refuse_a_default_store_that_is_no_store(uri: str) -> None:
    with pytest.raises(ValueError, match="ORCHARD_DEFAULT_ARTIFACTS"):
        TrainerSettings.from_env({"ORCHARD_DEFAULT_ARTIFACTS": uri})


def test_an_apply_that_would_change_nothing_is_known_as_such() -> None:
    from orchard.builders.common import (
        APPLIED_DIGEST_ANNOTATION,
        applied_already,
        with_applied_digest,
    )

    obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "iris-stable", "labels": {"app": "iris"}},
        "spec": {"replicas": 2, "template": {"spec": {"containers": [{"name": "server"}]}}},
    }
    manifest = with_applied_digest(obj)
    assert with_applied_digest(manifest) == manifest  # its own digest left out
    digest = manifest["metadata"]["annotations"][APPLIED_DIGEST_ANNOTATION]
    assert len(digest) == 64 and "annotations" not in obj["metadata"]  # obj untouched
    live = copy.deepcopy(manifest)
    live["metadata"]["uid"] = "u1"  # what the API server adds does not count
    live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
    live["status"] = {"readyReplicas": 2}
    assert applied_already(manifest, live)
    assert not applied_already(manifest, None)  # not there: made
    scaled = copy.deepcopy(live)
    scaled["spec"]["replicas"] = 5  # someone else changed a field Orchard sets
    assert not applied_already(manifest, scaled)
    extra = copy.deepcopy(live)
    extra["spec"]["template"]["spec"]["containers"].append({"name": "sidecar"})
    assert not applied_already(manifest, extra)
    # A manifest that leaves out a field it set before (replicas, once autoscaled) is
    # another manifest: it is applied, though every field it has is live already.
    fewer = with_applied_digest({**obj, "spec": {"template": obj["spec"]["template"]}})
    assert not applied_already(fewer, live)
    assert applied_already(fewer, {**live, "metadata": fewer["metadata"]})  # once applied
