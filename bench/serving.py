"""Orchard's model server against KServe and MLServer, on the same model.joblib.

Each server runs from its own virtual environment under bench/envs/ (created here with
pip on first use): Orchard (this checkout with the `serve` extra), KServe (the `kserve`
0.21 SDK's ModelServer with a minimal scikit-learn Model, bench/servers/kserve_sklearn.py)
and MLServer (`mlserver` + `mlserver-sklearn` 1.7, with its default settings and with
`parallel_workers: 0`). One load client drives them in turn, A B A B, with the same
payloads: over HTTP (bench/loadgen.py) 1-row and 32-row requests at concurrency 1 and 16,
and over the Open Inference Protocol's gRPC (bench/grpc_loadgen.py) 1-row requests at 1
and 16, on a logistic regression on iris and a 100-tree random forest on breast_cancer.
Orchard's server chooses its runtime at load (serving/runtime.py); which one served is
printed.

    python bench/serving.py            # full run (about 15 minutes)
    python bench/serving.py --quick    # smoke run (about 3 minutes)

Prints requests/s, p50, p99, server CPU per request (utime + stime of the server's
process tree, from /proc) and RSS, with ratios against KServe on the same protocol, then
the serving issue's targets as ratios of this run (`targets`), met or not. The figures
are facts of one run on this machine, not assertions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ENVS = HERE / "envs"
RESULTS = HERE / "results"
TICK = os.sysconf("SC_CLK_TCK")


# --- environments -------------------------------------------------------------------------


def _sklearn_version() -> str:
    import sklearn

    return str(sklearn.__version__)


def env_specs() -> dict[str, list[str]]:
    """pip requirements of each environment; scikit-learn pinned to the one that trained."""
    sk = f"scikit-learn=={_sklearn_version()}"
    return {
        "orchard": [f"{REPO}[serve]", sk],
        "kserve": ["kserve==0.21.*", sk, "joblib"],
        "mlserver": ["mlserver==1.7.*", "mlserver-sklearn==1.7.*", "uvloop<0.22", sk],
    }


def ensure_envs(kinds: set[str] | None = None) -> None:
    """The environments of these server kinds (all by default), created or brought up to date."""
    for name, reqs in env_specs().items():
        if kinds is not None and name not in kinds:
            continue
        env = ENVS / name
        marker = env / ".bench-ready"
        want = json.dumps(reqs)
        if not (marker.exists() and marker.read_text() == want):
            print(f"bench: creating {env} ({' '.join(reqs)})", flush=True)
            if not (env / "bin" / "python").exists():
                subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
            pip = [str(env / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, *reqs], check=True)
            marker.write_text(want)
        if name == "orchard":  # always serve the code of this checkout
            pip = [str(env / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
            subprocess.run([*pip, "--no-deps", "--force-reinstall", str(REPO)], check=True,
                           stdout=subprocess.DEVNULL)  # fmt: skip


# --- models -------------------------------------------------------------------------------


@dataclass
class Bench:
    key: str
    name: str
    dir: Path
    X: Any
    expected: Any = None


def _write_artifact(root: Path, model: Any, columns: list[str], name: str, X: Any) -> None:
    """model.joblib, and heldout.parquet (every row of X: what orchard serve checks its
    ONNX graph on, serving/runtime.py), listed in metadata.json."""
    import joblib
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, root / "model.joblib")
    digest = "sha256:" + hashlib.sha256((root / "model.joblib").read_bytes()).hexdigest()
    pd.DataFrame(X, columns=columns).assign(y=0).to_parquet(root / "heldout.parquet")
    held = "sha256:" + hashlib.sha256((root / "heldout.parquet").read_bytes()).hexdigest()
    meta = {
        "formatVersion": 1, "model": name, "task": "classification",
        "estimator": {"name": type(model).__name__, "params": {}}, "metrics": {},
        "framework": {"name": "scikit-learn", "version": _sklearn_version()},
        "dataset": {"uri": f"builtin:{name}", "digest": "sha256:" + "0" * 64, "rows": 0,
                    "target": "y"},
        "inputs": [{"name": c, "type": "number"} for c in columns],
        "output": {"name": "y", "type": "integer", "classes": [int(c) for c in model.classes_]},
        "files": {"model.joblib": digest, "heldout.parquet": held},
        "heldout": {"file": "heldout.parquet", "rows": len(X), "target": "y"},
        "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    (root / "metadata.json").write_text(json.dumps(meta, indent=1))


def make_models(work: Path) -> list[Bench]:
    from sklearn.datasets import load_breast_cancer, load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    iris = load_iris()
    lr = LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    _write_artifact(work / "iris", lr, [f"x{i}" for i in range(4)], "iris", iris.data)
    bc = load_breast_cancer()
    rf = RandomForestClassifier(n_estimators=100, random_state=0).fit(bc.data, bc.target)
    _write_artifact(work / "forest", rf, [f"x{i}" for i in range(30)], "forest", bc.data)
    return [
        Bench("iris-logreg", "iris", work / "iris", iris.data, lr),
        Bench("cancer-forest100", "forest", work / "forest", bc.data, rf),
    ]


def v2_body(X: Any, rows: int) -> bytes:
    x = X[:rows]
    tensor = {"name": "input-0", "shape": list(x.shape), "datatype": "FP64",
              "data": x.ravel().tolist()}  # fmt: skip
    return json.dumps({"inputs": [tensor]}).encode()


def v1_body(X: Any, rows: int) -> bytes:
    return json.dumps({"instances": X[:rows].tolist()}).encode()


# --- servers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    label: str
    kind: str  # orchard | kserve | mlserver
    v1: bool
    options: dict[str, Any] = field(default_factory=dict)
    port: int = 0
    grpc_port: int = 0
    runtime: str = ""  # what answers in Orchard's server (its model metadata)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    idle_rss: float = 0.0

    def start(self, bench: Bench, work: Path) -> None:
        self.port = free_port()
        self.grpc_port = free_port()
        self.log = work / f"{self.label}-{bench.name}.log"
        out = self.log.open("wb")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.kind == "orchard":
            argv = [str(ENVS / "orchard/bin/orchard"), "serve", "--model-dir", str(bench.dir),
                    "--model-name", bench.name, "--host", "127.0.0.1", "--port", str(self.port),
                    "--grpc-port", str(self.grpc_port), "--log-level", "warning"]  # fmt: skip
            if self.options.get("collect"):  # every request kept as Parquet segments
                argv += ["--collect-to", str(work / f"{self.label}-{bench.name}-collected"),
                         "--collect-sample-rate", "1"]  # fmt: skip
        elif self.kind == "kserve":
            argv = [str(ENVS / "kserve/bin/python"), str(HERE / "servers/kserve_sklearn.py"),
                    "--model_name", bench.name, "--model_dir", str(bench.dir),
                    "--http_port", str(self.port), "--grpc_port", str(self.grpc_port)]  # fmt: skip
        else:
            folder = work / f"{self.label}-{bench.name}"
            model_folder = folder / bench.name
            model_folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(bench.dir / "model.joblib", model_folder / "model.joblib")
            settings = {"http_port": self.port, "grpc_port": self.grpc_port,
                        "metrics_port": free_port(), "host": "127.0.0.1",
                        **self.options}  # fmt: skip
            (folder / "settings.json").write_text(json.dumps(settings))
            (model_folder / "model-settings.json").write_text(json.dumps({
                "name": bench.name, "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"},
            }))  # fmt: skip
            argv = [str(ENVS / "mlserver/bin/mlserver"), "start", str(folder)]
        # In the work directory: MLServer writes its metrics under the working one (.metrics).
        self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env,
                                     cwd=work, start_new_session=True)  # fmt: skip

    def url(self, bench: Bench, v1: bool = False) -> str:
        base = f"http://127.0.0.1:{self.port}"
        if v1:
            return f"{base}/v1/models/{bench.name}:predict"
        return f"{base}/v2/models/{bench.name}/infer"

    def wait_ready(self, bench: Bench, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/v2/models/{bench.name}/ready"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label} exited; see {self.log}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"{self.label} not ready after {timeout}s; see {self.log}")

    def read_runtime(self, bench: Bench) -> None:
        """Orchard's runtime and why, from its V2 model metadata's parameters."""
        if self.kind != "orchard":
            return
        url = f"http://127.0.0.1:{self.port}/v2/models/{bench.name}"
        with urllib.request.urlopen(url, timeout=10) as r:
            params = json.loads(r.read()).get("parameters") or {}
        self.runtime = str(params.get("runtime", "?"))
        print(f"  {bench.key:17} {self.label:13} runtime {self.runtime}: "
              f"{params.get('runtime_reason', '')}", flush=True)  # fmt: skip

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def tree_pids(root: int) -> list[int]:
    """root and all its descendants (MLServer runs its inference pool in child processes)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TICK


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def check_answers(server: Server, bench: Bench) -> None:
    """Each server must give the model's own predictions before it is timed."""
    for v1 in (False, True) if server.v1 else (False,):
        body = v1_body(bench.X, 32) if v1 else v2_body(bench.X, 32)
        req = urllib.request.Request(server.url(bench, v1), data=body,
                                     headers={"content-type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as r:
            reply = json.loads(r.read())
        got = reply["predictions"] if v1 else reply["outputs"][0]["data"]
        want = bench.expected.predict(bench.X[:32]).tolist()
        if [int(g) for g in got] != want:
            raise RuntimeError(
                f"{server.label} ({'v1' if v1 else 'v2'}) answered {got}, want {want}"
            )


def run_load(server: Server, bench: Bench, protocol: str, n: int, conc: int, seconds: float,
             warmup: float, work: Path) -> dict[str, Any]:  # fmt: skip
    """One cell: `protocol` v2 or v1 over HTTP (bench/loadgen.py) or grpc
    (bench/grpc_loadgen.py), n rows a request, conc in flight; plus the server's CPU per
    request and RSS."""
    import numpy as np

    if protocol == "grpc":
        rows_file = work / "rows.npy"
        np.save(rows_file, np.asarray(bench.X[:n], dtype=np.float64))
        client = [str(HERE / "grpc_loadgen.py"), "--target", f"127.0.0.1:{server.grpc_port}",
                  "--model", bench.name, "--rows-file", str(rows_file)]  # fmt: skip
    else:
        body_file = work / "body.json"
        v1 = protocol == "v1"
        body_file.write_bytes(v1_body(bench.X, n) if v1 else v2_body(bench.X, n))
        client = [str(HERE / "loadgen.py"), "--url", server.url(bench, v1),
                  "--body-file", str(body_file)]  # fmt: skip
    assert server.proc is not None
    pids = tree_pids(server.proc.pid)
    cpu0 = cpu_seconds(pids)
    out = subprocess.run(
        [sys.executable, *client, "--concurrency", str(conc), "--duration", str(seconds),
         "--warmup", str(warmup)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    cpu = cpu_seconds(tree_pids(server.proc.pid)) - cpu0
    result["cpu_ms_per_req"] = 1000 * cpu / max(1, result["all_requests"])
    result["rss_mb"] = rss_mb(tree_pids(server.proc.pid))
    return result


# --- main ---------------------------------------------------------------------------------


def servers() -> list[Server]:
    return [
        Server("orchard", "orchard", v1=True),
        Server("orchard-collect", "orchard", v1=True, options={"collect": True}),
        Server("kserve", "kserve", v1=True),
        Server("mlserver", "mlserver", v1=False),
        Server("mlserver-pw0", "mlserver", v1=False, options={"parallel_workers": 0}),
    ]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="short smoke run: one pass, 2 s cells")
    p.add_argument("--seconds", type=float, help="measured seconds per cell")
    p.add_argument("--only", nargs="*", help="labels of servers to run (default: all)")
    a = p.parse_args()
    seconds = a.seconds or (2.0 if a.quick else 8.0)
    warmup = 0.5 if a.quick else 2.0
    passes = 1 if a.quick else 2
    ensure_envs({s.kind for s in servers() if not a.only or s.label in a.only})
    work = Path(tempfile.mkdtemp(prefix="orchard-bench-"))
    benches = make_models(work)
    rows: list[dict[str, Any]] = []
    for bench in benches:
        group = [s for s in servers() if not a.only or s.label in a.only]
        try:
            for s in group:
                s.start(bench, work)
            for s in group:
                s.wait_ready(bench)
            time.sleep(2)
            for s in group:
                assert s.proc is not None
                s.idle_rss = rss_mb(tree_pids(s.proc.pid))
                check_answers(s, bench)
                s.read_runtime(bench)
            cells = [(n, c, "v2") for n in (1, 32) for c in (1, 16)] + [(1, 16, "v1")]
            cells += [(1, c, "grpc") for c in (1, 16)]
            for pass_no in range(passes):
                for n, conc, protocol in cells:
                    for s in group:  # A B A B: every server in turn, then again
                        if protocol == "v1" and not s.v1:
                            continue
                        if protocol == "grpc" and s.options.get("collect"):
                            continue  # collection is the same code behind either protocol
                        r = run_load(s, bench, protocol, n, conc, seconds, warmup, work)
                        r.update(model=bench.key, server=s.label, rows=n, conc=conc,
                                 protocol=protocol, pass_no=pass_no, idle_rss_mb=s.idle_rss,
                                 runtime=s.runtime)  # fmt: skip
                        rows.append(r)
                        print(
                            f"  {bench.key:17} {s.label:13} {r['protocol']} rows={n:<2} "
                            f"c={conc:<2} {r['rps']:9.0f} req/s  p50 {r['p50_ms']:7.2f} ms  "
                            f"p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}",
                            flush=True,
                        )
        finally:
            for s in group:
                s.stop()
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"serving-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(rows, indent=1))
    print()
    print(report(rows))
    print()
    print(targets(rows))
    print(f"\nraw results: {out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def summarize(rows: list[dict[str, Any]]) -> dict[tuple[str, int, int, str, str], dict[str, Any]]:
    """The mean of the passes of each cell (model, rows, conc, protocol, server)."""
    cells: dict[tuple[str, int, int, str, str], list[dict[str, Any]]] = {}
    for r in rows:
        key = (r["model"], r["rows"], r["conc"], r["protocol"], r["server"])
        cells.setdefault(key, []).append(r)
    fields = ("rps", "p50_ms", "p99_ms", "cpu_ms_per_req", "rss_mb", "idle_rss_mb")
    return {
        k: {f: sum(x[f] for x in v) / len(v) for f in fields}
        | {"errors": sum(x["errors"] for x in v)}
        for k, v in cells.items()
    }


FOREST, IRIS = "cancer-forest100", "iris-logreg"


def targets(rows: list[dict[str, Any]]) -> str:
    """The serving issue's goals, as ratios of this run: Orchard's server against KServe's
    on the same protocol, 1 row at concurrency 16 (HTTP V2, then gRPC)."""
    summary = summarize(rows)
    lines = ["| target | goal | this run | met |", "|---|---|---|---|"]

    def add(what: str, goal: str, value: float | None, met: bool | None) -> None:
        shown = "-" if value is None else f"{value:.2f}"
        lines.append(f"| {what} | {goal} | {shown} | {'-' if met is None else met} |")

    for proto in ("v2", "grpc"):
        cell = {
            (m, s): summary.get((m, 1, 16, proto, s))
            for m in (FOREST, IRIS) for s in ("orchard", "kserve")
        }  # fmt: skip

        def ratio(m: str, f: str, cell: Any = cell) -> float | None:
            a, b = cell[(m, "orchard")], cell[(m, "kserve")]
            return a[f] / b[f] if a and b and b[f] else None

        forest, iris = ratio(FOREST, "rps"), ratio(IRIS, "rps")
        p99 = ratio(FOREST, "p99_ms")
        add(f"{proto}: forest req/s vs KServe", ">= 50", forest,
            None if forest is None else forest >= 50)  # fmt: skip
        add(f"{proto}: forest p99 vs KServe", "<= 1", p99, None if p99 is None else p99 <= 1)
        add(f"{proto}: iris req/s vs KServe", ">= 20", iris,
            None if iris is None else iris >= 20)  # fmt: skip
        of, oi = cell[(FOREST, "orchard")], cell[(IRIS, "orchard")]
        share = of["rps"] / oi["rps"] if of and oi and oi["rps"] else None
        add(f"{proto}: Orchard forest req/s / iris req/s", ">= 0.6", share,
            None if share is None else share >= 0.6)  # fmt: skip
    for m in (FOREST, IRIS):
        o = summary.get((m, 1, 16, "v2", "orchard"))
        k = summary.get((m, 1, 16, "v2", "kserve"))
        for f, what in (("idle_rss_mb", "idle"), ("rss_mb", "loaded")):
            r = o[f] / k[f] if o and k and k[f] else None
            add(f"{m}: {what} RSS vs KServe", "<= 1", r, None if r is None else r <= 1)
    return "\n".join(lines)


def report(rows: list[dict[str, Any]]) -> str:
    """A Markdown table: mean of the passes per cell, and ratios against KServe on the same
    protocol (V1 against KServe's V2)."""
    summary = summarize(rows)
    lines = [
        "| model | rows | conc | proto | server | req/s | p50 ms | p99 ms | CPU ms/req "
        "| RSS MB (idle) | req/s vs KServe | p99 vs KServe | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, n, conc, proto, server), s in sorted(summary.items()):
        ref = summary.get((model, n, conc, "v2" if proto == "v1" else proto, "kserve"))
        ratio = f"{s['rps'] / ref['rps']:.2f}x" if ref else "-"
        p99 = f"{s['p99_ms'] / ref['p99_ms']:.2f}x" if ref else "-"
        lines.append(
            f"| {model} | {n} | {conc} | {proto} | {server} | {s['rps']:.0f} "
            f"| {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['cpu_ms_per_req']:.3f} "
            f"| {s['rss_mb']:.0f} ({s['idle_rss_mb']:.0f}) | {ratio} | {p99} | {s['errors']} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
