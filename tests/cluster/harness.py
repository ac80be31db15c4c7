"""A real single-node Kubernetes cluster on this machine, for Orchard's api and e2e tests.

Two levels:
  api   etcd + kube-apiserver: seconds to start; CRDs, watches, status subresources.
  node  adds containerd + runc, CNI bridge, kubelet, kube-controller-manager,
        kube-scheduler and kube-proxy (iptables): real pods, Services and PVCs.

Everything runs as root on a private bridge (orchard0, pods 10.244.0.0/24, services
10.96.0.0/16); forwarding between the bridge and any other interface is dropped, so no
traffic leaves the machine. Every process started is recorded by PID (with its start
time, so a reused PID is never signalled) and stopped by that PID.

    python tests/cluster/harness.py up [--level api|node]
    python tests/cluster/harness.py status | down | images [--no-import]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
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

BRIDGE = "orchard0"
NODE_NAME = "orchard-node"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
API_PORT = 6443
ETCD_CLIENT = "http://127.0.0.1:12379"
ETCD_PEER = "http://127.0.0.1:12380"
CONTAINERD_SOCK = RUN / "containerd" / "containerd.sock"
KUBELET_ROOT = VAR / "kubelet"
POD_LOGS = VAR / "pod-logs"
CNI_BIN = Path("/usr/lib/cni")
CNI_NET = "orchard-pods"
HOSTPATH_PV = Path("/tmp/hostpath_pv")  # fixed by the in-tree host-path provisioner
PAUSE_IMAGE = "localhost/orchard/pause:3.10"
IMAGE_PREFIX = "localhost/orchard"
ISOLATE_CHAIN = "ORCHARD-ISOLATE"
COPIES_WHEELS = re.compile(r"^\s*(COPY|ADD)\b.*\bwheels\b", re.MULTILINE | re.IGNORECASE)
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


def bin_dirs() -> tuple[Path, Path]:
    v = versions()
    return (
        CACHE / "bin" / f"kubernetes-{v['KUBERNETES_VERSION']}",
        CACHE / "bin" / f"etcd-{v['ETCD_VERSION']}",
    )


def binary(name: str) -> str:
    k8s, etcd = bin_dirs()
    if name == "etcd":
        return str(etcd / "etcd")
    if name.startswith("kube"):
        return str(k8s / name)
    found = shutil.which(name)
    if not found:
        raise HarnessError(f"{name} is not installed; run `make deps`")
    return found


# --- preflight --------------------------------------------------------------------------


def preflight(level: str) -> list[str]:
    """Everything missing on this machine, each as one line; empty when all is well."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("needs root: the cluster creates a bridge, iptables rules and mounts")
    k8s, etcd = bin_dirs()
    built = (k8s / ".complete").exists() and (etcd / ".complete").exists()
    if not built and not shutil.which("go"):
        problems.append("Go is not installed: it is needed to build Kubernetes and etcd")
    tools = ["ip", "iptables", "openssl"]
    if level == "node":
        tools += ["containerd", "containerd-shim-runc-v2", "runc", "ctr", "conntrack"]
    missing = [t for t in tools if not shutil.which(t)]
    if level == "node" and not (CNI_BIN / "bridge").exists():
        missing.append("containernetworking-plugins")
    if missing:
        problems.append(f"missing {', '.join(missing)}: run `make deps`")
    if level == "node":
        filesystems = Path("/proc/filesystems").read_text()
        if "overlay" not in filesystems:
            problems.append("kernel without overlayfs: containerd's snapshotter needs it")
        if not Path("/proc/sys/net/bridge/bridge-nf-call-iptables").exists():
            problems.append("br_netfilter is not loaded: run `modprobe br_netfilter`")
        v1 = all(Path("/sys/fs/cgroup", c).is_dir() for c in ("cpu", "memory", "pids"))
        v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
        if not (v1 or v2):
            problems.append("no usable cgroup hierarchy (cpu, memory, pids) under /sys/fs/cgroup")
    return problems


def check_preflight(level: str) -> None:
    problems = preflight(level)
    if problems:
        raise HarnessError("preflight: " + "; ".join(problems))
    say(f"preflight ok (root, cgroup {cgroup_mode()}, level {level})")


def cgroup_mode() -> str:
    return "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"


# --- processes --------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    pid: int
    start: str
    log: str

    @property
    def pidfile(self) -> Path:
        return PIDS / f"{self.name}.json"

    def alive(self) -> bool:
        return proc_start_time(self.pid) == self.start


def proc_start_time(pid: int) -> str | None:
    """The kernel's start time of a PID, which tells a reused PID from ours."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return fields[19]


def recorded(name: str) -> Proc | None:
    path = PIDS / f"{name}.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return Proc(**data)


def running(name: str) -> bool:
    proc = recorded(name)
    return proc is not None and proc.alive()


def spawn(name: str, cmd: list[str], env: dict[str, str] | None = None) -> Proc:
    """Start a daemon in its own session, log to .cluster/logs, record its PID."""
    LOGS.mkdir(parents=True, exist_ok=True)
    PIDS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"{name}.log"
    with log.open("ab") as out:
        out.write(f"\n--- {datetime.datetime.now():%F %T} {shlex.join(cmd)}\n".encode())
        out.flush()
        popen = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
    start = None
    for _ in range(50):
        start = proc_start_time(popen.pid)
        if start:
            break
        time.sleep(0.01)
    if start is None:
        raise HarnessError(f"{name} exited at once; log: {log}\n{tail(log)}")
    proc = Proc(name=name, pid=popen.pid, start=start, log=str(log))
    proc.pidfile.write_text(json.dumps(proc.__dict__))
    say(f"{name}: started, pid {popen.pid}, log {rel(log)}")
    return proc


def stop(name: str, timeout: float = 15.0) -> None:
    """SIGTERM the recorded PID, then SIGKILL after the timeout."""
    proc = recorded(name)
    if proc is None:
        return
    if proc.alive():
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while proc.alive() and time.monotonic() < deadline:
            reap(proc.pid)
            time.sleep(0.1)
        if proc.alive():
            say(f"{name}: did not stop in {timeout:.0f}s, killing pid {proc.pid}")
            os.kill(proc.pid, signal.SIGKILL)
            while proc.alive():
                reap(proc.pid)
                time.sleep(0.05)
        say(f"{name}: stopped (pid {proc.pid})")
    proc.pidfile.unlink(missing_ok=True)


def reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def tail(path: Path | str, lines: int = 25) -> str:
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])


def rel(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(REPO))
    return str(path)


def wait_for(name: str, check: Callable[[], bool], timeout: float, what: str = "ready") -> None:
    """Poll until check() is true; on timeout or process death, show its log."""
    start = time.monotonic()
    deadline = start + timeout
    while time.monotonic() < deadline:
        proc = recorded(name)
        if proc is not None and not proc.alive():
            raise HarnessError(
                f"{name} exited; last lines of {proc.log}:\n{tail(proc.log)}\n"
                f"fix the cause, then run `make cluster-down cluster-up`"
            )
        with contextlib.suppress(Exception):
            if check():
                say(f"{name}: {what} after {time.monotonic() - start:.1f}s")
                return
        time.sleep(0.25)
    proc = recorded(name)
    log = proc.log if proc else str(LOGS / f"{name}.log")
    raise HarnessError(f"{name} not {what} after {timeout:.0f}s; last lines of {log}:\n{tail(log)}")


# --- PKI and kubeconfigs ----------------------------------------------------------------


def ensure_pki() -> None:
    """A cluster CA and every certificate the components need (openssl, 1 year)."""
    PKI.mkdir(parents=True, exist_ok=True)
    if (PKI / ".complete").exists():
        return
    say("pki: generating CA, serving and client certificates")
    ossl = ["openssl"]
    run([*ossl, "genrsa", "-out", str(PKI / "ca.key"), "2048"])
    run(
        [
            *ossl,
            "req",
            "-x509",
            "-new",
            "-nodes",
            "-key",
            str(PKI / "ca.key"),
            "-sha256",
            "-days",
            "3650",
            "-subj",
            "/CN=orchard-local-ca",
            "-out",
            str(PKI / "ca.crt"),
        ]
    )
    run([*ossl, "genrsa", "-out", str(PKI / "sa.key"), "2048"])
    run([*ossl, "rsa", "-in", str(PKI / "sa.key"), "-pubout", "-out", str(PKI / "sa.pub")])
    api_sans = [
        f"IP:{NODE_IP}",
        "IP:127.0.0.1",
        f"IP:{KUBERNETES_SERVICE_IP}",
        "DNS:localhost",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
    ]
    certs: list[tuple[str, str, list[str], str]] = [
        ("apiserver", "/CN=kube-apiserver", api_sans, "serverAuth"),
        ("kubelet", f"/CN={NODE_NAME}", [f"IP:{NODE_IP}", f"DNS:{NODE_NAME}"], "serverAuth"),
        ("admin", "/O=system:masters/CN=orchard-admin", [], "clientAuth"),
        (
            "apiserver-kubelet-client",
            "/O=system:masters/CN=kube-apiserver-kubelet-client",
            [],
            "clientAuth",
        ),
        ("controller-manager", "/CN=system:kube-controller-manager", [], "clientAuth"),
        ("scheduler", "/CN=system:kube-scheduler", [], "clientAuth"),
        ("kubelet-client", f"/O=system:nodes/CN=system:node:{NODE_NAME}", [], "clientAuth"),
        ("kube-proxy", "/CN=system:kube-proxy", [], "clientAuth"),
    ]
    for name, subj, sans, usage in certs:
        key, csr, crt = (PKI / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        run([*ossl, "genrsa", "-out", str(key), "2048"])
        run([*ossl, "req", "-new", "-key", str(key), "-subj", subj, "-out", str(csr)])
        ext = PKI / f"{name}.ext"
        lines = [
            "basicConstraints=CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            f"extendedKeyUsage={usage}",
        ]
        if sans:
            lines.append("subjectAltName=" + ",".join(sans))
        ext.write_text("\n".join(lines) + "\n")
        run(
            [
                *ossl,
                "x509",
                "-req",
                "-in",
                str(csr),
                "-CA",
                str(PKI / "ca.crt"),
                "-CAkey",
                str(PKI / "ca.key"),
                "-CAcreateserial",
                "-days",
                "365",
                "-sha256",
                "-extfile",
                str(ext),
                "-out",
                str(crt),
            ]
        )
        csr.unlink()
        ext.unlink()
    for key in PKI.glob("*.key"):
        key.chmod(0o600)
    (PKI / ".complete").touch()


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(path: Path, user: str, cert: str) -> None:
    """A kubeconfig with embedded certificates, so it works when copied elsewhere."""
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "orchard-local",
                "cluster": {
                    "server": f"https://{NODE_IP}:{API_PORT}",
                    "certificate-authority-data": b64(PKI / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(PKI / f"{cert}.crt"),
                    "client-key-data": b64(PKI / f"{cert}.key"),
                },
            }
        ],
        "contexts": [
            {"name": "orchard-local", "context": {"cluster": "orchard-local", "user": user}}
        ],
        "current-context": "orchard-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_if_changed(path, yaml.safe_dump(doc, sort_keys=False))


def api_request(method: str, path: str, body: Any = None, timeout: float = 5.0) -> Any:
    """One request to the API server as the admin; returns the decoded JSON."""
    ctx = ssl.create_default_context(cafile=str(PKI / "ca.crt"))
    ctx.load_cert_chain(str(PKI / "admin.crt"), str(PKI / "admin.key"))
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        f"https://{NODE_IP}:{API_PORT}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
        raw = resp.read()
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode()


def https_ok(url: str) -> bool:
    """True when a component's local health endpoint answers 200 (self-signed TLS)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with urllib.request.urlopen(
        url, context=ctx if url.startswith("https") else None, timeout=2
    ) as resp:
        return bool(resp.status == 200)


# --- network ----------------------------------------------------------------------------


def sysctl_path(key: str) -> Path:
    return Path("/proc/sys") / key.replace(".", "/")


def set_sysctl(key: str, value: str) -> None:
    """Set a sysctl, remembering the first value seen so `down` can restore it."""
    saved = STATE / "sysctl.json"
    before = json.loads(saved.read_text()) if saved.exists() else {}
    path = sysctl_path(key)
    if key not in before:
        before[key] = path.read_text().strip()
        saved.write_text(json.dumps(before))
    path.write_text(value)


def restore_sysctls() -> None:
    saved = STATE / "sysctl.json"
    if not saved.exists():
        return
    for key, value in json.loads(saved.read_text()).items():
        with contextlib.suppress(OSError):
            sysctl_path(key).write_text(value)
    saved.unlink()


def ensure_network() -> None:
    """The bridge the API server binds to and pods attach to, plus isolation rules."""
    links = run(["ip", "-o", "link", "show"])
    if f": {BRIDGE}:" not in links:
        run(["ip", "link", "add", BRIDGE, "type", "bridge"])
        say(f"network: bridge {BRIDGE} created")
    addrs = run(["ip", "-o", "-4", "addr", "show", "dev", BRIDGE])
    if f"{NODE_IP}/" not in addrs:
        prefix = ipaddress.ip_network(POD_CIDR).prefixlen
        run(["ip", "addr", "add", f"{NODE_IP}/{prefix}", "dev", BRIDGE])
    run(["ip", "link", "set", BRIDGE, "up"])
    # Service IPs route to the bridge, never to the default gateway.
    run(["ip", "route", "replace", SERVICE_CIDR, "dev", BRIDGE, "src", NODE_IP])
    ensure_isolation()


def ensure_isolation() -> None:
    """Drop every forwarded packet that would cross between the bridge and another link.

    The CNI bridge plugin turns on ip_forward; these rules (in mangle, which kube-proxy
    leaves alone) keep pods from reaching or being reached from any other network.
    """
    ipt = ["iptables", "-w", "-t", "mangle"]
    if subprocess.run([*ipt, "-S", ISOLATE_CHAIN], capture_output=True).returncode != 0:
        run([*ipt, "-N", ISOLATE_CHAIN])
        run([*ipt, "-A", ISOLATE_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"])
        run([*ipt, "-A", ISOLATE_CHAIN, "!", "-i", BRIDGE, "-o", BRIDGE, "-j", "DROP"])
    jump = ["FORWARD", "-j", ISOLATE_CHAIN]
    if subprocess.run([*ipt, "-C", *jump], capture_output=True).returncode != 0:
        run([*ipt, "-I", *jump])


def remove_iptables_chains() -> int:
    """Delete every KUBE-*, CNI-* and ORCHARD-* chain and the rules that jump to them."""
    removed = 0
    for tool in ("iptables", "ip6tables"):
        if not shutil.which(tool):
            continue
        for table in ("filter", "nat", "mangle", "raw"):
            base = [tool, "-w", "-t", table]
            listing = subprocess.run([*base, "-S"], capture_output=True, text=True)
            if listing.returncode != 0:
                continue
            ours: list[str] = []
            jumps: list[list[str]] = []
            for line in listing.stdout.splitlines():
                parts = shlex.split(line)
                if parts[:1] == ["-N"] and parts[1].startswith(OUR_CHAIN_PREFIXES):
                    ours.append(parts[1])
                elif parts[:1] == ["-A"] and not parts[1].startswith(OUR_CHAIN_PREFIXES):
                    target = parts[parts.index("-j") + 1] if "-j" in parts else ""
                    if target.startswith(OUR_CHAIN_PREFIXES):
                        jumps.append(parts[1:])
            for rule in jumps:
                subprocess.run([*base, "-D", *rule], capture_output=True)
            for chain in ours:
                subprocess.run([*base, "-F", chain], capture_output=True)
            for chain in ours:
                if subprocess.run([*base, "-X", chain], capture_output=True).returncode == 0:
                    removed += 1
    return removed


# --- component configuration -------------------------------------------------------------


def etcd_cmd() -> list[str]:
    return [
        binary("etcd"),
        "--name=orchard",
        f"--data-dir={VAR / 'etcd'}",
        f"--listen-client-urls={ETCD_CLIENT}",
        f"--advertise-client-urls={ETCD_CLIENT}",
        f"--listen-peer-urls={ETCD_PEER}",
        f"--initial-advertise-peer-urls={ETCD_PEER}",
        f"--initial-cluster=orchard={ETCD_PEER}",
        "--unsafe-no-fsync",  # test data only: no fsync keeps etcd fast on a shared disk
        "--log-level=warn",
    ]


def apiserver_cmd() -> list[str]:
    return [
        binary("kube-apiserver"),
        f"--advertise-address={NODE_IP}",
        f"--bind-address={NODE_IP}",
        f"--secure-port={API_PORT}",
        f"--etcd-servers={ETCD_CLIENT}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--tls-cert-file={PKI / 'apiserver.crt'}",
        f"--tls-private-key-file={PKI / 'apiserver.key'}",
        f"--client-ca-file={PKI / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={PKI / 'sa.pub'}",
        f"--service-account-signing-key-file={PKI / 'sa.key'}",
        f"--kubelet-client-certificate={PKI / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={PKI / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={PKI / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--allow-privileged=true",
        "--profiling=false",
        f"--cert-dir={PKI}",
        "--v=1",
    ]


def controller_manager_cmd() -> list[str]:
    kc = str(CONFIG / "controller-manager.kubeconfig")
    return [
        binary("kube-controller-manager"),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        "--secure-port=10257",
        "--leader-elect=false",
        "--use-service-account-credentials=true",
        f"--root-ca-file={PKI / 'ca.crt'}",
        f"--service-account-private-key-file={PKI / 'sa.key'}",
        f"--cluster-signing-cert-file={PKI / 'ca.crt'}",
        f"--cluster-signing-key-file={PKI / 'ca.key'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        f"--cluster-cidr={POD_CIDR}",
        "--allocate-node-cidrs=false",
        # In-tree dynamic provisioner for single-node clusters: PVCs of the default
        # StorageClass get a directory under /tmp/hostpath_pv, with no extra image.
        "--enable-hostpath-provisioner=true",
        "--profiling=false",
        "--v=1",
    ]


def scheduler_cmd() -> list[str]:
    kc = str(CONFIG / "scheduler.kubeconfig")
    return [
        binary("kube-scheduler"),
        f"--kubeconfig={kc}",
        f"--authentication-kubeconfig={kc}",
        f"--authorization-kubeconfig={kc}",
        "--bind-address=127.0.0.1",
        "--secure-port=10259",
        "--leader-elect=false",
        "--profiling=false",
        "--v=1",
    ]


def restricted_oom_score() -> bool:
    """True when this process cannot lower its OOM score (no CAP_SYS_RESOURCE)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return not (int(line.split()[1], 16) >> 24) & 1
    return False


def containerd_config() -> str:
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    return f"""# Written by tests/cluster/harness.py: containerd for the local cluster only.
version = 2
root = "{VAR / "containerd"}"
state = "{RUN / "containerd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{CONTAINERD_SOCK}"

[plugins."io.containerd.internal.v1.opt"]
  path = "{VAR / "containerd-opt"}"

{cri}
  sandbox_image = "{PAUSE_IMAGE}"
  netns_mounts_under_state_dir = true
  # Lowering oom_score_adj needs CAP_SYS_RESOURCE, which this machine's root lacks;
  # clamp it to containerd's own score instead of failing every sandbox.
  restrict_oom_score_adj = {"true" if restricted_oom_score() else "false"}
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{RUN / "runc"}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN}"
    conf_dir = "{RUN / "cni" / "net.d"}"
"""


def cni_config() -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": CNI_NET,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(RUN / "cni" / "networks"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


def kubelet_config() -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": 10248,
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(PKI / "ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(PKI / "kubelet.crt"),
        "tlsPrivateKeyFile": str(PKI / "kubelet.key"),
        "containerRuntimeEndpoint": f"unix://{CONTAINERD_SOCK}",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "podLogsDir": str(POD_LOGS),
        "clusterDomain": "cluster.local",
        # No host resolver for pods: their DNS queries would leave the machine.
        "resolvConf": "",
        "serializeImagePulls": False,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 95,
        "syncFrequency": "10s",
        "fileCheckFrequency": "10s",
    }


def kube_proxy_config() -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": str(CONFIG / "kube-proxy.kubeconfig")},
        "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": "127.0.0.1:10256",
        "metricsBindAddress": "127.0.0.1:10249",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "iptables": {"localhostNodePorts": False, "minSyncPeriod": "1s", "syncPeriod": "30s"},
        # Leave the host's conntrack sysctls as they are.
        "conntrack": {"maxPerCore": 0, "min": 0},
    }


BOOTSTRAP = """
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
"""


def write_if_changed(path: Path, text: str) -> None:
    """Rewrite a config only when it differs: kube-proxy exits when its file changes."""
    if path.exists() and path.read_text() == text:
        return
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.chmod(0o600)
    os.replace(partial, path)  # readers never see a half-written file


def write_node_configs() -> None:
    CONFIG.mkdir(parents=True, exist_ok=True)
    for name, cert in [
        ("controller-manager", "controller-manager"),
        ("scheduler", "scheduler"),
        ("kubelet", "kubelet-client"),
        ("kube-proxy", "kube-proxy"),
    ]:
        user = f"system:node:{NODE_NAME}" if name == "kubelet" else name
        write_kubeconfig(CONFIG / f"{name}.kubeconfig", user, cert)
    write_if_changed(CONFIG / "containerd.toml", containerd_config())
    write_if_changed(CONFIG / "kubelet.yaml", yaml.safe_dump(kubelet_config()))
    write_if_changed(CONFIG / "kube-proxy.yaml", yaml.safe_dump(kube_proxy_config()))
    net = RUN / "cni" / "net.d"
    net.mkdir(parents=True, exist_ok=True)
    write_if_changed(net / "10-orchard.conflist", json.dumps(cni_config(), indent=2))


# --- images -------------------------------------------------------------------------------


def ctr(*args: str, check: bool = True) -> str:
    return run(["ctr", "--address", str(CONTAINERD_SOCK), "-n", "k8s.io", *args], check=check)


def containerd_images() -> set[str]:
    out = ctr("images", "ls", "-q")
    return set(out.split())


def pause_archive() -> Path:
    """The pause image as a docker archive, built once per version of pause.c."""
    source = HERE / "pause" / "pause.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    archive = CACHE / "images" / f"pause-{digest}.tar"
    if archive.exists():
        return archive
    say("pause: compiling the sandbox program and building its image")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "pause"
        run(["gcc", "-static", "-Os", "-o", str(exe), str(source)])
        run(["strip", str(exe)], check=False)
        container = run(["buildah", "from", "scratch"]).strip()
        try:
            run(["buildah", "copy", "--chmod", "0755", container, str(exe), "/pause"])
            run(
                [
                    "buildah",
                    "config",
                    "--entrypoint",
                    '["/pause"]',
                    "--user",
                    "65535:65535",
                    container,
                ]
            )
            run(["buildah", "commit", "--rm", container, PAUSE_IMAGE])
        except HarnessError:
            run(["buildah", "rm", container], check=False)
            raise
    push_archive(PAUSE_IMAGE, archive)
    return archive


def push_archive(image: str, archive: Path) -> None:
    """Export a buildah image as a docker archive that keeps its full name."""
    partial = archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    run(["buildah", "push", "--quiet", image, f"docker-archive:{partial}:{image}"])
    partial.rename(archive)


def import_archive(image: str, archive: Path) -> bool:
    """Import an archive into containerd's k8s.io namespace unless already there."""
    stamp_dir = VAR / "containerd" / "orchard-imported"
    stamp = stamp_dir / hashlib.sha256(image.encode()).hexdigest()[:16]
    mark = f"{image} {archive.stat().st_mtime_ns} {archive.stat().st_size}"
    if stamp.exists() and stamp.read_text() == mark and image in containerd_images():
        return False
    start = time.monotonic()
    ctr("images", "import", "--no-unpack", str(archive))
    if image not in containerd_images():
        raise HarnessError(f"import of {archive} did not yield {image}; got {containerd_images()}")
    stamp_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(mark)
    say(f"images: {image} imported into containerd in {time.monotonic() - start:.1f}s")
    return True


def import_built_images() -> None:
    for archive in sorted(IMAGES.glob("*.tar")):
        import_archive(f"{IMAGE_PREFIX}/{archive.stem}:dev", archive)


def base_image() -> str:
    """The base image from images/base (mmdebstrap), tagged by a hash of its recipe."""
    recipe = REPO / "images" / "base" / "rootfs.sh"
    digest = hashlib.sha256(recipe.read_bytes()).hexdigest()[:12]
    tag = f"{IMAGE_PREFIX}/base:{digest}"
    if (
        subprocess.run(
            ["buildah", "inspect", "--type", "image", tag], capture_output=True
        ).returncode
        == 0
    ):
        say(f"base: {tag} (cached)")
        return tag
    say(f"base: building {tag} with mmdebstrap (about 30 s)")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        log = LOGS / "base-image.log"
        LOGS.mkdir(parents=True, exist_ok=True)
        with log.open("w") as out:
            rc = subprocess.run(
                ["sh", str(recipe), str(rootfs)], stdout=out, stderr=subprocess.STDOUT
            ).returncode
        if rc != 0:
            raise HarnessError(f"base image recipe failed; last lines of {log}:\n{tail(log)}")
        container = run(["buildah", "from", "scratch"]).strip()
        try:
            run(["buildah", "add", container, str(rootfs), "/"])
            run(
                [
                    "buildah",
                    "config",
                    "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env",
                    "LANG=C.UTF-8",
                    "--cmd",
                    "/bin/sh",
                    "--workingdir",
                    "/",
                    container,
                ]
            )
            run(["buildah", "commit", "--rm", container, tag])
        except HarnessError:
            run(["buildah", "rm", container], check=False)
            raise
    run(["buildah", "tag", tag, f"{IMAGE_PREFIX}/base:dev"])
    say(f"base: built {tag} in {time.monotonic() - start:.1f}s")
    return tag


def source_digest() -> str:
    """A hash of everything that goes into the project's wheel."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes())
    for path in sorted((REPO / "operator").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def build_wheels() -> Path:
    """build/wheels: the project's wheel and every dependency of all its extras.

    Dependencies are fetched once per version of pyproject.toml and the project's wheel
    is rebuilt only when its sources change, so an unchanged tree keeps buildah's layer
    cache valid. Images install from here, offline.
    """
    wheels = REPO / "build" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    deps_stamp = (
        wheels / f".deps-{hashlib.sha256((REPO / 'pyproject.toml').read_bytes()).hexdigest()[:12]}"
    )
    project_stamp = wheels / f".project-{source_digest()}"
    start = time.monotonic()
    log = LOGS / "wheels.log"
    LOGS.mkdir(parents=True, exist_ok=True)

    def pip_wheel(*args: str) -> None:
        with log.open("a") as out:
            rc = subprocess.run(
                [*pip, "wheel", "-q", "--wheel-dir", str(wheels), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            ).returncode
        if rc != 0:
            raise HarnessError(f"pip wheel failed; last lines of {log}:\n{tail(log)}")

    if not deps_stamp.exists():
        say(f"wheels: fetching dependency wheels into {rel(wheels)} (log {rel(log)})")
        pip_wheel(f"{REPO}[operator,train,serve]")
        for old in wheels.glob(".deps-*"):
            old.unlink()
        deps_stamp.touch()
    if not (project_stamp.exists() and any(wheels.glob("orchard-*.whl"))):
        for old in [*wheels.glob("orchard-*.whl"), *wheels.glob(".project-*")]:
            old.unlink()
        pip_wheel("--no-deps", str(REPO))
        project_stamp.touch()
        shutil.rmtree(REPO / "build" / "lib", ignore_errors=True)
        shutil.rmtree(REPO / "build" / "bdist.linux-x86_64", ignore_errors=True)
    count = len(list(wheels.glob("*.whl")))
    say(f"wheels: {count} wheels ready in {time.monotonic() - start:.1f}s")
    return wheels


def context_digest(context: Path, base: str) -> str:
    """A hash of a build's inputs: the base tag and every file of its context.

    buildah 1.28 does not reuse the layers of a multi-stage build's first stage, so an
    unchanged build is skipped here instead. Wheels are immutable once written, so
    they count by name, size and mtime; other files by content.
    """
    digest = hashlib.sha256(base.encode())
    for path in sorted(context.rglob("*")):
        if not path.is_file():
            continue
        digest.update(str(path.relative_to(context)).encode())
        if path.suffix == ".whl":
            stat = path.stat()
            digest.update(f"{stat.st_size} {stat.st_mtime_ns}".encode())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def build_images(names: list[str] | None, do_import: bool) -> list[str]:
    """Build images/<name>/Dockerfile (all but base) as localhost/orchard/<name>:dev.

    The build context is a copy of images/<name>/ with the project's wheels added as
    wheels/, so a Dockerfile can `COPY wheels /wheels` and install with no network.
    """
    dockerfiles = sorted((REPO / "images").glob("*/Dockerfile"))
    selected = [
        d for d in dockerfiles if d.parent.name != "base" and (not names or d.parent.name in names)
    ]
    if not selected:
        raise HarnessError("no images/*/Dockerfile to build")
    for tool in ("buildah", "mmdebstrap"):
        if not shutil.which(tool):
            raise HarnessError(f"{tool} is not installed; run `make deps`")
    base = base_image()
    needs_wheels = any(COPIES_WHEELS.search(d.read_text()) for d in selected)
    wheels = build_wheels() if needs_wheels else None
    IMAGES.mkdir(parents=True, exist_ok=True)
    built: list[str] = []
    for dockerfile in selected:
        name = dockerfile.parent.name
        tag = f"{IMAGE_PREFIX}/{name}:dev"
        context = REPO / "build" / "images" / name
        shutil.rmtree(context, ignore_errors=True)
        shutil.copytree(dockerfile.parent, context)
        if wheels is not None:
            shutil.copytree(
                wheels,
                context / "wheels",
                copy_function=os.link,
                ignore=shutil.ignore_patterns(".*"),
            )
        inputs = context_digest(context, base)
        archive, inputs_file = IMAGES / f"{name}.tar", IMAGES / f"{name}.inputs"
        if (
            archive.exists()
            and inputs_file.exists()
            and inputs_file.read_text() == inputs
            and subprocess.run(
                ["buildah", "inspect", "--type", "image", tag], capture_output=True
            ).returncode
            == 0
        ):
            say(f"images: {tag} is up to date")
            built.append(tag)
            continue
        inputs_file.unlink(missing_ok=True)
        log = LOGS / f"image-{name}.log"
        say(f"images: building {tag} (log {rel(log)})")
        start = time.monotonic()
        with log.open("w") as out:
            rc = subprocess.run(
                [
                    "buildah",
                    "bud",
                    "--layers",
                    "--network",
                    "none",
                    "--build-arg",
                    f"BASE_IMAGE={base}",
                    "-t",
                    tag,
                    "-f",
                    str(context / "Dockerfile"),
                    str(context),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            ).returncode
        if rc != 0:
            raise HarnessError(f"building {tag} failed; last lines of {log}:\n{tail(log)}")
        image_id = run(
            ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", tag]
        ).strip()
        id_file = IMAGES / f"{name}.id"
        if not (archive.exists() and id_file.exists() and id_file.read_text() == image_id):
            push_archive(tag, archive)
            id_file.write_text(image_id)
        inputs_file.write_text(inputs)
        say(f"images: built {tag} in {time.monotonic() - start:.1f}s")
        built.append(tag)
    if do_import and running("containerd"):
        import_built_images()
    elif do_import:
        say("images: containerd is not running; `make cluster-up` imports them")
    return built


# --- up / down ------------------------------------------------------------------------------


def ensure_binaries() -> None:
    """Build etcd and the Kubernetes components unless the cache has them (build.sh)."""
    k8s, etcd = bin_dirs()
    if not ((k8s / ".complete").exists() and (etcd / ".complete").exists()):
        say(f"build: binaries missing in {CACHE / 'bin'}; building (log {rel(LOGS / 'build.log')})")
        LOGS.mkdir(parents=True, exist_ok=True)
        with (LOGS / "build.log").open("a") as out:
            build = subprocess.Popen(
                ["bash", str(HERE / "build.sh")],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            assert build.stdout is not None
            for line in build.stdout:
                out.write(line)
                if line.startswith("build: "):  # progress lines; go's own output stays in the log
                    say(line.strip())
            rc = build.wait()
        if rc != 0:
            raise HarnessError(f"build failed; last lines:\n{tail(LOGS / 'build.log')}")
        say("build: done")


def up(level: str) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    ensure_binaries()
    ensure_pki()
    write_kubeconfig(KUBECONFIG, "orchard-admin", "admin")
    ensure_network()

    if not running("etcd"):
        (VAR / "etcd").mkdir(parents=True, exist_ok=True)
        (VAR / "etcd").chmod(0o700)
        spawn("etcd", etcd_cmd())
        wait_for("etcd", lambda: https_ok(f"{ETCD_CLIENT}/health"), 30, "healthy")
    if not running("kube-apiserver"):
        spawn("kube-apiserver", apiserver_cmd())
        wait_for("kube-apiserver", lambda: api_request("GET", "/readyz") == "ok", 60)
    if level == "api":
        if not any(running(name) for name in LEVELS["node"][2:]):
            (STATE / "level").write_text("api")
        return

    write_node_configs()
    set_sysctl("net.ipv4.ip_forward", "1")
    set_sysctl("net.bridge.bridge-nf-call-iptables", "1")
    apply_manifest(BOOTSTRAP)
    started: set[str] = set()
    for name, cmd in [
        ("kube-controller-manager", controller_manager_cmd()),
        ("kube-scheduler", scheduler_cmd()),
    ]:
        if not running(name):
            spawn(name, cmd)
            started.add(name)
    if not running("containerd"):
        (RUN / "runc").mkdir(parents=True, exist_ok=True)
        spawn("containerd", ["containerd", "--config", str(CONFIG / "containerd.toml")])
        wait_for("containerd", lambda: bool(ctr("version")), 30, "serving")
    import_archive(PAUSE_IMAGE, pause_archive())
    import_built_images()
    if not running("kubelet"):
        KUBELET_ROOT.mkdir(parents=True, exist_ok=True)
        POD_LOGS.mkdir(parents=True, exist_ok=True)
        spawn(
            "kubelet",
            [
                binary("kubelet"),
                f"--config={CONFIG / 'kubelet.yaml'}",
                f"--kubeconfig={CONFIG / 'kubelet.kubeconfig'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--root-dir={KUBELET_ROOT}",
                "--v=1",
            ],
        )
    if not running("kube-proxy"):
        spawn(
            "kube-proxy", [binary("kube-proxy"), f"--config={CONFIG / 'kube-proxy.yaml'}", "--v=1"]
        )
        started.add("kube-proxy")
    # Health endpoints are waited for only on components started now: a running one is
    # judged by the node's state below, not by a momentary 503.
    health = {
        "kube-controller-manager": "https://127.0.0.1:10257/healthz",
        "kube-scheduler": "https://127.0.0.1:10259/healthz",
        "kube-proxy": "http://127.0.0.1:10256/healthz",
    }
    for name, url in health.items():
        if name in started:
            wait_for(name, partial(https_ok, url), 60, "healthy")
    wait_for("kubelet", node_ready, 120, f"node {NODE_NAME} Ready")
    wait_for(
        "kube-controller-manager", default_service_account, 60, "default ServiceAccount present"
    )
    (STATE / "level").write_text("node")


def node_ready() -> bool:
    node = api_request("GET", f"/api/v1/nodes/{NODE_NAME}")
    conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
    return conditions.get("Ready") == "True" and not node["spec"].get("taints")


def default_service_account() -> bool:
    api_request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
    return True


def apply_manifest(text: str) -> None:
    run(["kubectl", "--kubeconfig", str(KUBECONFIG), "apply", "-f", "-"], input=text)


def stop_containers() -> int:
    """Kill and delete every container in containerd's k8s.io namespace, via its API."""
    tasks = ctr("tasks", "ls", "-q", check=False).split()
    for task in tasks:  # signal all first, so they die in parallel
        ctr("tasks", "kill", "-a", "-s", "SIGKILL", task, check=False)
    for task in tasks:
        ctr("tasks", "delete", "--force", task, check=False)
    containers = ctr("containers", "ls", "-q", check=False).split()
    for container in containers:
        ctr("containers", "delete", container, check=False)
    return len(containers)


def our_mounts() -> list[str]:
    """Mount points under the node's state directories, deepest first."""
    roots = (str(RUN) + "/", str(VAR) + "/", str(HOSTPATH_PV) + "/")
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point.startswith(roots) or point in (str(RUN), str(VAR)):
            points.append(point)
    return sorted(set(points), key=len, reverse=True)


def unmount_all() -> int:
    count = 0
    for _ in range(3):
        points = our_mounts()
        if not points:
            break
        for point in points:
            if subprocess.run(["umount", point], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True)
            count += 1
    left = our_mounts()
    if left:
        raise HarnessError(f"could not unmount: {', '.join(left)}")
    return count


def down() -> None:
    start = time.monotonic()
    if os.geteuid() != 0:
        raise HarnessError("needs root to stop the cluster")
    for name in ("kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager"):
        stop(name)
    if running("containerd"):
        removed = stop_containers()
        if removed:
            say(f"containerd: removed {removed} containers")
    for name in ("containerd", "kube-apiserver", "etcd"):
        stop(name)
    for pidfile in PIDS.glob("*.json") if PIDS.exists() else []:
        proc = recorded(pidfile.stem)
        if proc:
            stop(proc.name)
    mounts = unmount_all()
    if mounts:
        say(f"mounts: removed {mounts}")
    chains = remove_iptables_chains()
    if chains:
        say(f"iptables: removed {chains} chains (KUBE-*, CNI-*, ORCHARD-*)")
    links = run(["ip", "-o", "link", "show"], check=False)
    for line in links.splitlines():
        parts = line.split(": ")
        if len(parts) > 1 and f"master {BRIDGE} " in line:
            run(["ip", "link", "delete", parts[1].split("@")[0]], check=False)
    if f": {BRIDGE}:" in links:
        run(["ip", "link", "delete", BRIDGE])
        say(f"network: bridge {BRIDGE} deleted")
    restore_sysctls()
    remove_pod_cgroups()
    # Fresh state next time; containerd's image store is kept so images need no re-import.
    for path in (VAR / "etcd", KUBELET_ROOT, POD_LOGS, RUN, HOSTPATH_PV):
        shutil.rmtree(path, ignore_errors=True)
    for link in Path("/var/log/containers").glob("*.log"):
        with contextlib.suppress(OSError):
            if str(POD_LOGS) in os.readlink(link):
                link.unlink()
    for result in Path("/var/lib/cni/results").glob(f"{CNI_NET}-*"):
        result.unlink(missing_ok=True)
    (STATE / "level").unlink(missing_ok=True)
    left = leftovers()
    if left:
        raise HarnessError("down left behind: " + "; ".join(left))
    say(f"down in {time.monotonic() - start:.1f}s: no process, mount, chain, bridge or veth left")


def remove_pod_cgroups() -> None:
    """Remove the kubelet's (now empty) kubepods cgroups in every hierarchy."""
    for top in Path("/sys/fs/cgroup").glob("*/kubepods"):
        for path in sorted(top.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def leftovers() -> list[str]:
    """Whatever of the cluster still exists on this machine, one entry per kind."""
    found: list[str] = []
    procs = [p.stem for p in PIDS.glob("*.json")] if PIDS.exists() else []
    procs = [n for n in procs if running(n)]
    sock = str(CONTAINERD_SOCK).encode()
    for proc_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            if sock in (proc_dir / "cmdline").read_bytes():  # shims of our containerd
                procs.append(f"pid {proc_dir.name}")
    if procs:
        found.append("processes " + ", ".join(procs))
    if our_mounts():
        found.append("mounts " + ", ".join(our_mounts()))
    chains = [
        line.split()[0][1:]
        for tool in ("iptables-save", "ip6tables-save")
        if shutil.which(tool)
        for line in run([tool], check=False).splitlines()
        if line.startswith(":") and line[1:].startswith(OUR_CHAIN_PREFIXES)
    ]
    if chains:
        found.append("iptables chains " + ", ".join(sorted(set(chains))))
    links = [
        line.split(": ")[1].split("@")[0]
        for line in run(["ip", "-o", "link", "show"], check=False).splitlines()
        if f": {BRIDGE}:" in line or f"master {BRIDGE} " in line
    ]
    if links:
        found.append("links " + ", ".join(links))
    return found


def memory_kib(pid: int) -> tuple[int, int]:
    """Resident and peak resident memory of a process, in KiB."""
    fields = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = int(value.split()[0])
    return fields.get("VmRSS", 0), fields.get("VmHWM", 0)


def status() -> int:
    """What runs, with memory: the figures `make cluster-status` reports."""
    level = (STATE / "level").read_text() if (STATE / "level").exists() else "none"
    print(f"level: {level}; kubeconfig: {rel(KUBECONFIG)}")
    all_up = True
    total_rss = total_peak = 0
    for name in LEVELS["node"]:
        proc = recorded(name)
        state = "running" if proc and proc.alive() else ("dead" if proc else "stopped")
        if proc and state != "running":
            all_up = False
        detail = ""
        if proc and state == "running":
            rss, peak = memory_kib(proc.pid)
            total_rss, total_peak = total_rss + rss, total_peak + peak
            detail = f"pid {proc.pid:<7} rss {rss // 1024:5} MiB  peak {peak // 1024:5} MiB"
        print(f"  {name:24} {state:8} {detail}")
    print(f"  {'components':33} rss {total_rss // 1024:5} MiB  peak {total_peak // 1024:5} MiB")
    pods = Path("/sys/fs/cgroup/memory/kubepods")
    if (pods / "memory.usage_in_bytes").exists():
        usage = int((pods / "memory.usage_in_bytes").read_text()) // 2**20
        peak = int((pods / "memory.max_usage_in_bytes").read_text()) // 2**20
        print(f"  {'pods (kubepods cgroup)':33} now {usage:5} MiB  peak {peak:5} MiB")
    return 0 if all_up and level != "none" else 1


@contextlib.contextmanager
def locked() -> Iterator[None]:
    """One harness command at a time per state directory (tests may race to start it)."""
    STATE.mkdir(parents=True, exist_ok=True)
    with (STATE / "lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


EXTERNAL_HELP = "do nothing when KUBECONFIG names a cluster other than the local one"


def external_kubeconfig() -> Path | None:
    """The cluster KUBECONFIG names, when it is not this harness's own."""
    named = os.environ.get("KUBECONFIG")
    if not named or Path(named).resolve() == KUBECONFIG.resolve():
        return None
    return Path(named)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="harness", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the cluster (idempotent)")
    p_up.add_argument("--level", choices=sorted(LEVELS), default="node")
    p_up.add_argument("--unless-external", action="store_true", help=EXTERNAL_HELP)
    sub.add_parser("down", help="stop everything and clean up (idempotent)")
    sub.add_parser("status", help="show what runs")
    p_img = sub.add_parser("images", help="build images/*/Dockerfile and load them")
    p_img.add_argument("names", nargs="*", help="only these images/<name> (default: all)")
    p_img.add_argument("--no-import", action="store_true", help="build only")
    p_img.add_argument("--unless-external", action="store_true", help=EXTERNAL_HELP)
    sub.add_parser("preflight", help="check this machine")
    args = parser.parse_args(argv)
    external = external_kubeconfig()
    if getattr(args, "unless_external", False) and external is not None:
        print(f"KUBECONFIG names another cluster ({external}); nothing to do here")
        return 0
    try:
        if args.command == "status":
            return status()
        if args.command == "preflight":
            problems = preflight("node")
            print("preflight: " + ("; ".join(problems) if problems else "ok"))
            return 1 if problems else 0
        if args.command == "up":
            check_preflight(args.level)  # before touching anything, even the lock file
        with locked():
            if args.command == "up":
                up(args.level)
                say(f"cluster up ({args.level} level). Use it with:")
                print(f"    export KUBECONFIG={KUBECONFIG}\n    kubectl get nodes,pods -A")
            elif args.command == "down":
                down()
            elif args.command == "images":
                build_images(args.names, not args.no_import)
    except (HarnessError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
