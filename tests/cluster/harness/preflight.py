"""What this machine must have before anything starts; each lack said in one line."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .common import CNI_BIN, HarnessError, built, say


def preflight(level: str) -> list[str]:
    """Everything missing on this machine, each as one line; empty when all is well."""
    problems: list[str] = []
    if os.geteuid() != 0:
        problems.append("needs root: the cluster creates a bridge, iptables rules and mounts")
    if not built() and not shutil.which("go"):
        problems.append("Go is not installed: it is needed to build Kubernetes, etcd and CoreDNS")
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
