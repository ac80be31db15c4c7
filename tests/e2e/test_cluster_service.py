"""A 2-replica Deployment behind a ClusterIP Service answers HTTP from the host through
the Service's IP (kube-proxy's iptables rules), and keeps answering after a pod is
deleted."""

from __future__ import annotations

import time
from typing import Any, cast

import httpx
import pytest
from lightkube import ApiError, Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Endpoints, Pod, Service

pytestmark = pytest.mark.e2e

LABELS: dict[str, Any] = {"app": "echo"}


def deployment(image: str) -> Deployment:
    return cast(
        Deployment,
        Deployment.from_dict(
            {
                "metadata": {"name": "echo"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": LABELS},
                    "template": {
                        "metadata": {"labels": LABELS},
                        "spec": {
                            "terminationGracePeriodSeconds": 2,
                            "containers": [
                                {
                                    "name": "http",
                                    "image": image,
                                    "imagePullPolicy": "IfNotPresent",
                                    "ports": [{"containerPort": 8080}],
                                    "readinessProbe": {
                                        "httpGet": {"path": "/", "port": 8080},
                                        "periodSeconds": 1,
                                    },
                                }
                            ],
                        },
                    },
                },
            }
        ),
    )


def service() -> Service:
    return cast(
        Service,
        Service.from_dict(
            {
                "metadata": {"name": "echo"},
                "spec": {"selector": LABELS, "ports": [{"port": 80, "targetPort": 8080}]},
            }
        ),
    )


def name_of(obj: Pod) -> str:
    assert obj.metadata is not None and obj.metadata.name is not None
    return obj.metadata.name


def ready_ips(client: Client, namespace: str) -> set[str]:
    try:
        endpoints = client.get(Endpoints, "echo", namespace=namespace)
    except ApiError as err:
        if err.status.code == 404:  # the endpoints controller has not written it yet
            return set()
        raise
    return {a.ip for s in endpoints.subsets or [] for a in s.addresses or []}


def wait_until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_service_answers_and_survives_pod_deletion(
    node_client: Client, node_namespace: str, testbox_image: str
) -> None:
    ns = node_namespace
    node_client.create(deployment(testbox_image), namespace=ns)
    svc = node_client.create(service(), namespace=ns)
    assert svc.spec is not None
    url = f"http://{svc.spec.clusterIP}/"
    wait_until(lambda: len(ready_ips(node_client, ns)) == 2, 90, "2 ready endpoints")

    pods = {name_of(p) for p in node_client.list(Pod, namespace=ns, labels=dict(LABELS))}
    seen: set[str] = set()
    with httpx.Client(timeout=5, trust_env=False) as http:

        def answers() -> bool:
            try:
                return http.get(url).status_code == 200
            except httpx.TransportError:  # kube-proxy has not synced the endpoints yet
                return False

        wait_until(answers, 30, f"the Service at {url} to answer")
        deadline = time.monotonic() + 30  # kube-proxy may program the 2nd endpoint later
        while seen != pods and time.monotonic() < deadline:
            reply = http.get(url)
            assert reply.status_code == 200
            seen.add(reply.text.strip().removeprefix("hello from "))
            time.sleep(0.05)
        # Both replicas answer through the one Service IP.
        assert seen == pods

        victim = sorted(pods)[0]
        victim_status = node_client.get(Pod, victim, namespace=ns).status
        assert victim_status is not None
        victim_ip = victim_status.podIP
        node_client.delete(Pod, victim, namespace=ns)
        wait_until(
            lambda: victim_ip not in ready_ips(node_client, ns),
            30,
            "the deleted pod to leave the endpoints",
        )
        time.sleep(2)  # kube-proxy's minimum sync period is 1 s
        replies = [http.get(url) for _ in range(20)]
        assert all(r.status_code == 200 for r in replies)
        assert victim not in {r.text.strip().removeprefix("hello from ") for r in replies}

    # The Deployment replaces the pod, and the Service spreads over both again.
    wait_until(lambda: len(ready_ips(node_client, ns)) == 2, 90, "a replacement pod")
