"""The operator's overhead on training: `kubectl apply` of a TrainingJob to its
ModelVersion Ready, beside the same `orchard train` run locally.

Needs the node level of the local cluster (`make cluster-up`, or any cluster through
KUBECONFIG whose default storage class is host-path) and the trainer image
(`python -m images.build trainer`). It makes a namespace with an
artifact PVC holding tests/data/penguins.csv, runs `orchard operator -n <ns>` on the host,
and for each round applies one TrainingJob and waits for its ModelVersion to be Ready;
then it runs `orchard train` on the same spec (file:// URIs) as a local process.

    python bench/training.py              # 3 rounds of each
    python bench/training.py --rounds 5

Prints each round, the medians, their ratio, and where the cluster time goes (from the
Job's and pods' own timestamps, to the second); writes bench/results/training-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
PENGUINS = REPO / "tests" / "data" / "penguins.csv"
ORCHARD = Path(sys.executable).parent / "orchard"
CLAIM = "orchard-artifacts"
POLL = 0.2


def kubectl(kubeconfig: str, *args: str, input: str | None = None) -> str:
    proc = subprocess.run(
        ["kubectl", "--kubeconfig", kubeconfig, *args],
        input=input,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_requests(port: int) -> dict[tuple[str, str, str], float]:
    """The operator's own count of its requests, by method, resource and code."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
    counts: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(text.decode()):
        if family.name == "orchard_operator_api_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    key = (labels["method"], labels["resource"], labels["code"])
                    counts[key] = sample.value
    return counts


def request_delta(
    before: dict[tuple[str, str, str], float],
    after: dict[tuple[str, str, str], float],
    by_resource: bool = False,
) -> dict[str, float]:
    """The requests between two counts, as "METHOD code": n, or with `by_resource`
    "METHOD resource code": n (those that changed)."""
    delta: dict[str, float] = {}
    for m, r, c in sorted(after):
        n = after[(m, r, c)] - before.get((m, r, c), 0)
        key = f"{m} {r} {c}" if by_resource else f"{m} {c}"
        delta[key] = delta.get(key, 0) + n
    return {key: n for key, n in delta.items() if n or not by_resource}


def spec(dataset: str, artifacts: str) -> dict[str, Any]:
    """One TrainingJob spec for both runs: penguins (categorical columns, missing values)."""
    return {
        "model": "penguins",
        "dataset": {"uri": dataset, "target": "species", "checks": {"minRows": 100}},
        "estimator": {
            "name": "RandomForestClassifier",
            "params": {"n_estimators": 100, "random_state": 0},
        },
        "evaluation": {"testSize": 0.25, "cvFolds": 3},
        "gate": {"metric": "accuracy", "min": 0.8},
        "artifacts": {"uri": artifacts},
    }


def ts(value: str | None) -> float | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


class Bench:
    def __init__(self, kubeconfig: str) -> None:
        self.kubeconfig = kubeconfig
        self.ns = f"orchard-bench-{uuid.uuid4().hex[:6]}"
        self.operator: subprocess.Popen[bytes] | None = None
        self.log = Path(tempfile.gettempdir()) / f"{self.ns}-operator.log"

    def k(self, *args: str, input: str | None = None) -> str:
        return kubectl(self.kubeconfig, "-n", self.ns, *args, input=input)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            out: dict[str, Any] = json.loads(self.k("get", kind, name, "-o", "json"))
        except RuntimeError as exc:
            if "NotFound" in str(exc):
                return None
            raise
        return out

    def setup(
        self, operator_args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> None:
        """The namespace, its artifact PVC holding penguins.csv, and the operator on the
        host (with `operator_args` and `env` besides its defaults)."""
        crds = str(REPO / "crds")
        kubectl(self.kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", crds)
        kubectl(self.kubeconfig, "wait", "--for=condition=Established", "-f", crds)
        kubectl(self.kubeconfig, "create", "namespace", self.ns)
        pvc = {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": CLAIM},
            "spec": {
                "accessModes": ["ReadWriteOnce"],
                "resources": {"requests": {"storage": "256Mi"}},
            },
        }
        self.k("apply", "-f", "-", input=yaml.safe_dump(pvc))
        deadline = time.monotonic() + 60
        while True:
            claim = self.get("pvc", CLAIM) or {}
            if claim.get("status", {}).get("phase") == "Bound":
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the artifact PVC did not bind")
            time.sleep(0.5)
        volume = json.loads(
            kubectl(self.kubeconfig, "get", "pv", claim["spec"]["volumeName"], "-o", "json")
        )
        storage = Path(volume["spec"]["hostPath"]["path"])
        (storage / "data").mkdir(parents=True, exist_ok=True)
        shutil.copy(PENGUINS, storage / "data" / "penguins.csv")
        for path in [storage, *storage.rglob("*")]:  # open to the trainer's uid, as fsGroup would
            path.chmod(0o777 if path.is_dir() else 0o644)
        RESULTS.mkdir(parents=True, exist_ok=True)
        operator_env = {
            **os.environ,
            "KUBECONFIG": self.kubeconfig,
            "ORCHARD_TRAINER_IMAGE": "localhost/orchard/trainer:dev",
            **(env or {}),
        }
        self.operator = subprocess.Popen(
            [
                str(ORCHARD),
                "operator",
                "-n",
                self.ns,
                "--liveness",
                "",
                *(operator_args or ["--metrics-port", "0"]),
            ],
            env=operator_env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        time.sleep(3)  # let the operator list and watch before the first apply

    def teardown(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.send_signal(signal.SIGTERM)
            try:
                self.operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.operator.kill()
        kubectl(self.kubeconfig, "delete", "namespace", self.ns, "--wait=false")

    def round(self, index: int) -> dict[str, Any]:
        name = f"penguins-{index}"
        body = {
            "apiVersion": "orchard.dev/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {"name": name},
            "spec": spec(f"pvc://{CLAIM}/data/penguins.csv", f"pvc://{CLAIM}/models"),
        }
        t0 = time.monotonic()
        wall0 = time.time()
        self.k("apply", "-f", "-", input=yaml.safe_dump(body))
        succeeded = mv_ready = None
        mv_name = None
        deadline = t0 + 600
        while mv_ready is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: no Ready ModelVersion after 600s")
            status = (self.get("tj", name) or {}).get("status") or {}
            if status.get("phase") == "Failed":
                raise RuntimeError(
                    f"{name} failed: {status.get('reason')}: {status.get('message')}"
                )
            if succeeded is None and status.get("phase") == "Succeeded":
                succeeded = time.monotonic()
            mv_name = status.get("modelVersion")
            if mv_name:
                mv = (self.get("mv", mv_name) or {}).get("status") or {}
                if mv.get("phase") == "Ready":
                    mv_ready = time.monotonic()
                elif mv.get("phase") == "Failed":
                    raise RuntimeError(f"{mv_name} failed verification: {mv.get('message')}")
            time.sleep(POLL)
        assert succeeded is not None and mv_name is not None
        return {
            "trainingJob": name,
            "modelVersion": mv_name,
            "apply_to_succeeded_s": round(succeeded - t0, 2),
            "apply_to_ready_s": round(mv_ready - t0, 2),
            "phases": self.phases(name, mv_name, wall0),
        }

    def phases(self, tj: str, mv: str, wall0: float) -> dict[str, float | None]:
        """Seconds from apply to each milestone, from the objects' own timestamps."""
        job = self.get("job", tj) or {}
        pods = json.loads(
            self.k("get", "pods", "-l", f"batch.kubernetes.io/job-name={tj}", "-o", "json")
        )["items"]
        verify_pods = json.loads(
            self.k("get", "pods", "-l", f"orchard.dev/modelversion={mv}", "-o", "json")
        )["items"]

        def first(items: list[dict[str, Any]], path: str) -> float | None:
            for item in items:
                value: Any = item
                for key in path.split("."):
                    value = value[int(key)] if isinstance(value, list) else value.get(key, {})
                if isinstance(value, str) and (t := ts(value)) is not None:
                    return round(t - wall0, 1)
            return None

        mv_body = self.get("mv", mv) or {}
        return {
            "job_created": first([job], "metadata.creationTimestamp"),
            "trainer_started": first(pods, "status.containerStatuses.0.state.terminated.startedAt"),
            "trainer_finished": first(
                pods, "status.containerStatuses.0.state.terminated.finishedAt"
            ),
            "job_complete": first([job], "status.completionTime"),
            "modelversion_created": first([mv_body], "metadata.creationTimestamp"),
            "verifier_started": first(
                verify_pods, "status.containerStatuses.0.state.terminated.startedAt"
            ),
            "verifier_finished": first(
                verify_pods, "status.containerStatuses.0.state.terminated.finishedAt"
            ),
        }


def local_round(workdir: Path, index: int) -> float:
    """`orchard train` on the same spec, as a process on this machine."""
    tj = {
        "apiVersion": "orchard.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": f"penguins-local-{index}", "namespace": "default"},
        "spec": spec(f"file://{PENGUINS}", f"file://{workdir}/models"),
    }
    path = workdir / f"tj-{index}.yaml"
    path.write_text(yaml.safe_dump(tj))
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(ORCHARD), "train", "-f", str(path), "--output", f"file://{workdir}/out-{index}",
         "--termination-log", str(workdir / f"result-{index}.json")],
        capture_output=True,
        text=True,
        check=False,
    )  # fmt: skip
    elapsed = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"local orchard train failed: {proc.stdout}{proc.stderr}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG") or str(REPO / ".cluster" / "kubeconfig"),
    )
    args = parser.parse_args(argv)

    bench = Bench(args.kubeconfig)
    cluster_rounds = []
    bench.setup()
    try:
        for i in range(args.rounds):
            r = bench.round(i)
            cluster_rounds.append(r)
            print(f"cluster round {i}: apply -> Succeeded {r['apply_to_succeeded_s']:.1f}s, "
                  f"-> ModelVersion Ready {r['apply_to_ready_s']:.1f}s  {r['phases']}")  # fmt: skip
    finally:
        bench.teardown()
    local = []
    with tempfile.TemporaryDirectory(prefix="orchard-bench-") as tmp:
        for i in range(args.rounds):
            local.append(local_round(Path(tmp), i))
            print(f"local round {i}: orchard train {local[-1]:.1f}s")

    cluster_ready = statistics.median(r["apply_to_ready_s"] for r in cluster_rounds)
    cluster_trained = statistics.median(r["apply_to_succeeded_s"] for r in cluster_rounds)
    local_median = statistics.median(local)
    summary = {
        "rounds": args.rounds,
        "cluster_apply_to_succeeded_s": round(cluster_trained, 2),
        "cluster_apply_to_modelversion_ready_s": round(cluster_ready, 2),
        "local_orchard_train_s": round(local_median, 2),
        "ratio_ready_to_local": round(cluster_ready / local_median, 2),
        "ratio_succeeded_to_local": round(cluster_trained / local_median, 2),
        "cores": os.cpu_count(),
        "cluster": cluster_rounds,
        "local": [round(x, 2) for x in local],
        "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    print()
    print(f"{'':34}{'median':>10}")
    print(f"{'kubectl apply -> TJ Succeeded':34}{cluster_trained:>9.1f}s")
    print(f"{'kubectl apply -> MV Ready':34}{cluster_ready:>9.1f}s")
    print(f"{'orchard train (local process)':34}{local_median:>9.1f}s")
    print(f"{'ratio (MV Ready / local)':34}{summary['ratio_ready_to_local']:>9.2f}x")
    out = RESULTS / f"training-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
