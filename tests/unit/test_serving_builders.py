"""The objects a ModelDeployment owns: Deployments per track, Services, HTTPRoute, HPA."""

from __future__ import annotations

from typing import Any

import pytest

from orchard.api.modeldeployment import ModelDeployment
from orchard.api.modelversion import ModelVersion
from orchard.builders import serving as sv
from orchard.builders.common import DEFAULT_SERVER_IMAGE, ServerSettings

DIGEST = "sha256:" + "ab" * 32


def md(**spec: Any) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": 1},
            "spec": {"modelVersion": "iris-v2", **spec},
        }
    )


def mv(uri: str = "pvc://orchard-artifacts/iris/run-2/", **artifact: Any) -> ModelVersion:
    return ModelVersion.model_validate(
        {
            "metadata": {"name": "iris-v2", "namespace": "ml"},
            "spec": {
                "model": "iris",
                "version": 2,
                "task": "classification",
                "artifact": {"uri": uri, "digest": DIGEST, **artifact},
                "framework": {"name": "scikit-learn", "version": "1.5"},
            },
        }
    )


def container(dep: dict[str, Any]) -> dict[str, Any]:
    c: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return c


def test_a_refused_artifact_reaches_status_through_the_termination_message() -> None:
    """`orchard serve` refuses a changed artifact with one line on stderr and exit 2; the
    container hands its log's tail to the kubelet, which the controller reads."""
    from orchard.contracts import SERVE_EXIT_REFUSED, SERVE_REFUSED_PREFIX
    from orchard.decisions.observing import refusal, refused_artifact

    dep = sv.deployment(md(), "stable", mv(), 1, ServerSettings(image="img:1"))
    container = dep["spec"]["template"]["spec"]["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    labels = dep["spec"]["template"]["metadata"]["labels"]
    line = "model.joblib has digest sha256:1, but metadata.json lists sha256:2"
    ended = {"exitCode": SERVE_EXIT_REFUSED, "message": f"{SERVE_REFUSED_PREFIX}{line}\n"}
    waiting = {"waiting": {"reason": "CrashLoopBackOff"}}
    server = {"name": "server", "lastState": {"terminated": ended}, "state": waiting}
    pod = {"metadata": {"name": "iris-stable-x", "labels": labels},
           "status": {"containerStatuses": [server]}}  # fmt: skip
    version = labels["orchard.dev/model-version"]
    assert refusal([pod], "stable", version) == f"pod iris-stable-x refused the artifact: {line}"
    assert refusal([pod], "canary", version) == ""
    assert refused_artifact(pod["status"])  # the pod event that tells the owner
    ended["exitCode"] = 3  # a model that cannot load is another story
    assert refusal([pod], "stable", version) == ""
    assert not refused_artifact(pod["status"]) and not refused_artifact({})


def test_stable_deployment_from_pvc() -> None:
    dep = sv.deployment(md(), "stable", mv(), 2, ServerSettings(image="img:1"))
    assert dep["metadata"]["name"] == "iris-stable"
    assert dep["metadata"]["namespace"] == "ml"
    owner = dep["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == (
        "ModelDeployment",
        "iris",
        "uid-1",
        True,
    )
    spec = dep["spec"]
    assert spec["replicas"] == 2
    assert spec["selector"]["matchLabels"] == {
        "orchard.dev/modeldeployment": "iris",
        "orchard.dev/track": "stable",
    }
    pod_labels = spec["template"]["metadata"]["labels"]
    assert pod_labels["orchard.dev/model-version"] == "iris-v2"
    assert pod_labels["orchard.dev/track"] == "stable"
    assert pod_labels["orchard.dev/instance"] == "iris"
    assert set(spec["selector"]["matchLabels"].items()) <= set(pod_labels.items())
    assert spec["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    c = container(dep)
    assert c["image"] == "img:1"
    args = c["args"]
    assert args[0] == "serve"
    assert args[args.index("--model-dir") + 1] == "/mnt/pvc/orchard-artifacts/iris/run-2"
    assert args[args.index("--expected-digest") + 1] == DIGEST
    assert args[args.index("--model-name") + 1] == "iris"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    claim = next(v for v in pod["volumes"] if "persistentVolumeClaim" in v)
    assert claim["persistentVolumeClaim"] == {"claimName": "orchard-artifacts", "readOnly": True}
    mount = next(m for m in c["volumeMounts"] if m["name"] == claim["name"])
    assert mount == {
        "name": "artifact",
        "mountPath": "/mnt/pvc/orchard-artifacts",
        "readOnly": True,
    }
    assert pod["initContainers"] == []


@pytest.mark.parametrize(
    ("resources", "requests"),
    [
        # The server is about 210-230 MB resident once scikit-learn and pandas are loaded.
        (None, {"cpu": "50m", "memory": "256Mi"}),
        ({"requests": {"cpu": "1", "memory": "1Gi"}}, {"cpu": "1", "memory": "1Gi"}),
    ],
    ids=["default", "spec.resources"],
)
def test_server_requests_the_memory_it_uses(
    resources: dict[str, Any] | None, requests: dict[str, str]
) -> None:
    m = md(resources=resources) if resources else md()
    assert container(sv.deployment(m, "stable", mv(), 1))["resources"]["requests"] == requests


def test_server_without_spec_resources_is_never_best_effort() -> None:
    resources = container(sv.deployment(md(), "stable", mv(), 1))["resources"]
    assert resources["limits"] == {"cpu": "1", "memory": "1Gi"}


def test_canary_deployment_differs_only_by_track() -> None:
    stable = sv.deployment(md(), "stable", mv(), 2)
    canary = sv.deployment(md(), "canary", mv(), 1)
    assert canary["metadata"]["name"] == "iris-canary"
    assert canary["spec"]["selector"]["matchLabels"]["orchard.dev/track"] == "canary"
    assert container(canary)["args"] == container(stable)["args"]


def test_autoscaled_deployment_leaves_replicas_to_the_hpa() -> None:
    m = md(autoscaling={"minReplicas": 2, "maxReplicas": 5})
    assert "replicas" not in sv.deployment(m, "stable", mv(), None)["spec"]
    hpa = sv.hpa(m)
    assert hpa is not None
    assert hpa["spec"]["scaleTargetRef"]["name"] == "iris-stable"
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    assert sv.hpa(md()) is None


def test_s3_artifact_is_fetched_by_an_init_container() -> None:
    dep = sv.deployment(md(), "canary", mv("s3://models/iris/2/", secretName="s3-creds"), 1)
    pod = dep["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"][:2] == ["python", "-c"]
    assert init["command"][-2:] == ["s3://models/iris/2/", sv.FETCHED_DIR]
    assert init["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "model", "emptyDir": {"sizeLimit": "2Gi"}} in pod["volumes"]
    args = container(dep)["args"]
    assert args[args.index("--model-dir") + 1] == sv.FETCHED_DIR
    mount = next(m for m in container(dep)["volumeMounts"] if m["name"] == "model")
    assert mount["readOnly"] is True


def test_fetch_program_really_copies_an_artifact(tmp_path: Any) -> None:
    """The init container's program, run here against a file:// source."""
    import subprocess
    import sys

    src = tmp_path / "src"
    src.mkdir()
    (src / "metadata.json").write_text("{}")
    dest = tmp_path / "dest"
    subprocess.run([sys.executable, "-c", sv.FETCH_PROGRAM, f"file://{src}", str(dest)], check=True)
    assert (dest / "metadata.json").read_text() == "{}"


def test_fetch_program_reads_s3(tmp_path: Any) -> None:
    """The init container's program against a real S3-compatible server on loopback
    (moto's server, from the dev extra), with credentials from the environment as the
    Secret would give them."""
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    moto = Path(sys.executable).with_name("moto_server")
    if not moto.exists():
        pytest.skip("moto_server is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "orchard-test",
        "AWS_SECRET_ACCESS_KEY": "orchard-test-secret",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "moto did not start"
                time.sleep(0.1)
        import boto3

        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="orchard-test",
                          aws_secret_access_key="orchard-test-secret")  # fmt: skip
        s3.create_bucket(Bucket="models")
        s3.put_object(Bucket="models", Key="iris/2/model.joblib", Body=b"model-bytes")
        s3.put_object(Bucket="models", Key="iris/2/metadata.json", Body=b"{}")
        dest = tmp_path / "artifact"
        subprocess.run([sys.executable, "-c", sv.FETCH_PROGRAM, "s3://models/iris/2/", str(dest)],
                       check=True, env=env, capture_output=True)  # fmt: skip
        assert (dest / "model.joblib").read_bytes() == b"model-bytes"
        assert (dest / "metadata.json").read_bytes() == b"{}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_unsupported_artifact_uri() -> None:
    with pytest.raises(sv.UnsupportedArtifact):
        sv.deployment(md(), "stable", mv("https://example.invalid/m/"), 1)


def test_service_selects_both_tracks_by_default() -> None:
    svc, peers = sv.services(md())
    assert (peers["metadata"]["name"], peers["spec"]["clusterIP"]) == ("iris-pods", "None")
    assert peers["spec"]["selector"] == {"orchard.dev/modeldeployment": "iris"}
    assert svc["metadata"]["name"] == "iris"
    assert svc["spec"]["selector"] == {"orchard.dev/modeldeployment": "iris"}
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    assert sv.url(md()) == "http://iris.ml.svc:8080"


def test_grpc_is_a_named_port_of_the_container_and_every_service() -> None:
    c = container(sv.deployment(md(), "stable", mv(), 1))
    assert c["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8081, "protocol": "TCP"},
    ]
    assert c["args"][c["args"].index("--grpc-port") + 1] == "8081"
    assert c["readinessProbe"]["httpGet"]["port"] == "http"  # probes stay on HTTP
    gateway = md(traffic={"mode": "gatewayAPI", "httpRoute": {"name": "web"}})
    for svc in [*sv.services(md()), *sv.services(gateway)]:
        assert svc["spec"]["ports"] == [
            {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
            {"name": "grpc", "port": 8081, "targetPort": "grpc", "protocol": "TCP",
             "appProtocol": "kubernetes.io/h2c"},
        ], svc["metadata"]["name"]  # fmt: skip
    other = md(server={"port": 9000, "grpcPort": 9001})
    assert [p["port"] for p in sv.service(other)["spec"]["ports"]] == [9000, 9001]


def test_grpc_port_zero_is_no_grpc() -> None:
    off = md(server={"grpcPort": 0})
    c = container(sv.deployment(off, "stable", mv(), 1))
    assert [p["name"] for p in c["ports"]] == ["http"]
    assert c["args"][c["args"].index("--grpc-port") + 1] == "0"  # the server's own off
    assert [p["name"] for p in sv.service(off)["spec"]["ports"]] == ["http"]
    with pytest.raises(ValueError, match="grpcPort must differ"):
        md(server={"port": 8081})


def test_gateway_mode_has_per_track_services_and_route_weights() -> None:
    m = md(traffic={"mode": "gatewayAPI", "httpRoute": {"name": "web"}})
    main, _, stable, canary = sv.services(m)
    assert main["spec"]["selector"]["orchard.dev/track"] == "stable"
    assert stable["spec"]["selector"]["orchard.dev/track"] == "stable"
    assert canary["metadata"]["name"] == "iris-canary"
    mine = {
        "matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
        "backendRefs": [{"name": "iris", "port": 8080}],  # hands the rule to Orchard
    }
    route = {
        "metadata": {"namespace": "ml"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [mine]},
    }
    rules = sv.http_route_rules(m, route, 25)
    assert rules[0]["matches"] == mine["matches"]  # kept
    refs = {r["name"]: r["weight"] for r in rules[0]["backendRefs"]}
    assert refs == {"iris-stable": 75, "iris-canary": 25}
    assert all("namespace" not in r for r in rules[0]["backendRefs"])
    assert sv.http_route_weights({"spec": {"rules": rules}}, m) == (75, 25)
    assert sv.http_route_weights(route, m) is None  # ours, but not split yet


def test_a_route_rule_of_someone_else_is_never_touched() -> None:
    """Only rules whose every backend is this deployment's Service are Orchard's: another
    tenant's rule, a mixed rule, a rule with no backends, or one naming the same Service
    name in another namespace stay exactly as written."""
    m = md(traffic={"mode": "gatewayAPI", "httpRoute": {"name": "web"}})
    theirs = {"backendRefs": [{"name": "shop", "port": 80}]}
    mixed = {"backendRefs": [{"name": "iris", "port": 8080}, {"name": "shop", "port": 80}]}
    redirect = {"filters": [{"type": "RequestRedirect"}]}
    elsewhere = {"backendRefs": [{"name": "iris", "namespace": "shop", "port": 8080}]}
    mine = {"backendRefs": [{"name": "iris-stable", "port": 8080, "weight": 100}]}
    route = {
        "metadata": {"namespace": "ml"},
        "spec": {"rules": [theirs, mixed, redirect, elsewhere, mine]},
    }
    assert sv.http_route_owned_rules(route, m) == [4]
    rules = sv.http_route_rules(m, route, 50)
    assert rules[:4] == [theirs, mixed, redirect, elsewhere]
    assert {r["name"]: r["weight"] for r in rules[4]["backendRefs"]} == {
        "iris-stable": 50,
        "iris-canary": 50,
    }
    assert sv.http_route_owned_rules({"spec": {"rules": [theirs, redirect]}}, m) == []
    assert sv.http_route_weights({"spec": {"rules": [theirs]}}, m) is None


def test_a_route_in_another_namespace_names_the_services_namespace() -> None:
    m = md(traffic={"mode": "gatewayAPI", "httpRoute": {"name": "web", "namespace": "edge"}})
    route = {
        "metadata": {"namespace": "edge"},
        "spec": {"rules": [{"backendRefs": [{"name": "iris", "namespace": "ml", "port": 8080}]}]},
    }
    assert sv.http_route_owned_rules(route, m) == [0]
    refs = sv.http_route_rules(m, route, 10)[0]["backendRefs"]
    assert {(r["name"], r["namespace"], r["weight"]) for r in refs} == {
        ("iris-stable", "ml", 90),
        ("iris-canary", "ml", 10),
    }
    # without a namespace, a backend of a route in edge is a Service in edge: not ours
    foreign = {
        "metadata": {"namespace": "edge"},
        "spec": {"rules": [{"backendRefs": [{"name": "iris"}]}]},
    }
    assert sv.http_route_owned_rules(foreign, m) == []


def _grant(from_ns: str, kind: str = "ModelDeployment", name: str | None = None) -> dict[str, Any]:
    to: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}
    if name is not None:
        to["name"] = name
    return {
        "spec": {"from": [{"group": "orchard.dev", "kind": kind, "namespace": from_ns}], "to": [to]}
    }


@pytest.mark.parametrize(
    ("grants", "granted"),
    [
        ([], False),
        ([_grant("ml")], True),
        ([_grant("ml", name="web")], True),
        ([_grant("ml", name="other")], False),
        ([_grant("shop")], False),  # consent for another namespace
        ([_grant("ml", kind="HTTPRoute")], False),  # a grant for routes, not deployments
        ([_grant("shop"), _grant("ml", name="web")], True),
    ],
)
def test_a_route_elsewhere_needs_that_namespaces_reference_grant(
    grants: list[dict[str, Any]], granted: bool
) -> None:
    m = md(traffic={"mode": "gatewayAPI", "httpRoute": {"name": "web", "namespace": "edge"}})
    assert sv.reference_granted(grants, m, "web") is granted


def _accepted(status: str, reason: str = "") -> dict[str, Any]:
    cond = {"type": "Accepted", "status": status, "reason": reason}
    return {"parents": [{"conditions": [cond]}]}


@pytest.mark.parametrize(
    ("status", "accepted"),
    [
        (_accepted("True"), (True, "Accepted")),
        (_accepted("False", "NoMatchingParent"), (False, "NoMatchingParent")),
        ({}, (False, "NoParentStatus")),
    ],
)
def test_http_route_accepted(status: dict[str, Any], accepted: tuple[bool, str]) -> None:
    assert sv.http_route_accepted({"status": status}) == accepted


def test_settings_from_env() -> None:
    s = ServerSettings.from_env({"ORCHARD_SERVER_IMAGE": "x/y:z"})
    assert s.image == "x/y:z" and s.image_pull_policy == "IfNotPresent"
    assert ServerSettings.from_env({}).image == DEFAULT_SERVER_IMAGE


# --- collection -------------------------------------------------------------------------------


def test_nothing_is_collected_unless_the_spec_asks() -> None:
    dep = sv.deployment(md(), "stable", mv(), 2)
    assert all(v["name"] != "collection" for v in dep["spec"]["template"]["spec"]["volumes"])
    assert "ORCHARD_COLLECT_TO" not in {e["name"] for e in container(dep)["env"]}


def test_collection_writes_only_the_deployments_own_directory_of_the_claim() -> None:
    m = md(monitoring={"collection": {"sampleRate": 0.5, "flushInterval": "10s",
                                      "uri": "pvc://orchard-artifacts/collected/"}})  # fmt: skip
    dep = sv.deployment(m, "stable", mv(), 2)
    pod = dep["spec"]["template"]["spec"]
    # one volume for the claim (kubelet mounts a claim once per pod), mounted twice
    (volume,) = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert volume["persistentVolumeClaim"] == {"claimName": "orchard-artifacts", "readOnly": False}
    mounts = {m["mountPath"]: m for m in container(dep)["volumeMounts"]}
    collect = mounts[sv.COLLECT_ROOT]
    assert (collect["name"], collect["subPath"]) == (volume["name"], "collected/ml/iris")
    assert "readOnly" not in collect
    artifact = mounts["/mnt/pvc/orchard-artifacts"]
    assert artifact["readOnly"] is True  # the artifacts stay out of the server's reach
    assert "subPath" not in artifact
    other = md(monitoring={"collection": {"sampleRate": 1, "uri": "pvc://prod-data/served/"}})
    volumes = sv.deployment(other, "stable", mv(), 2)["spec"]["template"]["spec"]["volumes"]
    claims = {
        v["name"]: v["persistentVolumeClaim"] for v in volumes if "persistentVolumeClaim" in v
    }
    assert claims["artifact"]["readOnly"] is True and claims["collection"] == {
        "claimName": "prod-data"
    }
    env = {e["name"]: e.get("value") for e in container(dep)["env"]}
    assert env["ORCHARD_COLLECT_TO"] == f"{sv.COLLECT_ROOT}/iris-v2"
    assert env["ORCHARD_COLLECT_SAMPLE_RATE"] == "0.5"
    assert container(dep)["args"][-4:] == [
        "--collect-flush-seconds", "10", "--collect-segment-rows", "10000",
    ]  # fmt: skip
    place = sv.collection_place(m)
    assert place is not None and place.uri == "pvc://orchard-artifacts/collected/ml/iris/"


def test_the_place_is_the_specs_on_a_claim_or_a_bucket_and_a_rate_needs_one() -> None:
    named = md(monitoring={"collection": {"sampleRate": 1, "uri": "pvc://prod-data/served"}})
    place = sv.collection_place(named)
    assert place is not None and (place.root, place.path) == ("prod-data", "served/ml/iris")
    on_s3 = md(monitoring={"collection": {"sampleRate": 1, "uri": "s3://prod-data/served/",
                                          "secretName": "collect-creds"}})  # fmt: skip
    dep = sv.deployment(on_s3, "stable", mv("s3://bucket/iris/2/"), 2)
    assert all(v["name"] != "collection" for v in dep["spec"]["template"]["spec"]["volumes"])
    env = {e["name"]: e for e in container(dep)["env"]}
    assert env["ORCHARD_COLLECT_TO"]["value"] == "s3://prod-data/served/ml/iris/iris-v2/"
    key = env["ORCHARD_COLLECT_AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
    assert (key["name"], key["key"]) == ("collect-creds", "AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ValueError, match=r"collection\.uri is required"):
        md(monitoring={"collection": {"sampleRate": 1}})
    off = md(monitoring={"collection": {"uri": "pvc://prod-data/served"}})  # rate 0
    assert sv.collection_place(off) is None
    with pytest.raises(ValueError, match="must not leave its claim"):
        md(monitoring={"collection": {"sampleRate": 1, "uri": "pvc://data/../other"}})
