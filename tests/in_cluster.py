"""The operator as users install it, for the e2e tier: its image, the local overlay's
Deployment and the generated ClusterRole, in a namespace that enforces the restricted
Pod Security Standard, watching only that namespace.

`render_install` moves the overlay into one namespace, so tests never touch a real
install (orchard-system) or each other: namespaced objects go to the test namespace,
cluster-scoped ones get a private name, and the operator is told to watch only it.
`InClusterOperator` applies it, waits for it, can kill its pod the way a node loss does,
and on the way out fails the test if the operator's log shows a refusal of its role or
the API server's audit log shows it writing a spec (`misconduct`).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml
from conftest import LOCAL_AUDIT_LOG, external_kubeconfig, install_crds, kubectl

REPO = Path(__file__).resolve().parents[1]
RESTRICTED = "pod-security.kubernetes.io/enforce=restricted"
SELECTOR = "app.kubernetes.io/name=orchard,app.kubernetes.io/component=operator"
ORCHARD_KINDS = ("modeldeployments", "trainingjobs", "modelversions")


def render_install(kubeconfig: Path, overlay: str, namespace: str) -> list[dict[str, Any]]:
    """An install of `overlay` moved into `namespace`, watching only it, with private
    names for the cluster-scoped objects (so a real install and other tests are untouched)."""
    docs = []
    for doc in yaml.safe_load_all(
        kubectl("kustomize", str(REPO / "manifests" / overlay), kubeconfig=kubeconfig).stdout
    ):
        if not doc or doc["kind"] in ("Namespace", "CustomResourceDefinition"):
            continue
        meta = doc["metadata"]
        if "namespace" in meta:
            meta["namespace"] = namespace
        else:
            meta["name"] = f"{meta['name']}-{namespace}"
        if doc["kind"] == "ClusterRoleBinding":
            doc["roleRef"]["name"] = f"orchard-{namespace}"
            for subject in doc["subjects"]:
                subject["namespace"] = namespace
        if doc["kind"] == "Deployment":
            container = doc["spec"]["template"]["spec"]["containers"][0]
            container["args"] = [a for a in container["args"] if a != "--all-namespaces"]
            container["args"].append(f"--namespace={namespace}")
        docs.append(doc)
    return docs


class InClusterOperator:
    """The local overlay's operator, installed into one test namespace."""

    def __init__(self, kubeconfig: Path, namespace: str, logs: Path) -> None:
        self.kubeconfig, self.namespace, self.logs = kubeconfig, namespace, logs
        self.restarts = 0
        self._seen: list[str] = []  # the logs of pods killed on the way

    def _kubectl(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        return kubectl(*args, kubeconfig=self.kubeconfig, input=stdin, timeout=timeout).stdout

    def install(self) -> None:
        install_crds(self.kubeconfig)
        self._kubectl("label", "--overwrite", "namespace", self.namespace, RESTRICTED)
        docs = render_install(self.kubeconfig, "overlays/local", self.namespace)
        self._kubectl("apply", "--server-side", "-f", "-", stdin=yaml.safe_dump_all(docs))
        self.wait_ready()

    def wait_ready(self) -> None:
        """The pod is Ready and its watches have started (it acts from then on)."""
        self._kubectl("-n", self.namespace, "rollout", "status", "deploy/orchard-operator",
                      "--timeout=180s", timeout=200)  # fmt: skip
        deadline = time.monotonic() + 60
        while "Starting the watch-stream" not in self.log() and time.monotonic() < deadline:
            time.sleep(1)

    def log(self) -> str:
        try:
            return self._kubectl("-n", self.namespace, "logs", "deploy/orchard-operator")
        except AssertionError:
            return ""

    def kill(self) -> None:
        """Delete the pod at once, without its grace period, like a node that is lost."""
        self._seen.append(self.log())
        pod = self._kubectl("-n", self.namespace, "get", "pods", "-l", SELECTOR, "-o", "name")
        self._kubectl("-n", self.namespace, "delete", "--grace-period=0", "--force",
                      *pod.split())  # fmt: skip
        self.restarts += 1

    def kill_container(self) -> None:
        """SIGKILL the operator's process through containerd (kill -9 of its container, as
        the kernel's OOM killer or a crash would), then wait until the kubelet has started
        it again in the same pod and its watches run. The local cluster only."""
        from tests.cluster.harness.images import ctr

        self._seen.append(self.log())
        pod = json.loads(self._kubectl("-n", self.namespace, "get", "pods", "-l", SELECTOR,
                                       "-o", "json"))["items"][0]  # fmt: skip
        status = pod["status"]["containerStatuses"][0]
        before = int(status["restartCount"])
        ctr("tasks", "kill", "--signal", "SIGKILL", status["containerID"].split("://", 1)[1])
        self.restarts += 1
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = json.loads(self._kubectl("-n", self.namespace, "get", "pod",
                                           pod["metadata"]["name"], "-o", "json"))  # fmt: skip
            status = now["status"]["containerStatuses"][0]
            if int(status["restartCount"]) > before and status.get("ready"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the operator's container was not restarted: {status}")
        self.wait_ready()

    def stop(self) -> None:
        """Remove the operator as `kubectl delete -k manifests/default` does (its
        Deployment, gracefully: it stops cleanly), keeping its log; the Orchard objects
        and the CRDs stay."""
        self._seen.append(self.log())
        self._kubectl("-n", self.namespace, "delete", "deployment", "orchard-operator",
                      "--wait=true", "--timeout=90s", timeout=120)  # fmt: skip
        deadline = time.monotonic() + 90
        while self._kubectl("-n", self.namespace, "get", "pods", "-l", SELECTOR, "-o", "name"):
            assert time.monotonic() < deadline, "the operator's pod did not go"
            time.sleep(1)

    def uninstall(self) -> None:
        """Delete Orchard's objects while the operator runs (a ModelVersion's deletion
        guard needs it), keep its log, then remove its cluster-scoped objects."""
        for kind in ORCHARD_KINDS:
            with contextlib.suppress(AssertionError, subprocess.TimeoutExpired):
                self._kubectl("-n", self.namespace, "delete", kind, "--all", "--timeout=60s",
                              timeout=90)  # fmt: skip
        self._seen.append(self.log())  # empty once `stop` removed it
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.logs / f"{self.namespace}-operator.log").write_text("\n".join(self._seen))
        with contextlib.suppress(AssertionError):
            self._kubectl("delete", "--ignore-not-found", "--wait=false",
                          f"clusterrolebinding/orchard-{self.namespace}",
                          f"clusterrole/orchard-{self.namespace}")  # fmt: skip

    def misconduct(self) -> list[str]:
        """What the operator must never do: be refused by its role, or write a spec."""
        return self.refusals() + self.spec_writes()

    def spec_writes(self) -> list[str]:
        """The operator's writes of an Orchard object's spec, from the API server's audit
        log (an update of a whole object, a patch that names spec); its own annotations,
        finalizers and status are fine. Another cluster has no audit log this can read."""
        if external_kubeconfig() is not None:
            return []
        if not LOCAL_AUDIT_LOG.exists():
            return [f"no audit log at {LOCAL_AUDIT_LOG}: nothing witnesses the writes"]
        user = f"system:serviceaccount:{self.namespace}:orchard"
        writes = [
            event
            for line in LOCAL_AUDIT_LOG.read_text().splitlines()
            if line.startswith("{")
            for event in [json.loads(line)]
            if event.get("user", {}).get("username") == user
            and event.get("verb") in ("update", "patch")
            and not event.get("objectRef", {}).get("subresource")
        ]
        if not writes:
            return [f"the audit log recorded no write by {user}: nothing was witnessed"]
        return [
            f"{e['verb']} {e['requestURI']}: {json.dumps(e.get('requestObject'))[:300]}"
            for e in writes
            if e["verb"] == "update" or _names_spec(e.get("requestObject"))
        ]

    def refusals(self) -> list[str]:
        """Lines of the operator's log where the API server refused its role."""
        return [line for line in "\n".join(self._seen).splitlines() if "forbidden" in line.lower()]


def _names_spec(patch: Any) -> bool:
    """A merge patch with a spec key, or a JSON patch with an operation under /spec."""
    if isinstance(patch, dict):
        return "spec" in patch
    if isinstance(patch, list):
        return any(str(op.get("path", "")).startswith("/spec") for op in patch)
    return False
