"""The objects a TrainingJob owns, built from realistic specs (table tests)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from orchard.api.trainingjob import Artifacts, TrainingJob
from orchard.builders.common import DEFAULT_SERVER_IMAGE, TrainerSettings, bounded_name
from orchard.builders.modelversion import (
    TRAININGJOB_UID_LABEL,
    model_version,
    verify_job,
    version_name,
)
from orchard.builders.training import config_map, job_name, training_job, trial_count
from orchard.contracts import TrainerReport

UID = "6f1c1a1e-0000-4000-8000-000000000001"
DIGEST = "sha256:" + "ab" * 32
STORE = Artifacts(uri="pvc://orchard-artifacts/models")  # make_tj's own


def make_tj(**spec: Any) -> TrainingJob:
    base: dict[str, Any] = {
        "model": "penguins",
        "dataset": {"uri": "pvc://datasets/penguins.csv", "target": "species"},
        "estimator": {"name": "RandomForestClassifier", "params": {"n_estimators": 50}},
        "artifacts": {"uri": "pvc://orchard-artifacts/models"},
    }
    base.update(spec)
    return TrainingJob.model_validate(
        {
            "metadata": {"name": "penguins-rf", "namespace": "ml", "uid": UID, "generation": 1},
            "spec": base,
        }
    )


def own_store(tj: TrainingJob) -> Artifacts:
    """The spec's own store, as the handler resolves it when the spec names one."""
    assert tj.spec.artifacts is not None
    return tj.spec.artifacts


def container(job: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = job["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_job_is_owned_labelled_and_restricted() -> None:
    job = training_job(make_tj(), STORE)
    meta = job["metadata"]
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    assert meta["name"] == "penguins-rf" and meta["namespace"] == "ml"
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "orchard.dev/v1alpha1",
            "kind": "TrainingJob",
            "name": "penguins-rf",
            "uid": UID,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    for labels in (meta["labels"], job["spec"]["template"]["metadata"]["labels"]):
        assert labels["orchard.dev/trainingjob"] == "penguins-rf"
        assert labels["orchard.dev/instance"] == "penguins-rf"
        assert labels["app.kubernetes.io/part-of"] == "orchard"
        assert labels["app.kubernetes.io/managed-by"] == "orchard-operator"
        assert {"app.kubernetes.io/name", "app.kubernetes.io/component"} <= set(labels)
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(job)["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["mountPath"]: m for m in container(job)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes[mounts["/tmp"]["name"]] == {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}


def test_job_defaults_come_from_spec() -> None:
    job = training_job(make_tj(), STORE)
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["completions"] == 1
    assert "completionMode" not in job["spec"]
    c = container(job)
    assert c["image"] == "localhost/orchard/trainer:dev"
    assert c["imagePullPolicy"] == "IfNotPresent"
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # Never BestEffort: the operator's default resources.
    assert c["resources"] == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"cpu": "2", "memory": "2Gi"},
    }
    assert "nodeSelector" not in job["spec"]["template"]["spec"]


def test_job_passes_scheduling_and_resources_through() -> None:
    tj = make_tj(
        resources={"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}},
        nodeSelector={"kubernetes.io/arch": "amd64"},
        tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        backoffLimit=2,
        activeDeadlineSeconds=600,
    )
    job = training_job(tj, own_store(tj))
    pod = job["spec"]["template"]["spec"]
    assert container(job)["resources"] == {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}}
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "amd64"}
    assert pod["tolerations"] == [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert job["spec"]["backoffLimit"] == 2
    assert job["spec"]["activeDeadlineSeconds"] == 600


@pytest.mark.parametrize(
    ("spec_image", "env", "expected_image", "policy"),
    [
        (None, {}, "localhost/orchard/trainer:dev", "IfNotPresent"),
        (
            None,
            {"ORCHARD_TRAINER_IMAGE": "example.test/trainer:1"},
            "example.test/trainer:1",
            "IfNotPresent",
        ),
        ("mine:2", {"ORCHARD_TRAINER_IMAGE": "example.test/trainer:1"}, "mine:2", "IfNotPresent"),
        (
            None,
            {"ORCHARD_TRAINER_IMAGE_PULL_POLICY": "Never"},
            "localhost/orchard/trainer:dev",
            "Never",
        ),
    ],
)
def test_image_override_order(
    spec_image: str | None, env: dict[str, str], expected_image: str, policy: str
) -> None:
    job = training_job(make_tj(image=spec_image), STORE, TrainerSettings.from_env(env))
    assert container(job)["image"] == expected_image
    assert container(job)["imagePullPolicy"] == policy


@pytest.mark.parametrize(
    ("dataset_uri", "artifacts_uri", "expected"),
    [
        # dataset and artifacts on different claims: dataset read-only
        (
            "pvc://datasets/penguins.csv",
            "pvc://orchard-artifacts/models",
            {"/mnt/pvc/datasets": True, "/mnt/pvc/orchard-artifacts": False},
        ),
        # the same claim for both: mounted once, writable
        ("pvc://shared/data.csv", "pvc://shared/models", {"/mnt/pvc/shared": False}),
        # no pvc at all
        ("https://example.test/x.csv", "s3://bucket/models", {}),
    ],
)
def test_claims_are_mounted_where_the_store_looks(
    dataset_uri: str, artifacts_uri: str, expected: dict[str, bool]
) -> None:
    tj = make_tj(
        dataset={"uri": dataset_uri, "target": "species"}, artifacts={"uri": artifacts_uri}
    )
    job = training_job(tj, own_store(tj))
    pod = job["spec"]["template"]["spec"]
    mounts = {
        m["mountPath"]: m
        for m in container(job)["volumeMounts"]
        if m["mountPath"].startswith("/mnt/pvc/")
    }
    assert {path: m["readOnly"] for path, m in mounts.items()} == expected
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path, m in mounts.items():
        claim = volumes[m["name"]]["persistentVolumeClaim"]
        assert claim["claimName"] == path.removeprefix("/mnt/pvc/")
        assert claim["readOnly"] == expected[path]


def test_the_collected_rows_claim_is_mounted_read_only() -> None:
    collected = {"uri": "pvc://collected/ml/iris/"}
    tj = make_tj(
        dataset={"builtin": "iris", "collected": collected},
        artifacts={"uri": "pvc://orchard-artifacts/models"},
    )
    mounts = {
        m["mountPath"]: m["readOnly"]
        for m in container(training_job(tj, own_store(tj)))["volumeMounts"]
        if m["mountPath"].startswith("/mnt/pvc/")
    }
    assert mounts == {"/mnt/pvc/collected": True, "/mnt/pvc/orchard-artifacts": False}


def test_spec_reaches_the_trainer_through_a_config_map() -> None:
    tj = make_tj()
    cm = config_map(tj)
    job = training_job(tj, own_store(tj))
    assert cm["immutable"] is True
    assert cm["metadata"]["ownerReferences"][0]["uid"] == UID
    doc = yaml.safe_load(cm["data"]["trainingjob.yaml"])
    assert doc["kind"] == "TrainingJob"
    assert doc["metadata"]["name"] == "penguins-rf"
    # The file parses back into the same spec the cluster holds.
    assert TrainingJob.model_validate(doc).spec == tj.spec
    c = container(job)
    assert c["command"] == ["orchard", "train"]
    assert c["args"] == [
        "-f",
        "/etc/orchard/trainingjob.yaml",
        "--keep-existing",
        "--output",
        "pvc://orchard-artifacts/models/penguins/penguins-rf-6f1c1a1e",
    ]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/etc/orchard")
    assert volumes[mount["name"]]["configMap"]["name"] == cm["metadata"]["name"]


def test_s3_credentials_come_from_secrets() -> None:
    tj = make_tj(
        dataset={"uri": "s3://data/penguins.csv", "target": "species", "secretName": "data-s3"},
        artifacts={"uri": "s3://models/", "secretName": "models-s3"},
    )
    env_from = container(training_job(tj, own_store(tj)))["envFrom"]
    assert env_from == [
        {"secretRef": {"name": "models-s3"}},
        {"prefix": "ORCHARD_DATASET_", "secretRef": {"name": "data-s3"}},
    ]
    assert "envFrom" not in container(training_job(make_tj(), STORE))


@pytest.mark.parametrize(
    ("parameters", "strategy", "max_trials", "parallelism", "completions", "expected_par"),
    [
        ({"max_depth": [2, 4], "n_estimators": [10, 50]}, "grid", 10, 2, 4, 2),
        ({"max_depth": [2, 4, 8], "n_estimators": [10, 50]}, "grid", 4, 2, 4, 2),
        ({"max_depth": [2, 4, 8, None]}, "random", 3, 3, 3, 3),
        ({"max_depth": [2]}, "grid", 5, 5, 1, 1),
    ],
)
def test_search_is_one_indexed_job(
    parameters: dict[str, list[Any]],
    strategy: str,
    max_trials: int,
    parallelism: int,
    completions: int,
    expected_par: int,
) -> None:
    search = {
        "parameters": parameters,
        "strategy": strategy,
        "maxTrials": max_trials,
        "parallelism": parallelism,
        "objective": {"metric": "accuracy"},
    }
    tj = make_tj(search=search)
    assert tj.spec.search is not None
    assert trial_count(tj.spec.search) == completions
    spec = training_job(tj, own_store(tj))["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == completions
    assert spec["parallelism"] == expected_par
    assert spec["backoffLimitPerIndex"] == 0
    assert "backoffLimit" not in spec


def test_trial_count_agrees_with_the_trainer() -> None:
    from orchard.trainer.search import trial_list

    tj = make_tj(
        search={
            "parameters": {"max_depth": [2, 4, 8], "n_estimators": [10, 50]},
            "strategy": "random",
            "maxTrials": 5,
            "parallelism": 2,
            "objective": {"metric": "accuracy"},
        }
    )
    assert tj.spec.search is not None
    assert trial_count(tj.spec.search) == len(trial_list(tj.spec.search, 42)) == 5


def test_names_stay_short_and_stable() -> None:
    long = "a" * 80
    assert bounded_name("short", "-spec") == "short-spec"
    name = bounded_name(long, "-verify")
    assert len(name) == 63 and name.endswith("-verify")
    assert name == bounded_name(long, "-verify")
    assert bounded_name(long + "b", "-verify") != name
    tj = make_tj()
    tj.metadata.name = "x" * 60
    assert len(job_name(tj)) <= 52


RESULT = TrainerReport(
    artifact_uri="pvc://orchard-artifacts/models/penguins/penguins-rf-0/",
    digest=DIGEST,
    metrics={"accuracy": 0.97, "f1_macro": 0.96},
    framework={"name": "scikit-learn", "version": "1.7.2"},
    inputs=[{"name": "bill_length_mm", "type": "number"}, {"name": "island", "type": "string"}],
    dataset={"uri": "pvc://datasets/penguins.csv", "digest": "sha256:" + "cd" * 32},
    trial=3,
    params={"n_estimators": 100, "max_depth": 8},
    task="classification",
)


def test_model_version_records_result_and_lineage_without_owner() -> None:
    mv = model_version(make_tj(), RESULT, 3, STORE)
    assert mv["metadata"]["name"] == version_name("penguins", 3) == "penguins-v3"
    assert "ownerReferences" not in mv["metadata"]
    labels = mv["metadata"]["labels"]
    assert labels["orchard.dev/model"] == "penguins"
    assert labels["orchard.dev/trainingjob"] == "penguins-rf"
    assert labels[TRAININGJOB_UID_LABEL] == UID
    spec = mv["spec"]
    assert spec["version"] == 3 and spec["model"] == "penguins"
    assert spec["task"] == "classification"
    assert spec["artifact"] == {"uri": RESULT.artifact_uri, "digest": DIGEST}
    assert spec["metrics"] == {"accuracy": 0.97, "f1_macro": 0.96}
    assert spec["inputs"][1] == {"name": "island", "type": "string"}
    # a plain run records no trial; the dataset fingerprint is lineage
    assert spec["source"] == {
        "trainingJob": "penguins-rf",
        "namespace": "ml",
        "dataset": {"uri": "pvc://datasets/penguins.csv", "digest": "sha256:" + "cd" * 32},
    }


def test_model_version_of_a_search_records_the_trial() -> None:
    tj = make_tj(
        search={
            "parameters": {"max_depth": [4, 8]},
            "maxTrials": 2,
            "objective": {"metric": "accuracy"},
        }
    )
    spec = model_version(tj, RESULT, 1, STORE)["spec"]
    assert spec["source"]["trial"] == 3


def test_model_version_refuses_a_malformed_digest() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        model_version(make_tj(), RESULT.model_copy(update={"digest": "md5:1234"}), 1, STORE)


def test_verify_job_checks_the_recorded_digest() -> None:
    from orchard.api.modelversion import ModelVersion

    body = model_version(make_tj(), RESULT, 2, STORE)
    body["metadata"]["uid"] = "mv-uid"
    mv = ModelVersion.model_validate(body)
    job = verify_job(mv)
    assert job["metadata"]["name"] == "penguins-v2-verify"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ModelVersion"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "mv-uid"
    assert job["metadata"]["labels"]["orchard.dev/modelversion"] == "penguins-v2"
    c = container(job)
    assert c["command"] == ["python", "-m", "orchard.serving.verify"]
    assert c["image"] == DEFAULT_SERVER_IMAGE  # what serving needs, to find the runtime
    assert c["args"] == [RESULT.artifact_uri, DIGEST]
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/mnt/pvc/orchard-artifacts"]["readOnly"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert job["spec"]["activeDeadlineSeconds"] > 0


def test_batch_pods_confine_local_paths_to_the_mounted_claims() -> None:
    """The trainer and the verifier read file:// and pvc:// only below the directory the
    claims are mounted in: nothing of the pod's own filesystem (/proc/self/environ)."""
    from orchard.api.modelversion import ModelVersion
    from orchard.artifacts.store import LOCAL_ROOTS_ENV, PVC_ROOT_ENV

    body = model_version(make_tj(), RESULT, 2, STORE)
    body["metadata"]["uid"] = "mv-uid"
    for job in (training_job(make_tj(), STORE), verify_job(ModelVersion.model_validate(body))):
        c = container(job)
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env[LOCAL_ROOTS_ENV] == env[PVC_ROOT_ENV] == "/mnt/pvc"
        claims = [m["mountPath"] for m in c["volumeMounts"] if m["name"].startswith("pvc-")]
        assert claims and all(p.startswith(env[LOCAL_ROOTS_ENV] + "/") for p in claims)


def test_model_version_redacts_a_presigned_dataset_uri() -> None:
    """Whatever the trainer image reported; the digest still pins the bytes."""
    presigned = "https://h.test/p.csv?X-Amz-Credential=AKIAFAKE&X-Amz-Signature=hunter2"
    result = RESULT.model_copy(
        update={"dataset": {"uri": presigned, "digest": "sha256:" + "cd" * 32}}
    )
    dataset = model_version(make_tj(), result, 1, STORE)["spec"]["source"]["dataset"]
    assert dataset == {
        "uri": "https://h.test/p.csv?X-Amz-Credential=REDACTED&X-Amz-Signature=REDACTED",
        "digest": "sha256:" + "cd" * 32,
    }


# --- the operator's default artifact store ----------------------------------------------


def test_a_spec_without_artifacts_writes_to_the_store_it_is_given() -> None:
    """The minimal TrainingJob: the handler passes the operator's default store."""
    tj = make_tj(artifacts=None)
    store = TrainerSettings.from_env(
        {"ORCHARD_DEFAULT_ARTIFACTS": "pvc://orchard-artifacts/"}
    ).default_artifacts
    assert tj.spec.artifacts is None and store is not None
    job = training_job(tj, store)
    c = container(job)
    assert c["args"][-2:] == ["--output", "pvc://orchard-artifacts/penguins/penguins-rf-6f1c1a1e"]
    mounts = {m["mountPath"]: m.get("readOnly") for m in c["volumeMounts"]}
    assert mounts["/mnt/pvc/orchard-artifacts"] is False  # written
    assert mounts["/mnt/pvc/datasets"] is True
    assert "envFrom" not in c
    # The trainer reads the spec as written: the store reaches it as --output only.
    doc = yaml.safe_load(config_map(tj)["data"]["trainingjob.yaml"])
    assert "artifacts" not in doc["spec"]


def test_a_store_with_a_secret_gives_the_trainer_its_credentials() -> None:
    store = Artifacts(uri="s3://models/", secret_name="orchard-s3")
    c = container(training_job(make_tj(artifacts=None), store))
    assert c["args"][-1] == "s3://models/penguins/penguins-rf-6f1c1a1e"
    assert c["envFrom"] == [{"secretRef": {"name": "orchard-s3"}}]


@pytest.mark.parametrize(
    ("store", "secret"),
    [
        (Artifacts(uri="s3://models/", secret_name="orchard-s3"), "orchard-s3"),
        (Artifacts(uri="pvc://orchard-artifacts/"), None),  # the default store: no Secret
        (None, None),
    ],
)
def test_model_version_records_the_store_the_run_wrote_to(
    store: Artifacts | None, secret: str | None
) -> None:
    artifact = model_version(make_tj(artifacts=None), RESULT, 1, store)["spec"]["artifact"]
    assert artifact["uri"] == RESULT.artifact_uri  # where the trainer reported it
    assert artifact.get("secretName") == secret


def test_default_resources_and_tmp_limit_come_from_the_operator_settings() -> None:
    env = {
        "ORCHARD_TRAINER_RESOURCES": '{"requests": {"cpu": "1", "memory": "1Gi"}, '
        '"limits": {"memory": "4Gi"}}',
        "ORCHARD_BATCH_RESOURCES": '{"requests": {"cpu": "50m"}}',
        "ORCHARD_TMP_SIZE_LIMIT": "5Gi",
    }
    settings = TrainerSettings.from_env(env)
    job = training_job(make_tj(), STORE, settings)
    assert container(job)["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"memory": "4Gi"},
    }
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {"sizeLimit": "5Gi"}}
    assert settings.batch_resources == {"requests": {"cpu": "50m"}}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("ORCHARD_TRAINER_RESOURCES", "cpu=1"),
        ("ORCHARD_TRAINER_RESOURCES", '{"requests": {"cpu": "lots"}}'),
        ("ORCHARD_BATCH_RESOURCES", '{"limit": {"cpu": "1"}}'),
        ("ORCHARD_TMP_SIZE_LIMIT", "a gigabyte"),
    ],
)
def test_settings_that_are_no_resources_stop_the_operator(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        TrainerSettings.from_env({name: value})


def test_the_shipped_manager_states_the_default_resources() -> None:
    """manifests/manager spells out the defaults, so an admin sees what to change."""
    from pathlib import Path

    manager = Path(__file__).resolve().parents[2] / "manifests/manager/deployment.yaml"
    deployment = yaml.safe_load(manager.read_text())
    env = {
        e["name"]: e["value"]
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        if "value" in e
    }
    assert TrainerSettings.from_env(env) == TrainerSettings.from_env(
        {"ORCHARD_DEFAULT_ARTIFACTS": env["ORCHARD_DEFAULT_ARTIFACTS"]}
    )
