"""The ModelDeployment controller and Gateway API objects on a real kube-apiserver.

Gateway API is not installed on the local cluster: schema-less stand-in CRDs of
HTTPRoute and ReferenceGrant take its place (removed afterwards), so the controller's
reads and patches meet real API semantics (namespaces, resourceVersion conflicts).
Also here: a ModelDeployment the admin's policy refuses creates nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import kubectl, stand_in_crd

from orchard import kube
from orchard.api.common import API_VERSION
from orchard.api.modeldeployment import ModelDeployment, ModelDeploymentStatus
from orchard.handlers import modeldeployment as md_handlers
from orchard.handlers import traffic_routes

pytestmark = pytest.mark.api

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gateway.networking.k8s.io"
DIGEST = "sha256:" + "ab" * 32
STAND_INS = [
    stand_in_crd(GATEWAY, "v1", "HTTPRoute", "httproutes"),
    stand_in_crd(GATEWAY, "v1beta1", "ReferenceGrant", "referencegrants"),
]
log = logging.getLogger("test")


@pytest.fixture(scope="module")
def gateway_api(kubeconfig_api: Path) -> Iterator[None]:
    """Orchard's CRDs and the stand-ins; KUBECONFIG set for the operator's client."""
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig_api)
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    installed = []
    for crd in STAND_INS:
        name = crd["metadata"]["name"]
        present = kubectl("get", "crd", name, check=False, timeout=30)
        if present.returncode != 0:  # only where Gateway API is absent
            kubectl("apply", "-f", "-", input=json.dumps(crd))
            installed.append(name)
    names = [f"crd/{n}" for n in installed]
    if names:
        kubectl("wait", "--for=condition=Established", "--timeout=60s", *names)
    for name in installed:  # Established comes a moment before the storage serves (429)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            listed = kubectl("get", name, "-A", check=False, timeout=30)
            if listed.returncode == 0:
                break
            time.sleep(0.5)
    yield
    if names:  # gone before the next test module looks for Gateway API
        kubectl("delete", *names, "--wait=true", "--timeout=90s")
    if saved is None:
        os.environ.pop("KUBECONFIG", None)
    else:
        os.environ["KUBECONFIG"] = saved


@pytest.fixture
def namespaces(gateway_api: None, api_namespace: str) -> Iterator[tuple[str, str]]:
    """The deployment's namespace and another tenant's, where the route lives."""
    edge = f"orchard-test-edge-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", edge)
    yield api_namespace, edge
    kubectl("delete", "namespace", edge, "--wait=false")


@pytest.fixture(autouse=True)
async def fresh_client() -> AsyncIterator[None]:
    """lightkube's async client is bound to the event loop it was made on."""
    yield
    await kube.close()


def deployment(namespace: str, **spec: Any) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "metadata": {"name": "iris", "namespace": namespace, "uid": "u1", "generation": 1},
            "spec": {"modelVersion": "iris-v1", **spec},
        }
    )


THEIRS = {"backendRefs": [{"group": "", "kind": "Service", "name": "shop", "port": 80}]}


async def make_route(namespace: str, backend_namespace: str | None) -> dict[str, Any]:
    ref: dict[str, Any] = {"name": "iris", "port": 8080}
    if backend_namespace:
        ref["namespace"] = backend_namespace
    route = await kube.create(
        {
            "apiVersion": f"{GATEWAY}/v1",
            "kind": "HTTPRoute",
            "metadata": {"name": "web", "namespace": namespace},
            "spec": {"parentRefs": [{"name": "gw"}], "rules": [THEIRS, {"backendRefs": [ref]}]},
        }
    )
    accepted = {"parents": [{"parentRef": {"name": "gw"}, "conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted"}]}]}  # fmt: skip
    res = kube.resource(f"{GATEWAY}/v1", "HTTPRoute")
    await kube.client().patch(
        res.Status, "web", {"status": accepted}, namespace=namespace,
        patch_type=kube.PatchType.MERGE,
    )  # fmt: skip
    return route


def grant(namespace: str, from_namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GATEWAY}/v1beta1",
        "kind": "ReferenceGrant",
        "metadata": {"name": "orchard", "namespace": namespace},
        "spec": {
            "from": [
                {"group": "orchard.dev", "kind": "ModelDeployment", "namespace": from_namespace}
            ],
            "to": [{"group": GATEWAY, "kind": "HTTPRoute", "name": "web"}],
        },
    }


async def test_a_route_of_another_namespace_is_set_only_with_its_reference_grant(
    namespaces: tuple[str, str],
) -> None:
    """A user in one namespace names another tenant's HTTPRoute: refused until that
    namespace grants it; then only the rule that names the deployment's Service changes."""
    ml, edge = namespaces
    await make_route(edge, backend_namespace=ml)
    md = deployment(
        ml, traffic={"mode": "gatewayAPI", "httpRoute": {"name": "web", "namespace": edge}}
    )
    traffic = await traffic_routes.traffic_state(md)
    assert (traffic.ok, traffic.reason, traffic.route) == (False, "ReferenceNotPermitted", None)
    assert edge in traffic.message and ml in traffic.message
    await kube.create(grant(edge, from_namespace="somebody-else"))
    assert (await traffic_routes.traffic_state(md)).reason == "ReferenceNotPermitted"
    await kube.delete(f"{GATEWAY}/v1beta1", "ReferenceGrant", "orchard", edge)
    await kube.create(grant(edge, from_namespace=ml))
    traffic = await traffic_routes.traffic_state(md)
    assert (traffic.ok, traffic.reason) == (True, "HTTPRoute")
    route = traffic.route
    assert route is not None

    status = ModelDeploymentStatus.model_validate(
        {"stableVersion": "iris-v1", "canaryVersion": "iris-v2", "currentStep": 0,
         "canaryWeight": {"desired": 25, "effective": 0}}
    )  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    ready_since = now - dt.timedelta(seconds=30)
    await traffic_routes.set_route_weight(md, status, route, now, ready_since, log)  # type: ignore[arg-type]
    after = await kube.get(f"{GATEWAY}/v1", "HTTPRoute", "web", edge)
    assert after is not None
    rules = after["spec"]["rules"]
    assert rules[0] == THEIRS  # another tenant's rule, exactly as written
    refs = {(r["name"], r.get("namespace"), r["weight"]) for r in rules[1]["backendRefs"]}
    assert refs == {("iris-stable", ml, 75), ("iris-canary", ml, 25)}


async def test_a_route_edited_meanwhile_is_not_overwritten(namespaces: tuple[str, str]) -> None:
    ml, _ = namespaces
    await make_route(ml, backend_namespace=None)
    md = deployment(ml, traffic={"mode": "gatewayAPI", "httpRoute": {"name": "web"}})
    traffic = await traffic_routes.traffic_state(md)
    stale = traffic.route
    assert traffic.ok and stale is not None
    edited = {"backendRefs": [{"group": "", "kind": "Service", "name": "shop-v2", "port": 80}]}
    await kube.merge_patch(f"{GATEWAY}/v1", "HTTPRoute", "web", ml,
                           {"spec": {"rules": [edited, stale["spec"]["rules"][1]]}})  # fmt: skip
    status = ModelDeploymentStatus.model_validate(
        {"stableVersion": "iris-v1", "canaryVersion": "iris-v2", "currentStep": 0,
         "canaryWeight": {"desired": 25, "effective": 0}}
    )  # fmt: skip
    now = dt.datetime.now(dt.UTC)
    await traffic_routes.set_route_weight(
        md, status, stale, now, now - dt.timedelta(seconds=30), log
    )  # type: ignore[arg-type]
    after = await kube.get(f"{GATEWAY}/v1", "HTTPRoute", "web", ml)
    assert after is not None and after["spec"]["rules"][0] == edited  # the person's edit stands


async def test_a_route_without_a_rule_for_the_deployment_is_left_alone(
    namespaces: tuple[str, str],
) -> None:
    ml, _ = namespaces
    await kube.create({
        "apiVersion": f"{GATEWAY}/v1", "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": ml},
        "spec": {"rules": [THEIRS]},
    })  # fmt: skip
    md = deployment(ml, traffic={"mode": "gatewayAPI", "httpRoute": {"name": "web"}})
    res = kube.resource(f"{GATEWAY}/v1", "HTTPRoute")
    accepted = {"parents": [{"conditions": [{"type": "Accepted", "status": "True"}]}]}
    await kube.client().patch(res.Status, "web", {"status": accepted}, namespace=ml,
                              patch_type=kube.PatchType.MERGE)  # fmt: skip
    traffic = await traffic_routes.traffic_state(md)
    assert (traffic.ok, traffic.reason, traffic.route) == (False, "HTTPRouteNoRule", None)
    assert "Service iris" in traffic.message


async def test_a_deployment_the_policy_refuses_creates_nothing(namespaces: tuple[str, str]) -> None:
    """spec.server.image of the user's choosing: Degraded with PolicyViolation and an event,
    no Deployment and no Service."""
    ml, _ = namespaces
    await kube.create({
        "apiVersion": API_VERSION, "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": ml},
        "spec": {"modelVersion": "iris-v1", "server": {"image": "attacker.example/srv:1"}},
    })  # fmt: skip
    await md_handlers.reconcile(ml, "iris", log)  # type: ignore[arg-type]
    got = await kube.get(API_VERSION, "ModelDeployment", "iris", ml)
    status = (got or {})["status"]
    assert (status["phase"], status["reason"]) == ("Degraded", "PolicyViolation")
    assert "spec.server.image" in status["message"]
    assert status["observedGeneration"] == 1
    assert await kube.get("apps/v1", "Deployment", "iris-stable", ml) is None
    assert await kube.get("v1", "Service", "iris", ml) is None
    events = json.loads(kubectl("get", "events", "-n", ml, "-o", "json").stdout)["items"]
    assert {e["type"] for e in events if e["reason"] == "PolicyViolation"} == {"Warning"}


async def test_a_version_no_serving_pod_can_read_ends_in_a_condition_not_a_log_line(
    namespaces: tuple[str, str],
) -> None:
    """A hand-made ModelVersion whose artifact is at an https:// URI: the deployment is
    Degraded with UnsupportedArtifact and an event, instead of an error only in the log."""
    ml, _ = namespaces
    await kube.create({
        "apiVersion": API_VERSION, "kind": "ModelVersion",
        "metadata": {"name": "iris-v1", "namespace": ml},
        "spec": {"model": "iris", "version": 1, "task": "classification",
                 "artifact": {"uri": "https://models.invalid/iris/1/", "digest": DIGEST},
                 "framework": {"name": "scikit-learn", "version": "1.5"}},
    })  # fmt: skip
    await kube.patch_status("ModelVersion", "iris-v1", ml, {"phase": "Ready"})
    await kube.create({
        "apiVersion": API_VERSION, "kind": "ModelDeployment",
        "metadata": {"name": "iris", "namespace": ml}, "spec": {"modelVersion": "iris-v1"},
    })  # fmt: skip
    await md_handlers.reconcile(ml, "iris", log)  # type: ignore[arg-type]
    status = ((await kube.get(API_VERSION, "ModelDeployment", "iris", ml)) or {})["status"]
    assert (status["phase"], status["reason"]) == ("Degraded", "UnsupportedArtifact")
    assert "https://models.invalid" in status["message"]
    events = json.loads(kubectl("get", "events", "-n", ml, "-o", "json").stdout)["items"]
    assert {e["type"] for e in events if e["reason"] == "UnsupportedArtifact"} == {"Warning"}
