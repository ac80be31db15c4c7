"""The private bridge, the isolation rules that keep pods on this machine, and the
sysctls and iptables chains that `down` restores and removes."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import shlex
import shutil
import subprocess
from pathlib import Path

from .common import (
    BRIDGE,
    ISOLATE_CHAIN,
    ISOLATE_INPUT_CHAIN,
    NODE_IP,
    OUR_CHAIN_PREFIXES,
    POD_CIDR,
    SERVICE_CIDR,
    STATE,
    run,
    say,
)


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
    """Drop every forwarded packet that would cross between the bridge and another link,
    and every packet for the pod network that another link delivers to this host.

    The CNI bridge plugin turns on ip_forward; the FORWARD rules (in mangle, which
    kube-proxy leaves alone) keep pods from reaching or being reached from any other
    network. The INPUT rules keep the servers on the node's address (the API server, the
    kubelet, the cluster's DNS on port 53, NodePorts) from answering anything but this
    host itself (loopback) and its pods (the bridge), whatever another machine routes here.
    """
    ipt = ["iptables", "-w", "-t", "mangle"]
    if subprocess.run([*ipt, "-S", ISOLATE_CHAIN], capture_output=True).returncode != 0:
        run([*ipt, "-N", ISOLATE_CHAIN])
        run([*ipt, "-A", ISOLATE_CHAIN, "-i", BRIDGE, "!", "-o", BRIDGE, "-j", "DROP"])
        run([*ipt, "-A", ISOLATE_CHAIN, "!", "-i", BRIDGE, "-o", BRIDGE, "-j", "DROP"])
    jump = ["FORWARD", "-j", ISOLATE_CHAIN]
    if subprocess.run([*ipt, "-C", *jump], capture_output=True).returncode != 0:
        run([*ipt, "-I", *jump])
    if subprocess.run([*ipt, "-S", ISOLATE_INPUT_CHAIN], capture_output=True).returncode != 0:
        run([*ipt, "-N", ISOLATE_INPUT_CHAIN])
        run([*ipt, "-A", ISOLATE_INPUT_CHAIN, "-i", "lo", "-j", "RETURN"])
        run([*ipt, "-A", ISOLATE_INPUT_CHAIN, "!", "-i", BRIDGE, "-j", "DROP"])
    jump = ["INPUT", "-d", POD_CIDR, "-j", ISOLATE_INPUT_CHAIN]
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
