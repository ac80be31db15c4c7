"""Many TrainingJobs at once on a real node: every one ends, the queue holds, the API
server is not flooded.

Needs the node level of the local cluster and the trainer and server images (`make
bench-queue` starts and builds them). In a namespace with an artifact PVC it runs
`orchard operator -n <ns>` on the host with ORCHARD_MAX_RUNNING_TRAININGS=--limit and its
metrics on a free port, applies --trainings TrainingJobs at once (iris, logistic
regression: the load is the operator's and the cluster's, not the model's), waits until
every one is Succeeded or Failed and every ModelVersion it registered has its verdict,
and reports:

- how many ended in each phase, and how long the last took;
- the most trainer pods that ran at once, from the pods' own start and finish times
  (the queue's limit is the goal);
- the controllers' requests to the API server (`orchard_operator_api_requests_total`, by
  method and code, and by resource) a second, and the 429s among them and in the
  operator's log.

    python bench/training_queue.py [--trainings 500] [--limit 20]

Writes bench/results/queue-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from datetime import UTC, datetime
from typing import Any

import yaml
from training import (  # bench/training.py: namespace, PVC, operator
    REPO,
    RESULTS,
    Bench,
    api_requests,
    free_port,
    request_delta,
    ts,
)

FINAL = ("Succeeded", "Failed")  # a TrainingJob's
VERDICTS = ("Ready", "Failed")  # a ModelVersion's


def training(index: int) -> dict[str, Any]:
    return {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": f"iris-{index}"},
        "spec": {
            "model": f"iris-{index}",
            "dataset": {"builtin": "iris"},
            "estimator": {"name": "LogisticRegression", "params": {"max_iter": 200}},
            "artifacts": {"uri": "pvc://orchard-artifacts/models"},
        },
    }


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of [start, end) intervals that overlap."""
    edges = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    return peak


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trainings", type=int, default=500)
    parser.add_argument("--limit", type=int, default=20, help="ORCHARD_MAX_RUNNING_TRAININGS")
    parser.add_argument("--timeout", type=float, default=3600)
    args = parser.parse_args()
    kubeconfig = os.environ.get("KUBECONFIG") or str(REPO / ".cluster" / "kubeconfig")
    port = free_port()
    bench = Bench(kubeconfig)
    bench.setup(
        operator_args=["--metrics-port", str(port)],
        env={"ORCHARD_MAX_RUNNING_TRAININGS": str(args.limit)},
    )
    try:
        before = api_requests(port)
        began = time.time()
        manifests = "---\n".join(yaml.safe_dump(training(i)) for i in range(args.trainings))
        bench.k("apply", "-f", "-", input=manifests)
        print(f"{bench.ns}: {args.trainings} TrainingJobs applied, at most {args.limit} at once",
              flush=True)  # fmt: skip
        deadline = time.monotonic() + args.timeout
        while True:
            tjs = json.loads(bench.k("get", "trainingjobs", "-o", "json"))["items"]
            mvs = json.loads(bench.k("get", "modelversions", "-o", "json"))["items"]
            phases = [(t.get("status") or {}).get("phase") for t in tjs]
            verdicts = [(m.get("status") or {}).get("phase") for m in mvs]
            ended = sum(p in FINAL for p in phases)
            registered = sum(1 for t in tjs if (t.get("status") or {}).get("modelVersion"))
            if (
                ended == len(tjs)
                and registered == len(mvs)
                and all(v in VERDICTS for v in verdicts)
            ):
                succeeded = sum(p == "Succeeded" for p in phases)
                if succeeded == registered:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"after {args.timeout:.0f} s: {ended} of {len(tjs)} ended")
            print(f"  {time.time() - began:6.0f} s: {ended} ended, {len(mvs)} versions, "
                  f"{sum(v == 'Ready' for v in verdicts)} Ready", flush=True)  # fmt: skip
            time.sleep(10)
        finished = time.time()
        after = api_requests(port)
        pods = json.loads(
            bench.k("get", "pods", "-l", "app.kubernetes.io/component=training", "-o", "json")
        )["items"]
    finally:
        bench.teardown()
    intervals = []
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            ended_state = (status.get("state") or {}).get("terminated") or {}
            start, end = ts(ended_state.get("startedAt")), ts(ended_state.get("finishedAt"))
            if start is not None and end is not None:
                intervals.append((start, end))
    requests = request_delta(before, after)
    total = sum(requests.values())
    text = bench.log.read_text(errors="replace")
    report = {
        "trainings": args.trainings,
        "limit": args.limit,
        "seconds": finished - began,
        "phases": {p: phases.count(p) for p in set(phases)},
        "model_versions": {v: verdicts.count(v) for v in set(verdicts)},
        "trainer_pods": len(intervals),
        "most_trainer_pods_at_once": most_at_once(intervals),
        "api_requests": requests,
        "api_requests_by_resource": request_delta(before, after, by_resource=True),
        "api_requests_per_second": total / (finished - began),
        "api_429": sum(n for key, n in requests.items() if key.endswith(" 429")),
        "log_429": len(re.findall(r"too many requests", text, re.IGNORECASE)),
        "operator_log": str(bench.log),
        "cores": os.cpu_count(),
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    print(json.dumps(report, indent=2))
    print(
        f"{args.trainings} TrainingJobs: {report['phases']} in {report['seconds']:.0f} s; "
        f"at most {report['most_trainer_pods_at_once']} trainer pods at once (limit "
        f"{args.limit}); {total:.0f} API requests by the controllers, "
        f"{report['api_requests_per_second']:.1f} a second, {report['api_429']:.0f} answered 429"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    (RESULTS / f"queue-{stamp}.json").write_text(json.dumps(report, indent=2) + "\n")
    ok = report["phases"].get("Succeeded") == args.trainings
    return 0 if ok and report["most_trainer_pods_at_once"] <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
