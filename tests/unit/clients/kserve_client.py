"""kserve's clients as their users write them, against a running server; prints JSON.

    <kserve env>/bin/python kserve_client.py <http base URL> <gRPC target> <model> <rows JSON>

Run by tests/unit/test_serving_kserve_client.py with the `kserve` SDK's own environment:
it pins protobuf and pandas versions this project's environment does not take.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import httpx
import numpy as np
from kserve import (
    InferenceGRPCClient,
    InferenceRESTClient,
    InferInput,
    InferRequest,
    RESTConfig,
)
from kserve.protocol.infer_type import RequestedOutput


def request(model: str, rows: np.ndarray, outputs: list[str] | None, binary: bool) -> InferRequest:
    tensor = InferInput("input-0", list(rows.shape), "FP64")
    tensor.set_data_from_numpy(rows, binary_data=binary)
    wanted = [RequestedOutput(n, {"binary_data": binary}) for n in outputs] if outputs else None
    return InferRequest(model, [tensor], request_id="kserve-1", request_outputs=wanted)


def outputs_of(response: Any) -> dict[str, Any]:
    return {o.name: o.as_numpy().tolist() for o in response.outputs}


async def main(base: str, target: str, model: str, rows: np.ndarray) -> dict[str, Any]:
    found: dict[str, Any] = {}
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    found["v2_live"] = await v2.is_server_live(base)
    found["v2_ready"] = await v2.is_server_ready(base)
    found["v2_model_ready"] = await v2.is_model_ready(base, model)
    both = ["output-0", "predict_proba"]
    binary = await v2.infer(base, request(model, rows, both, True), model_name=model)
    found["v2_binary"] = {"id": binary.id, **outputs_of(binary)}
    plain = await v2.infer(base, request(model, rows, None, False), model_name=model)
    found["v2_json"] = {"id": plain.id, **outputs_of(plain)}
    try:
        await v2.infer(base, request(model, rows[:, :2], None, True), model_name=model)
        found["v2_error"] = None
    except httpx.HTTPStatusError as exc:
        found["v2_error"] = {"status": exc.response.status_code, "message": str(exc)}
    await v2.close()

    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
    found["v1_live"] = await v1.is_server_live(base)
    found["v1_model_ready"] = await v1.is_model_ready(base, model)
    answer = await v1.infer(base, {"instances": rows.tolist()}, model_name=model)
    found["v1_predictions"] = answer["predictions"]
    await v1.close()

    async with InferenceGRPCClient(target, timeout=30) as grpc_client:
        found["grpc_live"] = await grpc_client.is_server_live()
        found["grpc_ready"] = await grpc_client.is_server_ready()
        found["grpc_model_ready"] = await grpc_client.is_model_ready(model)
        response = await grpc_client.infer(request(model, rows, both, True))
        found["grpc"] = {"id": response.id, **outputs_of(response)}
    return found


if __name__ == "__main__":
    base_url, grpc_target, name, data = sys.argv[1:5]
    print(json.dumps(asyncio.run(main(base_url, grpc_target, name, np.array(json.loads(data))))))
