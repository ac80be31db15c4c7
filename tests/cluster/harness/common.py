"""Where the local cluster lives and what it is made of, and the helpers every part uses."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parents[1]  # tests/cluster: versions.env, build.sh, pause/
STATE = Path(os.environ.get("ORCHARD_CLUSTER_DIR", REPO / ".cluster"))
CACHE = Path(os.environ.get("ORCHARD_CACHE", Path.home() / ".cache" / "orchard"))
# Node state lives outside the checkout: short socket paths, and a place that
# `down` can scrub (mounts, netns) without touching the repository.
VAR = Path("/var/lib/orchard")
RUN = Path("/run/orchard")

KUBECONFIG = STATE / "kubeconfig"
PKI = STATE / "pki"
LOGS = STATE / "logs"
PIDS = STATE / "pids"
IMAGES = STATE / "images"
CONFIG = STATE / "config"
# The API server's audit log: every write to an orchard.dev object, with its body, so
# tests can show who changed what (the operator never writes a spec).
AUDIT_LOG = LOGS / "audit.log"

BRIDGE = "orchard0"
NODE_NAME = "orchard-node"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"
# The cluster's DNS (CoreDNS, a host process) answers on the bridge address, UDP and TCP;
# kubelet gives pods this one nameserver and no other.
DNS_IP = NODE_IP
DNS_PORT = 53
API_PORT = 6443
ETCD_CLIENT = "http://127.0.0.1:12379"
ETCD_PEER = "http://127.0.0.1:12380"
CONTAINERD_SOCK = RUN / "containerd" / "containerd.sock"
KUBELET_ROOT = VAR / "kubelet"
POD_LOGS = VAR / "pod-logs"
# One cluster's, removed by `down` (containerd's image store under VAR is kept), and
# OWNER says whose: `up` removes another cluster's first (lifecycle.claim_node_state).
NODE_STATE = (VAR / "etcd", KUBELET_ROOT, POD_LOGS)
OWNER = VAR / "owner"
CNI_BIN = Path("/usr/lib/cni")
CNI_NET = "orchard-pods"
HOSTPATH_PV = Path("/tmp/hostpath_pv")  # fixed by the in-tree host-path provisioner
PAUSE_IMAGE = "localhost/orchard/pause:3.10"
IMAGE_PREFIX = "localhost/orchard"
ISOLATE_CHAIN = "ORCHARD-ISOLATE"
ISOLATE_INPUT_CHAIN = "ORCHARD-ISOLATE-INPUT"
OUR_CHAIN_PREFIXES = ("KUBE-", "CNI-", "ORCHARD-")

LEVELS = {
    "api": ["etcd", "kube-apiserver"],
    "node": [
        "etcd",
        "kube-apiserver",
        "containerd",
        "kube-controller-manager",
        "kube-scheduler",
        "kubelet",
        "kube-proxy",
        "coredns",
    ],
}

T0 = time.monotonic()


class HarnessError(Exception):
    """A step failed; the message says what and what to do."""


def say(msg: str) -> None:
    """One progress line with the elapsed time since the command started."""
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def run(cmd: list[str], *, check: bool = True, **kw: Any) -> str:
    """Run a short command and return its stdout; a failure names the command."""
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if check and proc.returncode != 0:
        raise HarnessError(
            f"command failed ({proc.returncode}): {shlex.join(cmd)}\n{proc.stderr.strip()}"
        )
    return str(proc.stdout)


def versions() -> dict[str, str]:
    """The pinned versions from versions.env (shell KEY=value lines)."""
    out: dict[str, str] = {}
    for line in (HERE / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = value.strip('"')
    return out


def build_dir(name: str) -> Path:
    """Where build.sh puts the build `name` (kubernetes, etcd, coredns, argocd): one
    directory per pinned version, finished when its .complete stamp is there."""
    return CACHE / "bin" / f"{name}-{versions()[f'{name.upper()}_VERSION']}"


def bin_dirs() -> dict[str, Path]:
    """The builds the cluster runs (argocd is the GitOps tests' own)."""
    return {name: build_dir(name) for name in ("kubernetes", "etcd", "coredns")}


def built() -> bool:
    """True when every build has finished (its .complete stamp is there)."""
    return all((path / ".complete").exists() for path in bin_dirs().values())


def binary(name: str) -> str:
    dirs = bin_dirs()
    if name in ("etcd", "coredns"):
        return str(dirs[name] / name)
    if name.startswith("kube"):
        return str(dirs["kubernetes"] / name)
    found = shutil.which(name)
    if not found:
        raise HarnessError(f"{name} is not installed; run `make deps`")
    return found


def write_if_changed(path: Path, text: str) -> None:
    """Rewrite a config only when it differs: kube-proxy exits when its file changes."""
    if path.exists() and path.read_text() == text:
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.chmod(0o600)
    os.replace(partial, path)  # readers never see a half-written file
