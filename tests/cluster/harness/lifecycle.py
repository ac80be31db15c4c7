"""`up` (the boot sequence, in order), `down` (and the check that it left nothing), `status`."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

from .common import (
    BRIDGE,
    CACHE,
    CLUSTER_DOMAIN,
    CNI_NET,
    CONFIG,
    CONTAINERD_SOCK,
    DNS_IP,
    DNS_PORT,
    ETCD_CLIENT,
    HERE,
    HOSTPATH_PV,
    KUBECONFIG,
    KUBELET_ROOT,
    KUBERNETES_SERVICE_IP,
    LEVELS,
    LOGS,
    NODE_IP,
    NODE_NAME,
    NODE_STATE,
    OUR_CHAIN_PREFIXES,
    OWNER,
    PAUSE_IMAGE,
    PIDS,
    PKI,
    POD_LOGS,
    RUN,
    STATE,
    VAR,
    HarnessError,
    binary,
    built,
    run,
    say,
)
from .components import (
    BOOTSTRAP,
    apiserver_cmd,
    controller_manager_cmd,
    coredns_cmd,
    etcd_cmd,
    scheduler_cmd,
    write_apiserver_configs,
    write_node_configs,
)
from .dns import query
from .images import cri_ready, ctr, import_archive, import_built_images, pause_archive
from .network import ensure_network, remove_iptables_chains, restore_sysctls, set_sysctl
from .pki import api_request, ensure_pki, https_ok, write_kubeconfig
from .processes import recorded, rel, running, spawn, stop, tail, wait_for


def ensure_binaries() -> None:
    """Build etcd, the Kubernetes components and CoreDNS unless the cache has them (build.sh)."""
    if not built():
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
    claimed = claim_node_state()
    write_kubeconfig(KUBECONFIG, "orchard-admin", "admin")
    ensure_network()

    if not running("etcd"):
        (VAR / "etcd").mkdir(parents=True, exist_ok=True)
        (VAR / "etcd").chmod(0o700)
        spawn("etcd", etcd_cmd())
        wait_for("etcd", lambda: https_ok(f"{ETCD_CLIENT}/health"), 30, "healthy")
    if not running("kube-apiserver"):
        write_apiserver_configs()
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
        what, check = health_check("containerd")
        wait_for("containerd", check, 30, what)
        if claimed:  # the earlier cluster's containers are in the store's metadata still
            removed = stop_containers()
            if removed:
                say(f"containerd: removed {removed} containers of the earlier cluster")
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
    if not running("coredns"):
        spawn("coredns", coredns_cmd())
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
    wait_for("coredns", dns_answers, 60, f"answering on {DNS_IP}:{DNS_PORT} (UDP and TCP)")
    wait_for("kubelet", node_ready, 120, f"node {NODE_NAME} Ready")
    wait_for(
        "kube-controller-manager", default_service_account, 60, "default ServiceAccount present"
    )
    (STATE / "level").write_text("node")


def health_check(name: str) -> tuple[str, Callable[[], bool]]:
    """How a component shows that it is up again after `restart`: what, and the check."""
    checks: dict[str, tuple[str, Callable[[], bool]]] = {
        "etcd": ("healthy", partial(https_ok, f"{ETCD_CLIENT}/health")),
        "kube-apiserver": ("ready", lambda: api_request("GET", "/readyz") == "ok"),
        "containerd": ("serving CRI", cri_ready),
        "kube-controller-manager": (
            "healthy",
            partial(https_ok, "https://127.0.0.1:10257/healthz"),
        ),
        "kube-scheduler": ("healthy", partial(https_ok, "https://127.0.0.1:10259/healthz")),
        "kubelet": ("healthy", partial(https_ok, "http://127.0.0.1:10248/healthz")),
        "kube-proxy": ("healthy", partial(https_ok, "http://127.0.0.1:10256/healthz")),
        "coredns": ("answering", dns_answers),
    }
    return checks[name]


def restart(names: list[str]) -> None:
    """Stop the recorded PIDs of `names` (in the reverse of the boot order), start each
    again with the command line it runs with (read from /proc), in boot order, and wait
    until it is healthy; a restarted kubelet also until the node is Ready again."""
    order = LEVELS["node"]
    unknown = [n for n in names if n not in order]
    if unknown:
        raise HarnessError(f"no component {', '.join(unknown)}; one of {', '.join(order)}")
    chosen = [n for n in order if n in names]
    commands: dict[str, list[str]] = {}
    for name in chosen:
        proc = recorded(name)
        if proc is None or not proc.alive():
            raise HarnessError(f"{name} is not running: `up` starts it")
        raw = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        commands[name] = [arg.decode() for arg in raw.split(b"\0") if arg]
    start = time.monotonic()
    for name in reversed(chosen):
        stop(name)
    for name in chosen:
        spawn(name, commands[name])
        what, check = health_check(name)
        wait_for(name, check, 120, what)
        if name == "kubelet":
            wait_for(name, node_ready, 120, f"node {NODE_NAME} Ready")
    say(f"restarted {', '.join(chosen)} in {time.monotonic() - start:.1f}s")


def node_ready() -> bool:
    node = api_request("GET", f"/api/v1/nodes/{NODE_NAME}")
    conditions = {c["type"]: c["status"] for c in node["status"].get("conditions", [])}
    return conditions.get("Ready") == "True" and not node["spec"].get("taints")


def dns_answers() -> bool:
    """The cluster's DNS gives the kubernetes Service's ClusterIP over UDP and TCP (so it
    reads the API server), and refuses a name outside the cluster (so it forwards none)."""
    name = f"kubernetes.default.svc.{CLUSTER_DOMAIN}"
    for tcp in (False, True):
        reply = query(name, DNS_IP, port=DNS_PORT, tcp=tcp, timeout=1)
        if reply.rcode != "NOERROR" or reply.addresses != [KUBERNETES_SERVICE_IP]:
            return False
    return query("example.com", DNS_IP, port=DNS_PORT, timeout=1).rcode == "REFUSED"


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
    for name in ("coredns", "kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager"):
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
    scrub_node_state()
    restore_sysctls()
    (STATE / "level").unlink(missing_ok=True)
    left = leftovers()
    if left:
        raise HarnessError("down left behind: " + "; ".join(left))
    elapsed = time.monotonic() - start
    say(f"down in {elapsed:.1f}s: no process, socket, mount, chain, bridge or veth left")


def scrub_node_state() -> None:
    """Remove what a stopped cluster leaves on the machine: mounts, iptables chains, the
    bridge and its veths, pod cgroups, and its etcd data, pods and sockets (the image
    store is kept, so images need no re-import)."""
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
    remove_pod_cgroups()
    for path in (*NODE_STATE, RUN, HOSTPATH_PV, OWNER):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for link in Path("/var/log/containers").glob("*.log"):
        with contextlib.suppress(OSError):
            if str(POD_LOGS) in os.readlink(link):
                link.unlink()
    for result in Path("/var/lib/cni/results").glob(f"{CNI_NET}-*"):
        result.unlink(missing_ok=True)


def this_cluster() -> str:
    """What names this cluster in OWNER: its state directory and its CA (a new PKI in the
    same directory, after `rm -rf .cluster`, is a new cluster too)."""
    ca = hashlib.sha256((PKI / "ca.crt").read_bytes()).hexdigest()[:16]
    return f"{STATE.resolve()} ca:{ca}\n"


def claim_node_state() -> bool:
    """Make the node state under /var/lib/orchard and /run/orchard this cluster's before
    anything starts on it; True when another cluster's was removed first.

    That state outlives its cluster when the machine restarts under it or a checkout is
    removed with its cluster up: a new cluster that started on it would get the old etcd
    data (namespaces, pods, node taints of tests long gone) and run the old pods next to
    its own."""
    ours = this_cluster()
    owner = OWNER.read_text() if OWNER.exists() else None
    if owner == ours:
        return False
    found = [str(path) for path in NODE_STATE if path.exists()] + leftovers()
    strays = stray_processes() if found else {}
    whose = owner.split()[0] if owner else "an earlier cluster"
    action = node_state_action(
        owner,
        ours,
        mine_running=any(running(name) for name in LEVELS["node"]),
        found=bool(found),
        strays=bool(strays),
        owner_checkout_exists=owner is not None and Path(whose).is_dir(),
    )
    if action == "refuse":
        raise HarnessError(
            f"another local cluster runs, from {whose} (pids {', '.join(map(str, strays))}): "
            f"stop it there with `make cluster-down` first"
        )
    if action == "scrub":
        say(f"node state: {whose} left {'; '.join(found)}; removing it")
        for pid in strays:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        scrub_node_state()
    VAR.mkdir(parents=True, exist_ok=True)
    OWNER.write_text(ours)
    return action == "scrub"


def node_state_action(
    owner: str | None,
    ours: str,
    *,
    mine_running: bool,
    found: bool,
    strays: bool,
    owner_checkout_exists: bool,
) -> str:
    """What `up` does with the node state it finds: "keep" this cluster's; "claim" it when
    there is none, or when this cluster runs on it from before OWNER was written; "scrub"
    another cluster's; "refuse" while a cluster of another checkout still runs (it is left
    alone: that checkout's `down` stops it). Processes whose checkout is gone are scrubbed."""
    if owner == ours:
        return "keep"
    if (owner is None and mine_running) or not found:
        return "claim"
    if strays and owner is not None and owner_checkout_exists:
        return "refuse"
    return "scrub"


def stray_processes() -> dict[int, str]:
    """Processes of a local cluster that this state directory did not start, by PID with
    their binary's name: the harness's built binaries, the shims of containerd's socket
    here, and a containerd with its store open under /var/lib/orchard (not the machine's
    own containerd)."""
    mine = {proc.pid for name in LEVELS["node"] if (proc := recorded(name)) and proc.alive()}
    ours = str(CACHE / "bin") + "/"
    strays = {}
    for proc_dir in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError, ValueError):
            pid = int(proc_dir.name)
            exe = os.readlink(proc_dir / "exe")
            if pid in mine:
                continue
            if (
                exe.startswith(ours)
                or str(CONTAINERD_SOCK).encode() in (proc_dir / "cmdline").read_bytes()
                or (Path(exe).name == "containerd" and holds_open_under(proc_dir, VAR))
            ):
                strays[pid] = Path(exe.split(" (deleted)")[0]).name
    return strays


def holds_open_under(proc_dir: Path, root: Path) -> bool:
    """Whether the process has a file open under `root`."""
    prefix = str(root) + "/"
    for fd in (proc_dir / "fd").iterdir():
        with contextlib.suppress(OSError):
            if os.readlink(fd).startswith(prefix):
                return True
    return False


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
    # And any process of the cluster not recorded (a pidfile lost to a crash, a component
    # started by hand, another checkout's: one local cluster runs at a time, so it is a
    # leftover), and any server socket still bound to the node's address.
    procs += [f"pid {pid} ({name})" for pid, name in stray_processes().items()]
    if procs:
        found.append("processes " + ", ".join(procs))
    sockets = bound_to(NODE_IP)
    if sockets:
        found.append(f"sockets on {NODE_IP}: " + ", ".join(sockets))
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


def bound_to(address: str) -> list[str]:
    """The listening TCP and bound UDP sockets of this network namespace on an IPv4
    address (a connection closing there, in TIME_WAIT, belongs to nobody)."""
    hexaddr = "".join(f"{int(octet):02X}" for octet in reversed(address.split(".")))
    listening = {"tcp": "0A", "udp": "07"}  # TCP_LISTEN; TCP_CLOSE is an unconnected UDP socket
    found = []
    for proto, state in listening.items():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
                fields = line.split()
                ip, _, port = fields[1].partition(":")
                if ip == hexaddr and fields[3] == state:
                    found.append(f"{proto} {int(port, 16)}")
    return sorted(set(found))


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
    if running("coredns"):
        try:
            answered = "answers" if dns_answers() else "does not answer as it should"
        except OSError as err:
            answered = f"does not answer ({err})"
        print(f"  {'cluster DNS':24} {DNS_IP}:{DNS_PORT} {answered}")
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


def leave_to_external() -> bool:
    """True, having said so, when KUBECONFIG names another cluster (`--unless-external`)."""
    external = external_kubeconfig()
    if external is None:
        return False
    print(f"KUBECONFIG names another cluster ({external}); nothing to do here")
    return True
