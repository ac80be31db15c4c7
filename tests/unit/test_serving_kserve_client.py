"""`orchard serve` as KServe's own clients use it (the `kserve` SDK, unmodified).

InferenceRESTClient over V2 (binary tensors in and out, requested outputs, probabilities,
the id, health, an error's message) and V1 (`GET /` liveness, `instances`), and
InferenceGRPCClient (health, infer), against a real server process on loopback serving
iris. The SDK pins protobuf 6 and pandas 2, which this project's environment does not
take, so the clients run from the KServe environment the serving benchmark runs KServe's
own server from (`bench/serving.py`, `ensure_envs`: bench/envs/kserve, made with pip on
first use), as a script (clients/kserve_client.py) printing what they got.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_serving_support import Served, serving_iris

from orchard.serving.runtime import PROBABILITY_TOLERANCE

HERE = Path(__file__).resolve().parent
BENCH = HERE.parents[1] / "bench"
ROWS = np.array(
    [[5.1, 3.5, 1.4, 0.2], [6.2, 2.9, 4.3, 1.3], [7.7, 3.0, 6.1, 2.3], [5.9, 3.0, 5.1, 1.8]]
)


@pytest.fixture(scope="module")
def kserve_python() -> Path:
    sys.path.insert(0, str(BENCH))
    try:
        import serving as bench_serving  # bench/serving.py
    finally:
        sys.path.remove(str(BENCH))
    bench_serving.ensure_envs({"kserve"})
    return Path(bench_serving.ENVS) / "kserve" / "bin" / "python"


@pytest.fixture(scope="module")
def got(
    kserve_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[dict[str, Any], Served]]:
    with serving_iris(tmp_path_factory.mktemp("iris")) as served:
        done = subprocess.run(
            [str(kserve_python), str(HERE / "clients" / "kserve_client.py"), served.server.base,
             served.server.grpc_target, "iris", json.dumps(ROWS.tolist())],
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        yield json.loads(done.stdout.strip().splitlines()[-1]), served


def test_health_over_v2_v1_and_grpc(got: tuple[dict[str, Any], Served]) -> None:
    found, _ = got
    for key in ("v2_live", "v2_ready", "v2_model_ready", "v1_live", "v1_model_ready",
                "grpc_live", "grpc_ready", "grpc_model_ready"):  # fmt: skip
        assert found[key] is True, key


def test_binary_tensors_requested_outputs_and_probabilities(
    got: tuple[dict[str, Any], Served],
) -> None:
    found, served = got
    labels = served.model.predict(ROWS).tolist()
    proba = served.model.predict_proba(ROWS)
    for way in ("v2_binary", "grpc"):
        answer = found[way]
        assert set(answer) == {"id", "output-0", "predict_proba"}, way
        assert answer["id"] == "kserve-1"
        assert answer["output-0"] == labels, way
        np.testing.assert_allclose(answer["predict_proba"], proba, atol=PROBABILITY_TOLERANCE)
    # Without outputs asked for, the labels alone, as JSON.
    assert found["v2_json"] == {"id": "kserve-1", "output-0": labels}
    assert found["v1_predictions"] == labels


def test_an_error_reaches_the_client_with_its_message(got: tuple[dict[str, Any], Served]) -> None:
    found, _ = got
    error = found["v2_error"]
    assert error is not None and error["status"] == 400
    # The server's own message, which the SDK takes from the JSON body's "error".
    assert "input 'input-0': shape [4, 2] has 2 columns, the model takes 4" in error["message"]
