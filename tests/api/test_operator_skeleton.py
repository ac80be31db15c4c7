"""`orchard operator` against a real API server: starts, reports alive, serves metrics,
runs with nothing more than its generated ClusterRole, and stops cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import build_images, install_crds, kubectl
from in_cluster import render_install

# The api tier, but for the one e2e test at the end (the image, running in the cluster).
API = pytest.mark.api

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.status, resp.read().decode()


@dataclass
class Operator:
    proc: subprocess.Popen[bytes]
    log: Path
    liveness: str
    metrics: str

    def lines(self) -> list[str]:
        return self.log.read_text().splitlines()

    def wait_alive(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "operator exited:\n" + self.log.read_text()[-4000:]
            with contextlib.suppress(OSError):
                status, body = http_get(self.liveness)
                if status == 200:
                    return body
            time.sleep(0.3)
        raise AssertionError("no liveness answer:\n" + self.log.read_text()[-4000:])

    def stop(self, timeout: float = 30) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@contextlib.contextmanager
def operator(kubeconfig: Path, tmp_path: Path, *args: str) -> Iterator[Operator]:
    live, metrics = free_port(), free_port()
    log = tmp_path / "operator.log"
    env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orchard.cli",
                "operator",
                f"--liveness=http://127.0.0.1:{live}/healthz",
                f"--metrics-port={metrics}",
                *args,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    op = Operator(
        proc, log, f"http://127.0.0.1:{live}/healthz", f"http://127.0.0.1:{metrics}/metrics"
    )
    try:
        yield op
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def crds(kubeconfig_api: Path) -> Path:
    install_crds(kubeconfig_api)
    return kubeconfig_api


@API
def test_operator_starts_is_alive_serves_metrics_and_stops(
    crds: Path, api_namespace: str, tmp_path: Path
) -> None:
    with operator(crds, tmp_path, "--namespace", api_namespace) as op:
        body = op.wait_alive()
        assert json.loads(body)["version"]  # the probe handler's answer
        status, text = http_get(op.metrics)
        assert status == 200
        assert 'orchard_operator_info{namespaces="' + api_namespace in text
        assert "orchard_operator_start_time_seconds " in text
        assert "process_resident_memory_bytes" in text or "python_info" in text
        started = time.monotonic()
        assert op.stop() == 0
        assert time.monotonic() - started < 15
    lines = op.lines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records and len(records) >= len(lines) - 2, lines  # structured JSON logs
    messages = [r.get("message", "") for r in records]
    assert any("Orchard operator started" in m for m in messages)
    assert any("Orchard operator stopped" in m for m in messages)
    assert not [r for r in records if r.get("severity") == "error"], lines
    with pytest.raises(OSError):
        http_get(op.liveness, timeout=1)


def _token_kubeconfig(admin: Path, token: str, path: Path) -> Path:
    config = yaml.safe_load(admin.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [cluster],
                "users": [{"name": "orchard", "user": {"token": token}}],
                "contexts": [
                    {"name": "orchard", "context": {"cluster": cluster["name"], "user": "orchard"}}
                ],
                "current-context": "orchard",
            }
        )
    )
    return path


@API
def test_operator_runs_with_only_its_generated_role(
    crds: Path, api_namespace: str, tmp_path: Path
) -> None:
    """The ClusterRole from manifests/rbac/role.yaml is enough for every watch Kopf starts."""
    role = yaml.safe_load((REPO / "manifests" / "rbac" / "role.yaml").read_text())
    name = f"orchard-{api_namespace}"  # a private copy, so parallel installs are untouched
    role["metadata"]["name"] = name
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "orchard", "namespace": api_namespace}],
    }
    kubectl("create", "serviceaccount", "orchard", "-n", api_namespace, kubeconfig=crds)
    kubectl("apply", "-f", "-", kubeconfig=crds, input=yaml.safe_dump_all([role, binding]))
    try:
        token = kubectl(
            "create", "token", "orchard", "-n", api_namespace, kubeconfig=crds
        ).stdout.strip()
        config = _token_kubeconfig(crds, token, tmp_path / "kubeconfig")
        # The server's RBAC answers as the declared rules say, no more.
        for verb, resource in PROBES:
            group = resource.partition(".")[2]
            plural = resource.partition(".")[0]
            expected = "yes" if (group, plural, verb) in granted(role) else "no"
            answer = kubectl(
                "auth", "can-i", verb, resource, "-n", api_namespace,
                kubeconfig=config, check=False, timeout=30,
            ).stdout.strip()  # fmt: skip
            assert answer == expected, (verb, resource, answer)
        with operator(config, tmp_path, "--namespace", api_namespace, "--verbose") as op:
            op.wait_alive()
            time.sleep(3)  # let every watch stream start (or be refused)
            assert op.stop() == 0
        text = "\n".join(op.lines())
        refused = [line for line in op.lines() if "forbidden" in line.lower()]
        assert refused == [], refused[:3]
        watches = [line for line in op.lines() if "Starting the watch-stream" in line]
        from orchard.handlers import controller_modules

        if controller_modules():
            assert watches, text[-4000:]
    finally:
        kubectl(
            "delete", "--ignore-not-found", f"clusterrolebinding/{name}", f"clusterrole/{name}",
            kubeconfig=crds, check=False, timeout=60,
        )  # fmt: skip


PROBES = [
    ("watch", "trainingjobs.orchard.dev"),
    ("patch", "modeldeployments.orchard.dev"),
    ("delete", "modelversions.orchard.dev"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "events"),
    ("get", "secrets"),
    ("delete", "namespaces"),
    ("create", "clusterroles.rbac.authorization.k8s.io"),
]


def granted(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, res, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for res in rule["resources"]
        for verb in rule["verbs"]
    }


@API
def test_the_role_has_no_wildcards_and_cannot_escalate() -> None:
    role = yaml.safe_load((REPO / "manifests" / "rbac" / "role.yaml").read_text())
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"], rule
    have = granted(role)
    assert not {(g, r, v) for g, r, v in have if g == "rbac.authorization.k8s.io"}
    assert ("orchard.dev", "modelversions", "delete") not in have


@API
def test_install_manifests_pass_the_restricted_pod_security_standard(
    crds: Path, api_namespace: str
) -> None:
    """manifests/default, as the API server sees it (server-side dry run, strict fields),
    in a namespace that enforces and warns on the restricted Pod Security Standard."""
    kubectl(
        "label",
        "namespace",
        api_namespace,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/warn=restricted",
        kubeconfig=crds,
    )
    rendered = kubectl("kustomize", str(REPO / "manifests" / "default"), kubeconfig=crds).stdout
    docs = []
    for doc in yaml.safe_load_all(rendered):
        if not doc or doc["kind"] in ("Namespace", "CustomResourceDefinition"):
            continue
        meta = doc["metadata"]
        if "namespace" in meta:
            meta["namespace"] = api_namespace
        else:  # cluster-scoped: a private name, so a real install is untouched
            meta["name"] = f"{meta['name']}-{api_namespace}"
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] = f"orchard-{api_namespace}"
            for subject in doc["subjects"]:
                subject["namespace"] = api_namespace
        docs.append(doc)
    assert {d["kind"] for d in docs} >= {"Deployment", "ServiceAccount", "ClusterRole", "Service"}
    proc = kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-",
        kubeconfig=crds, input=yaml.safe_dump_all(docs), check=False, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Warning" not in proc.stderr, proc.stderr
    assert proc.stdout.count("(server dry run)") == len(docs)


@pytest.fixture(scope="module")
def operator_image(kubeconfig_node: Path) -> str:
    """localhost/orchard/operator:dev, built from images/operator and loaded if local."""
    build_images("operator")
    return "localhost/orchard/operator:dev"


@pytest.mark.e2e
def test_operator_image_runs_in_the_cluster_restricted_with_its_role(
    kubeconfig_node: Path, node_namespace: str, operator_image: str
) -> None:
    """The local overlay's Deployment, in a namespace enforcing the restricted Pod Security
    Standard: the pod becomes Ready (liveness and readiness on /healthz), reaches the API
    server from inside, and every watch it starts is allowed by the generated role."""
    kube, ns = kubeconfig_node, node_namespace
    kubectl(
        "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"), kubeconfig=kube
    )
    kubectl(
        "label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted", kubeconfig=kube
    )
    docs = render_install(kube, "overlays/local", ns)
    kubectl("apply", "-f", "-", kubeconfig=kube, input=yaml.safe_dump_all(docs))
    try:
        kubectl(
            "-n",
            ns,
            "rollout",
            "status",
            "deploy/orchard-operator",
            "--timeout=120s",
            kubeconfig=kube,
        )
        deadline = time.monotonic() + 60
        while True:
            logs = kubectl("-n", ns, "logs", "deploy/orchard-operator", kubeconfig=kube).stdout
            started = [line for line in logs.splitlines() if "Starting the watch-stream" in line]
            if any(f"in '{ns}'" in line for line in started) or time.monotonic() > deadline:
                break
            time.sleep(2)
        assert any(f"in '{ns}'" in line for line in started), logs[-4000:]
        time.sleep(3)  # a refused watch is retried and logged within seconds
        logs = kubectl("-n", ns, "logs", "deploy/orchard-operator", kubeconfig=kube).stdout
        assert "forbidden" not in logs.lower(), logs[-4000:]
        pod = json.loads(
            kubectl(
                "-n",
                ns,
                "get",
                "pods",
                "-l",
                "app.kubernetes.io/name=orchard",
                "-o",
                "json",
                kubeconfig=kube,
            ).stdout
        )["items"][0]
        assert pod["spec"]["containers"][0]["image"] == operator_image
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
        assert all(json.loads(line) for line in logs.splitlines() if line.strip())
    finally:
        kubectl(
            "delete", "--ignore-not-found", "--wait=false",
            f"clusterrolebinding/orchard-{ns}", f"clusterrole/orchard-{ns}",
            kubeconfig=kube, check=False, timeout=60,
        )  # fmt: skip


@API
async def test_kube_helpers_against_the_api_server(
    crds: Path, api_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """orchard.kube: get, server-side apply of an owned child, status patch, events,
    and the API server's refusals in orchard.kube's words."""
    from orchard import kube

    monkeypatch.setenv("KUBECONFIG", str(crds))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    await kube.close()
    ns = api_namespace
    try:
        assert await kube.get("orchard.dev/v1alpha1", "TrainingJob", "absent", ns) is None
        kubectl(
            "apply",
            "-n",
            ns,
            "-f",
            str(REPO / "manifests" / "samples" / "trainingjob.yaml"),
            kubeconfig=crds,
        )
        tj = await kube.get("orchard.dev/v1alpha1", "TrainingJob", "iris", ns)
        assert tj is not None and tj["spec"]["model"] == "iris"

        from orchard.builders.common import owner_reference

        owner = owner_reference("TrainingJob", "iris", tj["metadata"]["uid"])
        child = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "iris-spec", "namespace": ns, "ownerReferences": [owner]},
            "data": {"a": "1"},
        }
        made = await kube.apply(child)
        assert made["metadata"]["namespace"] == ns
        assert made["metadata"]["ownerReferences"][0]["uid"] == tj["metadata"]["uid"]
        # Applying again is idempotent; a changed field is brought in step.
        again = await kube.apply({**child, "data": {"a": "2"}})
        assert again["data"] == {"a": "2"}
        assert again["metadata"]["uid"] == made["metadata"]["uid"]

        with pytest.raises(kube.Conflict):
            await kube.create({**child, "metadata": {"name": "iris-spec", "namespace": ns}})
        with pytest.raises(kube.Invalid):
            await kube.patch_status("TrainingJob", "iris", ns, {"phase": "Exploded"})
        with pytest.raises(kube.KindNotServed):
            await kube.get("gateway.networking.k8s.io/v1beta1", "ReferenceGrant", "x", ns)
        assert (
            await kube.list_objects("gateway.networking.k8s.io/v1beta1", "ReferenceGrant", ns) == []
        )

        out = await kube.patch_status("TrainingJob", "iris", ns, {"phase": "Running"})
        assert out["status"]["phase"] == "Running"
        assert out["metadata"]["generation"] == tj["metadata"]["generation"]

        await kube.post_event(tj, "Started", "training began", type_="Normal")
        events = json.loads(
            kubectl(
                "get",
                "events",
                "-n",
                ns,
                "--field-selector",
                "involvedObject.name=iris,reason=Started",
                "-o",
                "json",
                kubeconfig=crds,
            ).stdout
        )["items"]
        assert [e["message"] for e in events] == ["training began"]
        assert events[0]["involvedObject"]["uid"] == tj["metadata"]["uid"]
    finally:
        await kube.close()
