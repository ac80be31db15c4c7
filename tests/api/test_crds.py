"""The CRDs on a real API server: installed, samples accepted, bad input refused by name,
descriptions in `kubectl explain`, printer columns in `kubectl get orchard`."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import install_crds, kubectl

pytestmark = pytest.mark.api

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "manifests" / "samples"
SAMPLE_FILES = (
    "trainingjob.yaml",
    "modelversion.yaml",
    "modeldeployment.yaml",
    "modeldeployment-tracking.yaml",
)
CRD_NAMES = (
    "trainingjobs.orchard.dev",
    "modelversions.orchard.dev",
    "modeldeployments.orchard.dev",
)


@pytest.fixture(scope="module")
def kube(kubeconfig_api: Path) -> Path:
    """The api level with Orchard's CRDs installed from crds/ and established."""
    install_crds(kubeconfig_api)
    return kubeconfig_api


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((SAMPLES / name).read_text())
    return data


def test_crds_install_structural_with_names_and_status(kube: Path) -> None:
    for name in CRD_NAMES:
        crd = json.loads(kubectl("get", "crd", name, "-o", "json", kubeconfig=kube).stdout)
        conditions = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
        assert conditions.get("Established") == "True"
        assert conditions.get("NamesAccepted") == "True"
        # The server flags schemas it cannot use as structural; none may be flagged.
        assert "NonStructuralSchema" not in conditions
        assert crd["spec"]["names"]["categories"] == ["orchard"]
        assert crd["spec"]["versions"][0]["subresources"] == {"status": {}}
    resources = kubectl(
        "api-resources", "--api-group=orchard.dev", "-o", "wide", kubeconfig=kube
    ).stdout
    for short in ("tj", "mv", "md"):
        assert f" {short} " in resources


@pytest.mark.parametrize("name", SAMPLE_FILES)
def test_every_sample_is_accepted_by_server_side_dry_run(
    kube: Path, api_namespace: str, name: str
) -> None:
    out = kubectl(
        "apply",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        api_namespace,
        "-f",
        str(SAMPLES / name),
        kubeconfig=kube,
    ).stdout
    assert "(server dry run)" in out


def test_the_samples_kustomization_applies(kube: Path, api_namespace: str) -> None:
    out = kubectl(
        "apply", "--dry-run=server", "-n", api_namespace, "-k", str(SAMPLES), kubeconfig=kube
    ).stdout
    assert out.count("(server dry run)") == 4  # three kinds and the artifacts volume


_DELETE = object()


def changed(name: str, path: str, value: Any) -> dict[str, Any]:
    """A sample with one dotted path set (or deleted); list indexes are numbers."""
    obj = copy.deepcopy(sample(name))
    *parents, last = path.split(".")
    node: Any = obj
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
    if value is _DELETE:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return obj


TJ, MV, MD = SAMPLE_FILES[:3]
SEARCH = {"parameters": {"max_depth": [2, 4]}, "maxTrials": 2, "objective": {"metric": "accuracy"}}

# (sample, dotted path, new value, what the refusal must name)
BAD: list[tuple[str, str, Any, str]] = [
    (TJ, "spec.model", "Not_A_Label", "spec.model"),
    (TJ, "spec.dataset.uri", "https://data.invalid/x.csv", "spec.dataset"),
    (TJ, "spec.dataset", {"uri": "file:///data/x.csv"}, "spec.dataset.target"),
    (TJ, "spec.dataset.checks.maxMissingFraction", 2, "spec.dataset.checks.maxMissingFraction"),
    (TJ, "spec.preprocessing.numeric.scale", "zscore", "spec.preprocessing.numeric.scale"),
    (TJ, "spec.estimator.name", "MagicForest", "spec.estimator.name"),
    (TJ, "spec.evaluation.cvFolds", 1, "spec.evaluation.cvFolds"),
    (TJ, "spec.evaluation.testSize", 1.5, "spec.evaluation.testSize"),
    (TJ, "spec.gate", {"metric": "accuracy"}, "spec.gate"),
    (TJ, "spec.search", {**SEARCH, "parallelism": 3}, "spec.search.parallelism"),
    (TJ, "spec.search", {**SEARCH, "maxTrials": 500}, "spec.search.maxTrials"),
    (TJ, "spec.estimator.params.n_jobs", 100000, "spec.estimator.params.n_jobs"),
    (TJ, "spec.estimator.params.n_jobs", 0, "must be an integer -1..8 but 0 or null"),
    (TJ, "spec.estimator.params.n_estimators", 0, "spec.estimator.params.n_estimators"),
    (TJ, "spec.estimator.params.max_depth", 1000, "spec.estimator.params.max_depth"),
    (TJ, "spec.estimator.params.max_iter", 10**6, "spec.estimator.params.max_iter"),
    (
        TJ,
        "spec.search",
        {**SEARCH, "parameters": {"n_jobs": [1, 64]}},
        "spec.search.parameters.n_jobs[1]",
    ),
    (TJ, "spec.artifacts.uri", "ftp://store/x/", "spec.artifacts.uri"),
    (TJ, "spec.artifacts.uri", "s3://models/?X-Amz-Signature=abc", "spec.artifacts.uri"),
    (TJ, "spec.artifacts", {}, "spec.artifacts.uri"),  # optional, but not empty
    (TJ, "spec.backoffLimit", -1, "spec.backoffLimit"),
    (TJ, "spec.estimatorr", {"name": "SVC"}, "spec.estimatorr"),
    (MV, "spec.artifact.digest", "sha256:abc", "spec.artifact.digest"),
    (MV, "spec.version", 0, "spec.version"),
    (MV, "spec.task", "clustering", "spec.task"),
    (MV, "spec.inputs.0.type", "float", "spec.inputs[0].type"),
    (MD, "spec.modelVersion", "Bad Name", "spec.modelVersion"),
    (MD, "spec.modelVersion", _DELETE, "exactly one of modelVersion or track"),
    (MD, "spec.track", {"model": "iris"}, "exactly one of modelVersion or track"),
    (MD, "spec.track", {"model": "Iris"}, "spec.track.model"),
    (MD, "spec.retrain", {"template": {}}, "exactly one of spec or trainingJobRef"),
    (
        MD,
        "spec.retrain",
        {"template": {"trainingJobRef": {"name": "base"}}, "cooldown": "soon"},
        "spec.retrain.cooldown",
    ),
    (MD, "spec.replicas", 101, "spec.replicas"),
    (MD, "spec.canary.steps", [{"weight": 50}, {"weight": 25}], "spec.canary.steps"),
    (MD, "spec.canary.steps", [{"weight": 50}, {"weight": 50}], "spec.canary.steps"),
    (MD, "spec.canary.steps", [{"weight": 0}], "spec.canary.steps[0].weight"),
    (MD, "spec.canary.steps", [{"weight": 20, "pause": "soon"}], "spec.canary.steps[0].pause"),
    (MD, "spec.canary.analysis.interval", "5 seconds", "spec.canary.analysis.interval"),
    (MD, "spec.canary.analysis.maxErrorRate", 1.5, "spec.canary.analysis.maxErrorRate"),
    (MD, "spec.traffic", {"mode": "gatewayAPI"}, "spec.traffic.httpRoute"),
    (MD, "spec.traffic.httpRoute", {"name": "web", "namespace": "A B"}, "spec.traffic.httpRoute"),
    (MD, "spec.autoscaling", {"minReplicas": 5, "maxReplicas": 2}, "spec.autoscaling.minReplicas"),
]


def _case_id(case: tuple[str, str, Any, str]) -> str:
    return f"{case[0].split('.')[0]}:{case[3]}"


def test_bad_manifests_are_distinct_and_many() -> None:
    assert len(BAD) >= 20
    keys = [json.dumps(changed(s, p, v), sort_keys=True) for s, p, v, _ in BAD]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(("name", "path", "value", "field"), BAD, ids=[_case_id(c) for c in BAD])
def test_bad_manifest_is_refused_naming_the_field(
    kube: Path, api_namespace: str, name: str, path: str, value: Any, field: str
) -> None:
    obj = changed(name, path, value)
    proc = kubectl(
        "create",
        "--dry-run=server",
        "--validate=strict",
        "-n",
        api_namespace,
        "-f",
        "-",
        kubeconfig=kube,
        input=json.dumps(obj),
        check=False,
    )
    assert proc.returncode != 0, f"accepted: {json.dumps(obj)}\n{proc.stdout}"
    assert field in proc.stderr, proc.stderr


def test_model_version_spec_is_immutable(kube: Path, api_namespace: str) -> None:
    ns = ("-n", api_namespace)
    kubectl("apply", *ns, "-f", str(SAMPLES / MV), kubeconfig=kube)
    proc = kubectl(
        "patch",
        *ns,
        "mv",
        "iris-import-v1",
        "--type=merge",
        "-p",
        '{"spec": {"metrics": {"accuracy": 0.99}}}',
        kubeconfig=kube,
        check=False,
    )
    assert proc.returncode != 0 and "spec is immutable" in proc.stderr, proc.stderr
    # Metadata and status stay writable.
    kubectl("label", *ns, "mv", "iris-import-v1", "team=ml", kubeconfig=kube)
    kubectl(
        "patch",
        *ns,
        "mv",
        "iris-import-v1",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"phase": "Ready"}}',
        kubeconfig=kube,
    )


def test_server_fills_in_the_model_defaults(kube: Path, api_namespace: str) -> None:
    minimal = {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "defaults"},
        "spec": {"modelVersion": "iris-v1"},
    }
    out = kubectl(
        "create",
        "-n",
        api_namespace,
        "-o",
        "json",
        "-f",
        "-",
        kubeconfig=kube,
        input=json.dumps(minimal),
    ).stdout
    spec = json.loads(out)["spec"]
    assert spec["replicas"] == 2
    assert spec["canary"]["steps"] == [
        {"weight": 25, "pause": "15s"},
        {"weight": 50, "pause": "15s"},
    ]
    assert spec["canary"]["analysis"]["maxLatencyP95"] == "500ms"
    assert spec["traffic"] == {"mode": "replicas"}
    assert spec["server"] == {"port": 8080, "grpcPort": 8081, "maxBatchSize": 32}


def _explain(kube: Path, field: str) -> str:
    # The CRD's schema reaches the server's OpenAPI document a moment after it is established.
    deadline = time.monotonic() + 60
    while True:
        proc = kubectl("explain", field, kubeconfig=kube, check=False)
        if proc.returncode == 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_kubectl_explain_shows_the_descriptions(kube: Path) -> None:
    spec = " ".join(_explain(kube, "trainingjob.spec").split())
    assert "What to train, on what data, how to judge it and where to put it." in spec
    for text in (
        "Name of the registered model this trains a version of",
        "The training data.",
        "Optional hyperparameter search.",
    ):
        assert text in spec
    builtin = " ".join(_explain(kube, "trainingjob.spec.dataset.builtin").split())
    assert "A dataset shipped with scikit-learn" in builtin
    steps = " ".join(_explain(kube, "modeldeployment.spec.canary.steps").split())
    assert "weights strictly increasing" in steps
    assert "immutable" in _explain(kube, "modelversion.spec")


def test_kubectl_get_orchard_lists_the_three_kinds_with_columns(
    kube: Path, api_namespace: str
) -> None:
    ns = ("-n", api_namespace)
    kubectl("apply", *ns, "-k", str(SAMPLES), kubeconfig=kube)
    ready = {
        "type": "Ready",
        "status": "True",
        "reason": "Done",
        "message": "",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    statuses = {
        "tj/iris": {
            "phase": "Succeeded",
            "conditions": [ready],
            "modelVersion": "iris-v1",
            "primaryMetric": {"name": "accuracy", "value": 0.97},
        },
        "mv/iris-import-v1": {"phase": "Ready", "conditions": [ready], "usedBy": ["iris"]},
        "md/iris": {
            "phase": "Progressing",
            "conditions": [{**ready, "status": "False"}],
            "targetVersion": "iris-v2",
            "stableVersion": "iris-v1",
            "canaryVersion": "iris-v2",
            "canaryWeight": {"desired": 25, "effective": 33},
            "readyReplicas": 3,
        },
    }
    for ref, status in statuses.items():
        kubectl(
            "patch",
            *ns,
            ref,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": status}),
            kubeconfig=kube,
        )
    out = kubectl("get", "orchard", *ns, kubeconfig=kube).stdout
    tables = [parse_table(t) for t in out.strip().split("\n\n") if t.strip()]
    assert len(tables) == 3, out
    rows = {t[0]["NAME"]: t[0] for t in tables}
    want = {
        "trainingjob.orchard.dev/iris": {
            "MODEL": "iris",
            "ESTIMATOR": "RandomForestClassifier",
            "PHASE": "Succeeded",
            "READY": "True",
            "METRIC": "accuracy",
            "VALUE": "0.97",
            "VERSION": "iris-v1",
        },
        "modelversion.orchard.dev/iris-import-v1": {
            "MODEL": "iris-import",
            "VERSION": "1",
            "TASK": "classification",
            "PHASE": "Ready",
            "READY": "True",
            "USED-BY": '["iris"]',
        },
        "modeldeployment.orchard.dev/iris": {
            "TARGET": "iris-v2",
            "PHASE": "Progressing",
            "READY": "False",
            "STABLE": "iris-v1",
            "CANARY": "iris-v2",
            "WEIGHT": "33",
            "REPLICAS": "3",
        },
    }
    for name, columns in want.items():
        row = rows[name]
        headers = list(row)
        assert headers[0] == "NAME" and headers[-1] == "AGE", row
        assert {k: row.get(k) for k in columns} == columns


def parse_table(text: str) -> list[dict[str, str]]:
    """kubectl's table as dicts, cut at the header's column starts (cells may be empty)."""
    header, *lines = text.strip("\n").splitlines()
    names = header.split()
    starts = []
    pos = 0
    for name in names:
        pos = header.index(name, pos)
        starts.append(pos)
        pos += len(name)
    ends = [*starts[1:], None]
    return [
        {n: line[a:b].strip() for n, a, b in zip(names, starts, ends, strict=True)}
        for line in lines
    ]


def test_status_is_a_subresource(kube: Path, api_namespace: str) -> None:
    ns = ("-n", api_namespace)
    kubectl("apply", *ns, "-f", str(SAMPLES / TJ), kubeconfig=kube)
    before = json.loads(kubectl("get", *ns, "tj", "iris", "-o", "json", kubeconfig=kube).stdout)
    # A status write cannot change the spec, and a main-resource write cannot set status.
    kubectl(
        "patch",
        *ns,
        "tj",
        "iris",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"spec": {"model": "other"}, "status": {"phase": "Running"}}',
        kubeconfig=kube,
    )
    kubectl(
        "patch",
        *ns,
        "tj",
        "iris",
        "--type=merge",
        "-p",
        '{"status": {"phase": "Failed"}}',
        kubeconfig=kube,
    )
    after = json.loads(kubectl("get", *ns, "tj", "iris", "-o", "json", kubeconfig=kube).stdout)
    assert after["spec"] == before["spec"]
    assert after["status"]["phase"] == "Running"
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    # A bad status is refused too: the operator cannot write nonsense either.
    proc = kubectl(
        "patch",
        *ns,
        "tj",
        "iris",
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status": {"phase": "Exploded"}}',
        kubeconfig=kube,
        check=False,
    )
    assert proc.returncode != 0 and "status.phase" in proc.stderr


def test_a_thread_storm_is_refused_at_admission_with_a_clear_message(
    kube: Path, api_namespace: str
) -> None:
    """`kubectl create` of a TrainingJob asking for 100000 threads: the API server itself
    refuses it, naming the field and the bound, before any operator sees it."""
    obj = changed(TJ, "spec.estimator.params.n_jobs", 100000)
    proc = kubectl(
        "create", "-n", api_namespace, "-f", "-", kubeconfig=kube,
        input=json.dumps(obj), check=False,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stdout
    assert "spec.estimator.params.n_jobs" in proc.stderr, proc.stderr
    assert "should be less than or equal to 8" in proc.stderr, proc.stderr
    # Other parameters stay free-form.
    ok = changed(TJ, "spec.estimator.params", {"n_jobs": 2, "criterion": "entropy"})
    kubectl("create", "--dry-run=server", "-n", api_namespace, "-f", "-", kubeconfig=kube,
            input=json.dumps(ok))  # fmt: skip
