"""Shared pieces of the serving tests: real trained artifacts and a real server on loopback.

Artifacts are small scikit-learn pipelines trained here and written in the artifact
format (docs/artifact-format.md). `running_server` starts uvicorn with the app on a free
port of 127.0.0.1 in a thread of this process, configured as `orchard serve` configures
it (`main.server_config`: the guarded protocol, the app's limits), so tests can reach
the app's state. `ServeProcess` runs `orchard serve` itself, in its own process, for
tests that need the whole command (or a process of its own to measure); `serving` gives
one with the model it serves, and `serving_iris` and `serving_penguins` the two that the
tritonclient tests, HTTP and gRPC, drive.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np

from orchard.serving.app import App
from orchard.serving.artifact import verify
from orchard.serving.main import build_runner, server_config


def write_artifact(
    root: Path, model: Any, inputs: list[dict[str, str]], task: str = "classification",
    name: str = "model", extra: dict[str, Any] | None = None, heldout: Any = None,
) -> Path:  # fmt: skip
    """model.joblib plus a metadata.json listing its sha256, in the trainer's format; with
    `heldout` (a DataFrame of the inputs), heldout.parquet too, which the server's parity
    check (serving/runtime.py) reads."""
    import sklearn

    root.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, root / "model.joblib")
    digest = "sha256:" + hashlib.sha256((root / "model.joblib").read_bytes()).hexdigest()
    files = {"model.joblib": digest}
    if heldout is not None:
        heldout.assign(y=0).to_parquet(root / "heldout.parquet", index=False)
        raw = (root / "heldout.parquet").read_bytes()
        files["heldout.parquet"] = "sha256:" + hashlib.sha256(raw).hexdigest()
        held = {"file": "heldout.parquet", "rows": len(heldout), "target": "y"}
        extra = {"heldout": held, **(extra or {})}
    classes = [c.item() if hasattr(c, "item") else c for c in getattr(model, "classes_", [])]
    metadata = {
        "formatVersion": 1,
        "model": name,
        "task": task,
        "estimator": {"name": type(model).__name__, "params": {}},
        "metrics": {},
        "framework": {"name": "scikit-learn", "version": sklearn.__version__},
        "dataset": {
            "uri": f"builtin:{name}",
            "digest": "sha256:" + "0" * 64,
            "rows": 0,
            "target": "y",
        },
        "inputs": inputs,
        "output": {"name": "y", "type": "string" if task == "classification" else "number"}
        | ({"classes": classes} if classes else {}),
        "files": files,
        "createdAt": "2026-11-27T10:00:00Z",
        **(extra or {}),
    }
    (root / "metadata.json").write_text(json.dumps(metadata, indent=2))
    return root


def iris_artifact(root: Path) -> Path:
    """Logistic regression on iris, fitted on a plain array (integer classes)."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(
        data.data, data.target
    )
    cols = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    inputs = [{"name": c, "type": "number"} for c in cols]
    return write_artifact(root, model, inputs, name="iris", heldout=_frame(data.data, cols))


def iris_artifact_with_baselines(root: Path) -> Path:
    """The iris model of `iris_artifact` with the trainer's baselines in its metadata:
    feature and prediction drift bins, and the calibration of its confidence."""
    import pandas as pd
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from orchard.trainer.artifact import feature_stats
    from orchard.trainer.evaluate import calibration, prediction_stats

    data = load_iris()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500))
    model.fit(data.data[::2], data.target[::2])
    cols = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    inputs = [{"name": c, "type": "number"} for c in cols]
    held_out = data.data[1::2]
    extra = {
        "featureStats": feature_stats(pd.DataFrame(data.data[::2], columns=cols), inputs),
        "predictionStats": prediction_stats(model.predict(held_out), "classification"),
        "calibration": calibration(model, held_out, pd.Series(data.target[1::2])),
    }
    return write_artifact(
        root, model, inputs, name="iris", extra=extra, heldout=_frame(held_out, cols)
    )


def forest_artifact(root: Path, n_estimators: int = 100) -> Path:
    """A random forest on breast_cancer, fitted on a plain array."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import RandomForestClassifier

    data = load_breast_cancer()
    model = RandomForestClassifier(n_estimators=n_estimators, random_state=0).fit(
        data.data, data.target
    )
    inputs = [{"name": f"f{i}", "type": "number"} for i in range(data.data.shape[1])]
    held = _frame(data.data[::3], [c["name"] for c in inputs])
    return write_artifact(root, model, inputs, name="cancer", heldout=held)


MIXED_INPUTS = [
    {"name": "bill_length_mm", "type": "number"},
    {"name": "flipper_length_mm", "type": "number"},
    {"name": "island", "type": "string"},
    {"name": "sex", "type": "string"},
]


def mixed_frame(n: int = 120, seed: int = 0) -> tuple[Any, Any]:
    """Penguin-like rows with categorical columns and missing values, and their labels."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    island = rng.choice(["Biscoe", "Dream", "Torgersen"], n)
    sex = rng.choice(["male", "female"], n).astype(object)
    bill = rng.normal(44, 5, n) + (island == "Dream") * 4
    flipper = rng.normal(200, 14, n)
    bill[::11] = np.nan
    sex[::7] = np.nan
    frame = pd.DataFrame(
        {"bill_length_mm": bill, "flipper_length_mm": flipper, "island": island, "sex": sex}
    )
    species = np.where(island == "Dream", "Chinstrap", np.where(bill > 45, "Gentoo", "Adelie"))
    return frame, species


def mixed_artifact(root: Path, handle_unknown: str = "error") -> Path:
    """A ColumnTransformer pipeline fitted on a DataFrame: imputers, one-hot, a tree.

    `handle_unknown="error"` makes an unseen category raise in the model (a 500);
    the trainer's own pipelines use "ignore".
    """
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder
    from sklearn.tree import DecisionTreeClassifier

    frame, species = mixed_frame()
    pre = ColumnTransformer(
        [
            ("num", SimpleImputer(strategy="median"), ["bill_length_mm", "flipper_length_mm"]),
            (
                "cat",
                make_pipeline(
                    SimpleImputer(strategy="most_frequent"),
                    OneHotEncoder(handle_unknown=handle_unknown),
                ),
                ["island", "sex"],
            ),
        ]
    )
    model = make_pipeline(pre, DecisionTreeClassifier(random_state=0)).fit(frame, species)
    held, _ = mixed_frame(60, seed=1)
    return write_artifact(root, model, MIXED_INPUTS, name="penguins", heldout=held)


def regression_artifact(root: Path) -> Path:
    """A linear regression on diabetes (value histogram instead of class counts)."""
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    data = load_diabetes()
    model = Ridge().fit(data.data, data.target)
    inputs = [{"name": f"x{i}", "type": "number"} for i in range(data.data.shape[1])]
    held = _frame(data.data[::4], [c["name"] for c in inputs])
    return write_artifact(root, model, inputs, task="regression", name="diabetes", heldout=held)


def _frame(rows: Any, columns: list[str]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def running_server(
    app: App, wait_ready: bool = True, host: str = "127.0.0.1", port: int | None = None
) -> Iterator[str]:
    """uvicorn (uvloop + httptools) serving `app` on `host`; yields the base URL."""
    import httpx
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(server_config(app, host, port, "warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://{host}:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            r = httpx.get(f"{base}/v2/health/ready" if wait_ready else f"{base}/v2/health/live")
            if r.status_code == 200:
                break
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError("server did not come up")
        time.sleep(0.02)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(10)


def app_for(model_dir: Path, name: str, expected_digest: str | None = None, **kwargs: Any) -> App:
    """The app `orchard serve` would build for an artifact directory."""
    artifact = verify(model_dir, expected_digest)
    return App(name, lambda: build_runner(artifact), **kwargs)


class ServeProcess:
    """`orchard serve` in its own process on a free port of 127.0.0.1, ready once started;
    its output goes to `log`. `args` are more flags of `orchard serve`; gRPC listens on
    another free port (`grpc_port`, `grpc_target`) unless they say `--grpc-port`."""

    host = "127.0.0.1"  # never anything else

    def __init__(self, model_dir: Path, name: str, log: Path, *args: str) -> None:
        import httpx

        self.port = free_port()
        self.base = f"http://{self.host}:{self.port}"
        self.grpc_port = 0 if "--grpc-port" in args else free_port()
        self.grpc_target = f"{self.host}:{self.grpc_port}"
        grpc = ["--grpc-port", str(self.grpc_port)] if self.grpc_port else []
        self.log = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "orchard.cli", "serve", "--model-dir", str(model_dir),
             "--model-name", name, "--host", self.host, "--port", str(self.port), *grpc, *args],
            stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                self.log.close()
                raise AssertionError(log.read_text())
            try:
                if httpx.get(f"{self.base}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError("orchard serve did not become ready")
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.log.close()


@dataclass
class Served:
    """A served model: its `orchard serve` process and the model itself."""

    server: ServeProcess
    model: Any


@contextlib.contextmanager
def serving(artifact: Path, name: str, log: Path, *args: str) -> Iterator[Served]:
    server = ServeProcess(artifact, name, log, *args)
    try:
        yield Served(server, joblib.load(artifact / "model.joblib"))
    finally:
        server.stop()


def serving_iris(root: Path) -> contextlib.AbstractContextManager[Served]:
    """iris (integer classes with probabilities) as version 3, its files under `root`."""
    return serving(iris_artifact(root / "a"), "iris", root / "log", "--model-version", "3")


def serving_penguins(root: Path) -> contextlib.AbstractContextManager[Served]:
    """Penguin-like rows (numeric and string columns, missing values, string classes),
    an unseen category ignored."""
    return serving(mixed_artifact(root / "a", handle_unknown="ignore"), "penguins", root / "log")
