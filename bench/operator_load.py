"""The operator under load: thousands of Orchard objects at once, on a real API server.

Needs only the api level of the local cluster (`make bench-operator` starts it), so no pod
ever runs: a TrainingJob's Job and a ModelVersion's verification Job stay unscheduled,
which is the load of objects that wait. It runs `orchard operator -n <ns>` on the host,
creates --objects objects across the kinds (TrainingJobs, ModelVersions imported by hand,
and ModelDeployments serving them) from --clients threads, all at once or --rate a
second, watches what the operator makes, and reports:

- from each object's create (the API server's answer) to its child being created (the
  Job; for a ModelDeployment, which at this level has no Ready version to serve, none)
  and to its status first written: p50, p99, max;
- the operator's RSS (start, peak, end) and CPU while it works and afterwards, when every
  object only waits (--idle seconds);
- the controllers' requests to the API server (the operator's own counter, by method
  and code, and by resource too) while it works, per object, and a second once every
  object waits;
- HTTP 429s and retried requests in the operator's log;
- how fast it got through them: objects a second from the first create to the last
  status, and the operator's CPU time per object.

All at once, every object waits behind the ones before it, so the latencies measure how
long the operator takes to get through the burst; at a --rate it keeps up with, they
measure its latency.

The goals (issue "Faults and load") are printed beside the figures: RSS <= 200 MB, p99
<= 1 s from an event to its child and status. Writes bench/results/operator-<time>.json.

    python bench/operator_load.py [--objects 5000] [--clients 8] [--rate 0] [--idle 60]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client, KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.batch_v1 import Job
from training import (  # bench/training.py: kubectl, the operator's request counter
    api_requests,
    free_port,
    kubectl,
    request_delta,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
ORCHARD = Path(sys.executable).parent / "orchard"
KINDS = ("TrainingJob", "ModelVersion", "ModelDeployment")
RSS_GOAL_MB = 200
P99_GOAL_S = 1.0
RESOURCES = {
    kind: create_namespaced_resource("orchard.dev", "v1alpha1", kind, f"{kind.lower()}s")
    for kind in KINDS
}
SAMPLE_VERSION = yaml.safe_load((REPO / "manifests" / "samples" / "modelversion.yaml").read_text())


def body(kind: str, index: int) -> dict[str, Any]:
    """Object `index` of `kind`; the ModelDeployment `index` serves ModelVersion `index`."""
    name = f"m{index}"
    spec: dict[str, Any]
    if kind == "TrainingJob":
        spec = {
            "model": name,
            "dataset": {"builtin": "iris"},
            "estimator": {"name": "LogisticRegression"},
            "artifacts": {"uri": "pvc://orchard-artifacts/models"},
        }
    elif kind == "ModelVersion":
        spec = dict(SAMPLE_VERSION["spec"], model=name, version=1)
        spec["artifact"] = dict(spec["artifact"], uri=f"pvc://orchard-artifacts/{name}/1/")
    else:
        spec = {"modelVersion": f"{name}-import"}
    suffix = {"ModelVersion": "-import", "ModelDeployment": "-serve"}.get(kind, "")
    return {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": f"{name}{suffix}"},
        "spec": spec,
    }


class Seen:
    """When each thing was first seen, by key; thread-safe."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], float] = {}
        self.lock = threading.Lock()

    def mark(self, key: tuple[str, str], when: float | None = None) -> None:
        with self.lock:
            self.at.setdefault(key, time.time() if when is None else when)


def watch_children(client: Client, ns: str, seen: Seen, stop: threading.Event) -> None:
    """Jobs, by the Orchard object that owns them (its kind and name)."""
    while not stop.is_set():
        try:
            for _, job in client.watch(Job, namespace=ns):
                for ref in job.metadata.ownerReferences or []:
                    if ref.kind in KINDS:
                        seen.mark((f"child:{ref.kind}", ref.name))
                if stop.is_set():
                    return
        except Exception as err:  # a closed watch is reopened
            print(f"watch of Jobs: {err!r}; reopened", file=sys.stderr)
            time.sleep(0.2)


def watch_status(client: Client, ns: str, kind: str, seen: Seen, stop: threading.Event) -> None:
    """The first time each object of `kind` carries a status phase."""
    while not stop.is_set():
        try:
            for _, obj in client.watch(RESOURCES[kind], namespace=ns):
                if (obj.status or {}).get("phase"):
                    seen.mark((f"status:{kind}", obj.metadata.name))
                if stop.is_set():
                    return
        except Exception as err:
            print(f"watch of {kind}: {err!r}; reopened", file=sys.stderr)
            time.sleep(0.2)


class Process:
    """RSS and CPU time of one process, from /proc, sampled every second."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float, float]] = []  # time, RSS MB, CPU seconds
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def read(self) -> tuple[float, float]:
        status = Path(f"/proc/{self.pid}/status").read_text()
        rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return rss_kb / 1024, (int(fields[11]) + int(fields[12])) / ticks

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                rss, cpu = self.read()
            except (OSError, AttributeError):
                return
            self.samples.append((time.time(), rss, cpu))
            self.stop.wait(1.0)

    def cpu_share(self, since: float, until: float) -> float:
        """The share of one core used between two times."""
        window = [s for s in self.samples if since <= s[0] <= until]
        if len(window) < 2:
            return float("nan")
        return (window[-1][2] - window[0][2]) / (window[-1][0] - window[0][0])


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "n": len(ordered),
        "p50": statistics.median(ordered),
        "p99": p99,
        "max": ordered[-1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--objects", type=int, default=5000, help="in all, across the kinds")
    parser.add_argument("--clients", type=int, default=8, help="threads creating objects")
    parser.add_argument(
        "--rate", type=float, default=0, help="objects created per second (0: all at once)"
    )
    parser.add_argument("--idle", type=float, default=60, help="seconds measured once all wait")
    parser.add_argument("--timeout", type=float, default=900, help="for every object's status")
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG") or str(REPO / ".cluster" / "kubeconfig")
    crds = str(REPO / "crds")
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", crds)
    kubectl(kubeconfig, "wait", "--for=condition=Established", "-f", crds)
    ns = f"bench-operator-{uuid.uuid4().hex[:6]}"
    kubectl(kubeconfig, "create", "namespace", ns)
    client = Client(KubeConfig.from_file(kubeconfig), field_manager="bench")
    log = Path(tempfile.gettempdir()) / f"{ns}-operator.log"
    env = {**os.environ, "KUBECONFIG": kubeconfig}
    port = free_port()
    operator = subprocess.Popen(
        [str(ORCHARD), "operator", "-n", ns, "--metrics-port", str(port), "--liveness", ""],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    proc = Process(operator.pid)
    seen, stop = Seen(), threading.Event()
    watchers = [threading.Thread(target=watch_children, args=(client, ns, seen, stop))]
    watchers += [
        threading.Thread(target=watch_status, args=(client, ns, kind, seen, stop)) for kind in KINDS
    ]
    for thread in watchers:
        thread.daemon = True
        thread.start()
    time.sleep(5)  # the operator lists and watches before the first create
    rss_start = proc.read()[0]
    requests_start = api_requests(port)
    plan = [(i, KINDS[i % 3], i // 3) for i in range(args.objects)]
    created: dict[tuple[str, str], float] = {}

    def create(item: tuple[int, str, int]) -> None:
        n, kind, index = item
        if args.rate > 0:  # the n-th object at its time, not as fast as the clients go
            time.sleep(max(0.0, began + n / args.rate - time.time()))
        obj = body(kind, index)
        client.create(RESOURCES[kind](obj), namespace=ns)
        created[(kind, obj["metadata"]["name"])] = time.time()

    pace = f"{args.rate:g} a second" if args.rate > 0 else "all at once"
    print(f"{ns}: creating {args.objects} objects, {pace}, with {args.clients} clients ...",
          flush=True)  # fmt: skip
    began = time.time()
    try:
        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(create, plan))
        submitted = time.time()
        print(f"created in {submitted - began:.1f} s; waiting for every status", flush=True)
        deadline = time.monotonic() + args.timeout
        while time.monotonic() < deadline:
            done = sum(1 for kind, name in created if (f"status:{kind}", name) in seen.at)
            if done == len(created):
                break
            time.sleep(1)
        settled = time.time()
        requests_settled = api_requests(port)
        time.sleep(args.idle)
        idle_end = time.time()
        requests_idle_end = api_requests(port)
        requests_idle = request_delta(requests_settled, requests_idle_end)
        rss_end = proc.read()[0]
    finally:
        stop.set()
        kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false")
        time.sleep(5)
        operator.send_signal(signal.SIGTERM)
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
        proc.stop.set()
    text = log.read_text(errors="replace")
    report: dict[str, Any] = {
        "objects": args.objects,
        "clients": args.clients,
        "rate": args.rate,
        "namespace": ns,
        "create_seconds": submitted - began,
        "all_status_seconds": settled - began,
        "statuses_written": sum(1 for kind, name in created if (f"status:{kind}", name) in seen.at),
        "to_child": {},
        "to_status": {},
        "rss_mb": {
            "start": rss_start,
            "peak": max(s[1] for s in proc.samples),
            "end": rss_end,
        },
        "cpu_core_share": {
            "working": proc.cpu_share(began, settled),
            "idle": proc.cpu_share(settled, idle_end),
        },
        # Kopf's retries and the API server's own message say so; a bare 429 may be in a uid.
        "http_429": len(re.findall(r"too many requests", text, re.IGNORECASE)),
        "retried_requests": len(re.findall(r"will retry", text)),
        "api_requests": request_delta(requests_start, requests_settled),
        "api_requests_idle_per_second": {
            key: n / (idle_end - settled) for key, n in requests_idle.items() if n
        },
        "api_requests_by_resource": request_delta(
            requests_start, requests_settled, by_resource=True
        ),
        "api_requests_idle_per_second_by_resource": {
            key: n / (idle_end - settled)
            for key, n in request_delta(requests_settled, requests_idle_end, True).items()
        },
        "operator_log": str(log),
    }
    working = report["cpu_core_share"]["working"] * (settled - began)
    report["objects_per_second"] = len(created) / (settled - began)
    report["cpu_ms_per_object"] = 1000 * working / len(created)
    report["api_requests_per_object"] = sum(report["api_requests"].values()) / len(created)
    for kind in KINDS:
        names = [(k, n) for k, n in created if k == kind]
        report["to_status"][kind] = percentiles(
            [seen.at[(f"status:{kind}", n)] - created[(k, n)] for k, n in names
             if (f"status:{kind}", n) in seen.at]
        )  # fmt: skip
        if kind != "ModelDeployment":
            report["to_child"][kind] = percentiles(
                [seen.at[(f"child:{kind}", n)] - created[(k, n)] for k, n in names
                 if (f"child:{kind}", n) in seen.at]
            )  # fmt: skip
    print(json.dumps(report, indent=2))
    rss, worst = report["rss_mb"]["peak"], 0.0
    for table in (report["to_child"], report["to_status"]):
        for figures in table.values():
            worst = max(worst, figures.get("p99", 0.0))
    print(
        f"peak RSS {rss:.0f} MB (goal <= {RSS_GOAL_MB}: {rss / RSS_GOAL_MB:.2f}x of it); "
        f"worst p99 {worst:.2f} s (goal <= {P99_GOAL_S:g} s: {worst / P99_GOAL_S:.1f}x); "
        f"{report['objects_per_second']:.0f} objects/s, "
        f"{report['cpu_ms_per_object']:.1f} ms of CPU each; "
        f"idle CPU {report['cpu_core_share']['idle']:.0%} of a core; "
        f"{report['api_requests_per_object']:.1f} API requests each "
        f"({report['api_requests'].get('GET 200', 0) / len(created):.1f} GET 200); "
        f"{report['http_429']} HTTP 429s"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"operator-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
