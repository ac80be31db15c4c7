"""The objects of the improvement loop: the evaluation Job and a retraining's TrainingJob
(its dataset the template's plus the collected window), and the lineage its ModelVersion
records; checked by the API models they must satisfy."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from orchard.api.modeldeployment import ModelDeployment
from orchard.api.modelversion import ModelVersion
from orchard.api.trainingjob import TrainingJob, TrainingJobSpec
from orchard.builders import improvement as imp
from orchard.builders.modelversion import model_version
from orchard.contracts import TrainerReport

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
TEMPLATE = {
    "model": "iris",
    "dataset": {"uri": "pvc://data/iris-narrow.csv", "target": "species"},
    "estimator": {"name": "LogisticRegression"},
    "artifacts": {"uri": "pvc://orchard-artifacts/models"},
}
COLLECT = {"collection": {"sampleRate": 1.0, "uri": "pvc://orchard-artifacts/collected/"}}


def md(**spec: Any) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {"metadata": {"name": "iris", "namespace": "ml", "uid": "md-uid"},
         "spec": {"track": {"model": "iris"},
                  "retrain": {"template": {"spec": TEMPLATE}}, **spec}}
    )  # fmt: skip


def mv(name: str, uri: str) -> ModelVersion:
    return ModelVersion.model_validate(
        {"metadata": {"name": name, "namespace": "ml"},
         "spec": {"model": "iris", "version": int(name[-1]), "task": "classification",
                  "artifact": {"uri": uri, "digest": "sha256:" + name[-1] * 64},
                  "framework": {"name": "scikit-learn", "version": "1.9.1"}}}
    )  # fmt: skip


def test_the_retraining_adds_the_collected_window_to_the_template() -> None:
    deployment = md(monitoring=COLLECT)
    spec = imp.retrain_spec(
        deployment, TrainingJobSpec.model_validate(TEMPLATE), NOW - timedelta(hours=1), NOW
    )
    collected = spec.dataset.collected
    assert collected is not None
    assert collected.uri == "pvc://orchard-artifacts/collected/ml/iris/"
    assert (collected.since, collected.until) == (NOW - timedelta(hours=1), NOW)
    assert spec.dataset.uri == TEMPLATE["dataset"]["uri"]  # the template's rows stay

    job = imp.retrain_training_job(deployment, spec, 3, "drift", "iris-v1")
    assert job["metadata"]["name"] == "iris-retrain-3"
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("ModelDeployment", "md-uid", True)
    tj = TrainingJob.model_validate(job | {"metadata": job["metadata"] | {"uid": "tj-uid"}})
    report = TrainerReport.model_validate(
        {"artifactUri": "pvc://orchard-artifacts/models/iris/x/", "digest": "sha256:" + "a" * 64,
         "dataset": {"uri": "pvc://data/iris-narrow.csv", "digest": "sha256:" + "b" * 64},
         "collected": {"uri": collected.uri, "rows": 150, "since": "2026-12-02T11:00:00Z",
                       "until": "2026-12-02T12:00:00Z", "digest": "sha256:" + "c" * 64}}
    )  # fmt: skip
    registered = model_version(tj, report, 2, None)
    source = registered["spec"]["source"]
    assert (source["trigger"], source["parent"], source["deployment"]) == ("drift", "iris-v1",
                                                                           "iris")  # fmt: skip
    assert source["dataset"]["collected"]["rows"] == 150


def test_a_deployment_that_collects_nothing_retrains_on_the_template_alone() -> None:
    spec = imp.retrain_spec(md(), TrainingJobSpec.model_validate(TEMPLATE), NOW, NOW)
    assert spec.dataset.collected is None


def test_a_training_job_made_by_hand_claims_no_lineage() -> None:
    tj = TrainingJob.model_validate(
        {"metadata": {"name": "x", "namespace": "ml", "uid": "u",
                      "annotations": {imp.TRIGGER_ANNOTATION: "drift"}}, "spec": TEMPLATE}
    )  # fmt: skip
    report = TrainerReport.model_validate(
        {"artifactUri": "pvc://a/b/", "digest": "sha256:" + "a" * 64}
    )
    source = model_version(tj, report, 1, None)["spec"]["source"]
    assert "trigger" not in source


def test_the_evaluation_job_reads_both_artifacts_and_the_collection_read_only() -> None:
    deployment = md(monitoring=COLLECT)
    candidate = mv("iris-v2", "pvc://orchard-artifacts/models/iris/two/")
    baseline = mv("iris-v1", "pvc://old-models/iris/one/")
    job = imp.evaluation_job(deployment, candidate, baseline, NOW)
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    args = container["args"]
    assert container["command"] == ["orchard", "evaluate"]
    assert args[args.index("--candidate") + 1] == "pvc://orchard-artifacts/models/iris/two/"
    assert args[args.index("--baseline-digest") + 1] == "sha256:" + "1" * 64
    assert args[args.index("--collected") + 1] == "pvc://orchard-artifacts/collected/ml/iris/"
    assert args[args.index("--since") + 1] == "2026-12-02T12:00:00Z"
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in pod["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims == {"orchard-artifacts": True, "old-models": True}
    assert pod["automountServiceAccountToken"] is False
    assert job["metadata"]["name"] == imp.evaluation_job_name(deployment, "iris-v2", "iris-v1")
    assert job["metadata"]["name"] != imp.evaluation_job_name(deployment, "iris-v3", "iris-v1")


def test_the_replay_job_sends_the_candidates_rows_to_every_pod_given() -> None:
    deployment = md(monitoring=COLLECT)
    candidate = mv("iris-v2", "pvc://orchard-artifacts/models/iris/two/")
    targets = ["http://10.244.0.5:8080", "http://10.244.0.6:8080"]
    job = imp.replay_job(deployment, candidate, targets, NOW, 1, NOW - timedelta(minutes=5))
    [container] = job["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert container["command"] == ["orchard", "replay"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--target"] == targets
    assert args[args.index("--model") + 1] == "iris"
    assert args[args.index("--digest") + 1] == "sha256:" + "2" * 64
    assert job["spec"]["activeDeadlineSeconds"] == imp.REPLAY_DEADLINE_SECONDS
    assert job["metadata"]["name"] == imp.replay_job_name(deployment, "iris-v2", 1, NOW)
    assert job["metadata"]["name"] != imp.replay_job_name(deployment, "iris-v2", 0, NOW)
