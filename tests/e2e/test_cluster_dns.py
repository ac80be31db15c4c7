"""The cluster's DNS, as a pod sees it: a ClusterIP Service resolves by its short,
namespaced and full names to its ClusterIP (and back, by PTR), a headless Service to the
IPs of its ready pods and no others, and a name outside cluster.local fails at once,
refused by the cluster's DNS itself. On the local cluster the pod's only nameserver is
that DNS, whose binary has no forward plugin, and its port answers no other interface of
the machine than loopback and the pods' bridge.

The lookups run in the testbox image with its Python: socket.getaddrinfo (the C library's
resolver, with the pod's search path) and, to read the reply codes, the harness's own
stdlib DNS client (tests/cluster/harness/dns.py), passed to `python3 -c`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import LOCAL_KUBECONFIG, REPO, external_kubeconfig
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Namespace, Pod, Service
from lightkube.resources.discovery_v1 import EndpointSlice

pytestmark = pytest.mark.e2e

DNS_CLIENT = (REPO / "tests" / "cluster" / "harness" / "dns.py").read_text()
LOCAL_DNS = "10.244.0.1"  # the harness's DNS_IP: CoreDNS on the node's bridge address
ISOLATE_INPUT_CHAIN = "ORCHARD-ISOLATE-INPUT"  # tests/cluster/harness/network.py
PEERS: dict[str, str] = {"app": "peers"}
RESTRICTED = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
NO_PRIVILEGES = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}

# Runs in the pod after dns.py: the lookups, retried until the Services' records are as
# expected (the DNS learns of them by a watch) or 30 s pass; one JSON line of results.
PROBE = r"""
import json, os, socket, time

def lookup(name):
    start = time.monotonic()
    try:
        infos = socket.getaddrinfo(name, None, socket.AF_INET, socket.SOCK_STREAM)
        found = sorted({info[4][0] for info in infos})
    except socket.gaierror as err:
        found = f"gaierror {err.errno}: {err.strerror}"
    return found, round(time.monotonic() - start, 3)

def forms(service):
    return [service, f"{service}.{ns}", f"{service}.{ns}.svc.cluster.local"]

ns = os.environ["NS"]
want = {"front": [os.environ["FRONT_IP"]], "peers": sorted(os.environ["PEER_IPS"].split(","))}
deadline = time.monotonic() + 30
while True:
    seen = {name: lookup(name)[0] for service in want for name in forms(service)}
    done = all(seen[name] == want[service] for service in want for name in forms(service))
    if done or time.monotonic() > deadline:
        break
    time.sleep(0.5)

resolv = open("/etc/resolv.conf").read().splitlines()
nameservers = [line.split()[1] for line in resolv if line.startswith("nameserver")]
search = [w for line in resolv if line.startswith("search") for w in line.split()[1:]]
server = nameservers[0]
outside, seconds = lookup("www.example.com")
front = f"front.{ns}.svc.cluster.local."
reverse = ".".join(reversed(os.environ["FRONT_IP"].split("."))) + ".in-addr.arpa."
print(json.dumps({
    "lookups": seen,
    "nameservers": nameservers,
    "search": search,
    "outside": {"getaddrinfo": outside, "seconds": seconds},
    "outside_rcode": query("www.example.com.", server).rcode,
    "outside_rcode_tcp": query("www.example.com.", server, tcp=True).rcode,
    "tcp": query(front, server, tcp=True).addresses,
    "ptr": query(reverse, server, qtype="PTR").names,
    "missing": query(f"missing.{ns}.svc.cluster.local.", server).rcode,
}))
"""


def container(name: str, image: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "securityContext": NO_PRIVILEGES,
        **extra,
    }


def ready_on(port: int) -> dict[str, Any]:
    return {"httpGet": {"path": "/", "port": port}, "periodSeconds": 1}


def backends(image: str) -> list[object]:
    """Two ready replicas, a third pod of the same label that never gets ready, a
    ClusterIP Service `front` and a headless Service `peers` over all three."""
    pod_spec = {
        "securityContext": RESTRICTED,
        "terminationGracePeriodSeconds": 2,
        "containers": [
            container("http", image, ports=[{"containerPort": 8080}], readinessProbe=ready_on(8080))
        ],
    }
    laggard = {
        **pod_spec,
        # its readiness probe asks a port nothing listens on
        "containers": [container("http", image, readinessProbe=ready_on(8081))],
    }
    return [
        Deployment.from_dict(
            {
                "metadata": {"name": "peers"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": PEERS},
                    "template": {"metadata": {"labels": PEERS}, "spec": pod_spec},
                },
            }
        ),
        Pod.from_dict({"metadata": {"name": "laggard", "labels": PEERS}, "spec": laggard}),
        Service.from_dict(
            {
                "metadata": {"name": "front"},
                "spec": {"selector": PEERS, "ports": [{"port": 80, "targetPort": 8080}]},
            }
        ),
        Service.from_dict(
            {
                "metadata": {"name": "peers"},
                "spec": {"clusterIP": "None", "selector": PEERS, "ports": [{"port": 8080}]},
            }
        ),
    ]


def probe(image: str, front_ip: str, peer_ips: list[str]) -> Pod:
    env = [
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "FRONT_IP", "value": front_ip},
        {"name": "PEER_IPS", "value": ",".join(peer_ips)},
    ]
    return cast(
        Pod,
        Pod.from_dict(
            {
                "metadata": {"name": "resolver"},
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": RESTRICTED,
                    "containers": [
                        container(
                            "main", image, command=["python3", "-c", DNS_CLIENT + PROBE], env=env
                        )
                    ],
                },
            }
        ),
    )


def endpoints(client: Client, namespace: str, service: str) -> tuple[set[str], set[str]]:
    """The ready and the not-ready addresses of a Service's EndpointSlices."""
    ready: set[str] = set()
    not_ready: set[str] = set()
    slices = client.list(
        EndpointSlice, namespace=namespace, labels={"kubernetes.io/service-name": service}
    )
    for piece in slices:
        for endpoint in piece.endpoints or []:
            is_ready = endpoint.conditions is not None and endpoint.conditions.ready
            (ready if is_ready else not_ready).update(endpoint.addresses)
    return ready, not_ready


def pod_ip(client: Client, namespace: str, name: str) -> str | None:
    status = client.get(Pod, name, namespace=namespace).status
    return status.podIP if status else None


def wait_until(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def run_probe(client: Client, namespace: str, pod: Pod) -> dict[str, Any]:
    client.create(pod, namespace=namespace)
    phase = None
    for _, event in client.watch(
        Pod, namespace=namespace, fields={"metadata.name": "resolver"}, server_timeout=120
    ):
        phase = event.status.phase if event.status else None
        if phase in ("Succeeded", "Failed"):
            break
    logs = "".join(client.log("resolver", namespace=namespace))
    assert phase == "Succeeded", logs
    return cast(dict[str, Any], json.loads(logs.strip().splitlines()[-1]))


def test_pods_resolve_services_and_nothing_else(
    node_client: Client, node_namespace: str, testbox_image: str
) -> None:
    ns = node_namespace
    node_client.patch(
        Namespace,
        ns,
        {"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}},
    )
    for obj in backends(testbox_image):
        node_client.create(obj, namespace=ns)  # type: ignore[call-overload]
    front = node_client.get(Service, "front", namespace=ns)
    assert front.spec is not None and front.spec.clusterIP
    front_ip = front.spec.clusterIP

    def settled() -> bool:
        ready, not_ready = endpoints(node_client, ns, "peers")
        laggard = pod_ip(node_client, ns, "laggard")
        return len(ready) == 2 and laggard is not None and not_ready == {laggard}

    wait_until(settled, 120, "2 ready peers and 1 not ready in the headless Service")
    ready, _ = endpoints(node_client, ns, "peers")
    laggard_ip = pod_ip(node_client, ns, "laggard")

    found = run_probe(node_client, ns, probe(testbox_image, front_ip, sorted(ready)))

    lookups = found["lookups"]
    for name in ("front", f"front.{ns}", f"front.{ns}.svc.cluster.local"):
        assert lookups[name] == [front_ip], (name, found)
    for name in ("peers", f"peers.{ns}", f"peers.{ns}.svc.cluster.local"):
        # the ready pods, each one, and not the pod that is not ready
        assert lookups[name] == sorted(ready), (name, found)
        assert laggard_ip not in lookups[name]
    assert found["tcp"] == [front_ip]  # the same answer over TCP
    assert found["ptr"] == [f"front.{ns}.svc.cluster.local."]
    assert found["missing"] == "NXDOMAIN"  # inside the zone, a name that is not there
    assert found["search"][:3] == [f"{ns}.svc.cluster.local", "svc.cluster.local", "cluster.local"]

    # Outside the cluster's zones: no answer, at once (no time-out), and the reply is the
    # DNS's own refusal, over UDP and TCP alike.
    assert str(found["outside"]["getaddrinfo"]).startswith("gaierror"), found
    assert found["outside"]["seconds"] < 2, found
    assert found["outside_rcode"] in ("NXDOMAIN", "REFUSED"), found
    assert found["outside_rcode_tcp"] in ("NXDOMAIN", "REFUSED"), found

    if external_kubeconfig() is None:
        # The local cluster's DNS is the pod's only resolver, and cannot forward.
        assert found["nameservers"] == [LOCAL_DNS], found
        plugins = subprocess.run(
            [local_coredns(), "-plugins"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert "kubernetes" in plugins and "forward" not in plugins, plugins


def local_coredns() -> str:
    """The executable of the local cluster's running CoreDNS (from its harness pidfile)."""
    record = json.loads((LOCAL_KUBECONFIG.parent / "pids" / "coredns.json").read_text())
    return os.readlink(f"/proc/{record['pid']}/exe")


def isolate_input_drops() -> int:
    """Packets the local cluster's INPUT isolation chain has dropped so far."""
    listing = subprocess.run(
        ["iptables", "-w", "-t", "mangle", "-L", ISOLATE_INPUT_CHAIN, "-n", "-v", "-x"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(
        int(line.split()[0]) for line in listing.splitlines() if re.search(r"\bDROP\b", line)
    )


@pytest.fixture
def outsider(kubeconfig_node: Path) -> Iterator[str]:
    """A network namespace standing for another machine: linked to this host by a veth
    pair (not on the pods' bridge), with a route to the pod network through this host."""
    if external_kubeconfig() is not None:
        pytest.skip("checks the local cluster's own isolation rules")
    tag = uuid.uuid4().hex[:6]
    netns, here, there = f"orchard-outsider-{tag}", f"odns{tag}h", f"odns{tag}n"
    ip = ["ip"]
    subprocess.run([*ip, "netns", "add", netns], check=True)
    try:
        for cmd in (
            ["link", "add", here, "type", "veth", "peer", "name", there, "netns", netns],
            ["addr", "add", "198.51.100.1/30", "dev", here],
            ["link", "set", here, "up"],
            ["-n", netns, "addr", "add", "198.51.100.2/30", "dev", there],
            ["-n", netns, "link", "set", there, "up"],
            ["-n", netns, "link", "set", "lo", "up"],
            ["-n", netns, "route", "add", "10.244.0.0/24", "via", "198.51.100.1"],
        ):
            subprocess.run([*ip, *cmd], check=True, capture_output=True)
        yield netns
    finally:
        subprocess.run([*ip, "link", "delete", here], capture_output=True)
        subprocess.run([*ip, "netns", "delete", netns], check=True)


def test_dns_port_answers_no_other_interface(outsider: str) -> None:
    """What another machine routing 10.244.0.1 to this one would see: no DNS answer over
    UDP or TCP, the packets dropped by the INPUT isolation chain."""
    ask = (
        DNS_CLIENT
        + f"""
for tcp in (False, True):
    try:
        query("kubernetes.default.svc.cluster.local.", "{LOCAL_DNS}", tcp=tcp, timeout=1)
        print("answered")
    except OSError:
        print("unanswered")
"""
    )
    before = isolate_input_drops()
    proc = subprocess.run(
        ["ip", "netns", "exec", outsider, sys.executable, "-c", ask],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["unanswered", "unanswered"], proc.stdout
    # The queries reached this host and were dropped here, not lost on the way.
    assert isolate_input_drops() >= before + 2
