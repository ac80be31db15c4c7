"""The Open Inference Protocol over gRPC: `inference.GRPCInferenceService` on its own port.

The protocol's own proto (`proto/open_inference_grpc.proto`, generated modules beside it)
serves ServerLive, ServerReady, ModelReady, ServerMetadata, ModelMetadata and ModelInfer
on `--grpc-port` (KServe's 8081; 0 turns it off), on the HTTP server's event loop: a
`grpc.aio` server runs on uvloop, started once the app has started and stopped, its
calls under way answered within `STOP_GRACE` seconds, before the app stops. Triton's
clients (`tritonclient.grpc`) speak to it unmodified: Triton's service is a superset with
the same package, names and field numbers.

An inference call takes the REST path from its decoded rows on: the same checks
(`inputs`), the same requested outputs (`outputs`: `output-0` or `predict`, and
`predict_proba`, FP64 `[rows, classes]`), the same batcher, feedback memory, collection
and metrics. Inputs come as typed `contents` (the field of their datatype:
`fp64_contents` for FP64, `int_contents` for INT8..INT32, ...; FP16 only raw) or as
`raw_input_contents`, one entry per input (what tritonclient sends); the answer comes the
way it was asked: `raw_output_contents` for raw inputs, as Triton answers, typed
`contents` otherwise. `predict_proba`'s class order is its parameter `classes`, a JSON
list in a string (a parameter holds no list), and the model metadata's property
`classes`. The response's `id` is the request's, or one the server makes, for feedback
over REST. The metadata key `orchard-replay` marks a replayed call, as the REST header.

Errors are the REST errors (`app`), as a status code with the same one-line message:

===================  =============================================================
gRPC code            REST status and reasons
===================  =============================================================
INVALID_ARGUMENT     400 bad_request, invalid_value (a message that does not parse too)
NOT_FOUND            404 not_found: an unknown model or version
RESOURCE_EXHAUSTED   413 too_many_rows; a message over `--max-body-bytes`, or a call
                     beyond `--max-connections` calls under way, is refused by gRPC
                     itself before the server sees it (and so is not counted)
UNAVAILABLE          503 not_ready: until the model is loaded
INTERNAL             500 prediction_failed, internal
UNIMPLEMENTED        a method of Triton's service this server has not (endpoint
                     `unknown`, counted as 404 not_found)
===================  =============================================================

Each call is counted in `orchard_requests_total` under its endpoint (`grpc_infer`,
`grpc_model_metadata`, `grpc_model_ready`, `grpc_server_metadata`, `grpc_server_live`,
`grpc_server_ready`) and the HTTP status its answer has over REST (200 for OK), its
errors in `orchard_request_errors_total` by the same reasons, and `grpc_infer` in the
latency histogram: the canary analysis counts its requests and its 5xx with REST's. A
call its client cancels is not counted. ModelReady answers `ready: false` while the model
loads (REST: 503); ServerReady likewise.

A message of over `limits.PARSE_INLINE_BYTES` is parsed and decoded on the app's parse
thread, as a REST body is, so health calls keep their turn on the event loop.

Health over gRPC too: `grpc.health.v1.Health` (grpcio-health-checking), what
Kubernetes' gRPC probes and grpc_health_probe ask. Its `Check` and `Watch` answer
SERVING for "" (the server) and for `inference.GRPCInferenceService` once the model is
loaded, NOT_SERVING while it loads, after a load that failed and while the server drains
at shutdown; any other service is NOT_FOUND. Health calls are not counted.

This module imports the generated messages, which register `inference.*` in protobuf's
default pool: a process that loads another client of the protocol (tritonclient.grpc)
cannot load this too. The server's tests drive it in its own process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias

import grpc
import numpy as np
import orjson
from google.protobuf.message import DecodeError
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from orchard.contracts import INFERENCE_ENDPOINTS, REPLAY_HEADER, Endpoint
from orchard.serving import outputs, tensors
from orchard.serving.app import App, Decoded, HTTPError, client_error, one_line
from orchard.serving.inputs import BadRequest
from orchard.serving.limits import PARSE_INLINE_BYTES
from orchard.serving.model import ModelRunner, Prediction, output_data
from orchard.serving.proto import open_inference_grpc_pb2 as pb

log = logging.getLogger("orchard.serving")

SERVICE = "inference.GRPCInferenceService"
DEFAULT_PORT = 8081  # KServe's
STOP_GRACE = 10.0  # seconds the calls under way have to finish at shutdown

_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    500: grpc.StatusCode.INTERNAL,
}
# The typed field of each datatype's values in InferTensorContents (FP16: raw only).
CONTENTS = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
_REPLAY = REPLAY_HEADER.lower()  # gRPC metadata keys are lower case

Context: TypeAlias = "aio.ServicerContext[Any, Any]"
Behavior: TypeAlias = Callable[[Any, Context], Awaitable[Any]]


def code_of(status: int) -> grpc.StatusCode:
    """The gRPC status code of a REST error status."""
    return _CODES.get(status, grpc.StatusCode.UNKNOWN)


class GRPCServer:
    """`GRPCInferenceService` for `app` on host:port; an `app.Companion`."""

    def __init__(self, app: App, host: str, port: int, grace: float = STOP_GRACE) -> None:
        self.app, self.address, self.grace = app, f"{host}:{port}", grace
        self.server: aio.Server | None = None
        self.health = HealthServicer()
        self._health_task: asyncio.Task[None] | None = None
        # method name: (endpoint, behaviour, request message class; None: raw bytes)
        self.methods: dict[str, tuple[Endpoint, Behavior, type[Any] | None]] = {
            "ServerLive": (Endpoint.GRPC_SERVER_LIVE, self._server_live, pb.ServerLiveRequest),
            "ServerReady": (Endpoint.GRPC_SERVER_READY, self._server_ready, pb.ServerReadyRequest),
            "ModelReady": (Endpoint.GRPC_MODEL_READY, self._model_ready, pb.ModelReadyRequest),
            "ServerMetadata": (
                Endpoint.GRPC_SERVER_METADATA, self._server_metadata, pb.ServerMetadataRequest,
            ),
            "ModelMetadata": (
                Endpoint.GRPC_MODEL_METADATA, self._model_metadata, pb.ModelMetadataRequest,
            ),
            "ModelInfer": (Endpoint.GRPC_INFER, self._model_infer, None),  # parsed here
        }  # fmt: skip

    async def start(self) -> None:
        limit = self.app.limits.max_body_bytes
        self.server = aio.server(
            maximum_concurrent_rpcs=self.app.limits.max_connections,
            options=[
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 0),  # a port in use is an error, never shared
            ],
        )
        self.server.add_generic_rpc_handlers((_Handlers(self),))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        try:
            self.server.add_insecure_port(self.address)
        except RuntimeError as exc:
            raise OSError(f"cannot listen for gRPC on {self.address}: {exc}") from None
        await self._set_health(self.app.runner is not None)
        await self.server.start()
        if self.app.runner is None:
            self._health_task = asyncio.get_running_loop().create_task(self._serving_once_loaded())
        log.info("gRPC GRPCInferenceService and grpc.health.v1.Health on %s", self.address)

    async def stop(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            self._health_task = None
        if self.server is not None:
            await self.health.enter_graceful_shutdown()  # NOT_SERVING while draining
            await self.server.stop(self.grace)
            self.server = None

    async def _set_health(self, ready: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if ready else (
            health_pb2.HealthCheckResponse.NOT_SERVING
        )  # fmt: skip
        for service in ("", SERVICE):
            await self.health.set(service, status)

    async def _serving_once_loaded(self) -> None:
        """SERVING when the app's model has loaded (it stays NOT_SERVING if that fails)."""
        loading = self.app.loading
        if loading is not None:
            await asyncio.wait([loading])
        await self._set_health(self.app.runner is not None)

    def handler(self, method: str) -> grpc.RpcMethodHandler[Any, Any]:
        """The handler of one method of the service (an unknown one: UNIMPLEMENTED)."""
        known = self.methods.get(method)
        if known is None:
            return grpc.unary_unary_rpc_method_handler(self._unimplemented(method))
        endpoint, behaviour, request_type = known
        response: Callable[[Any], bytes] = _serialize
        return grpc.unary_unary_rpc_method_handler(
            self._counted(endpoint, behaviour),
            request_deserializer=request_type.FromString if request_type else None,
            response_serializer=response,
        )

    def _counted(self, endpoint: Endpoint, behaviour: Behavior) -> Behavior:
        """`behaviour` answering errors as status codes, every call counted."""
        metrics = self.app.metrics
        timed = endpoint in INFERENCE_ENDPOINTS

        async def call(request: Any, context: Context) -> Any:
            start = time.perf_counter()
            status = 200
            try:
                return await behaviour(request, context)
            except HTTPError as err:
                status = err.status
                metrics.observe_error(endpoint, err.reason)
                await context.abort(code_of(status), one_line(err.message))
            except asyncio.CancelledError:  # the client went away: nothing answered
                status = 0
                raise
            except aio.AbortError:  # answered already
                raise
            except Exception as exc:
                log.exception("internal error on gRPC %s", endpoint)
                status = 500
                metrics.observe_error(endpoint, "internal")
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"
                )
            finally:
                if status:
                    seconds = time.perf_counter() - start if timed else None
                    metrics.observe_request(endpoint, status, seconds)
                    if timed and _replayed(context):
                        metrics.observe_replay(endpoint, status)

        return call

    def _unimplemented(self, method: str) -> Behavior:
        async def call(request: Any, context: Context) -> Any:
            self.app.metrics.observe_error(Endpoint.UNKNOWN, "not_found")
            self.app.metrics.observe_request(Endpoint.UNKNOWN, 404, None)
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, f"{one_line(method)} is not served here"
            )

        return call

    # --- health and metadata ----------------------------------------------------------

    async def _server_live(self, request: pb.ServerLiveRequest, context: Context) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def _server_ready(self, request: pb.ServerReadyRequest, context: Context) -> Any:
        return pb.ServerReadyResponse(ready=self.app.runner is not None)

    async def _model_ready(self, request: pb.ModelReadyRequest, context: Context) -> Any:
        self._check(request.name, request.version)
        return pb.ModelReadyResponse(ready=self.app.runner is not None)

    async def _server_metadata(self, request: pb.ServerMetadataRequest, context: Context) -> Any:
        meta = self.app.server_metadata()
        return pb.ServerMetadataResponse(
            name=meta["name"], version=meta["version"], extensions=meta["extensions"]
        )

    async def _model_metadata(self, request: pb.ModelMetadataRequest, context: Context) -> Any:
        self._check(request.name, request.version)
        meta = self.app.model_metadata()  # REST's, in the proto's terms
        properties: dict[str, str] = {key: str(value) for key, value in meta["parameters"].items()}
        for output in meta["outputs"]:
            classes = (output.get("parameters") or {}).get(outputs.CLASSES)
            if classes is not None:
                properties[outputs.CLASSES] = _json(classes)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=meta["name"], versions=meta["versions"], platform=meta["platform"],
            inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                    for t in meta["inputs"]],
            outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"])
                     for t in meta["outputs"]],
            properties=properties,
        )  # fmt: skip

    def _check(self, name: str, version: str) -> None:
        """404 for a model not served here, or a version (when one is named) not served."""
        self.app.check_model(name)
        if version:  # proto3: empty is not given
            self.app.check_version(name, version)

    # --- inference --------------------------------------------------------------------

    async def _model_infer(self, data: bytes, context: Context) -> Any:
        app = self.app
        if len(data) <= PARSE_INLINE_BYTES:
            request, raw = self._decode(data)
        else:
            loop = asyncio.get_running_loop()
            request, raw = await loop.run_in_executor(app.parser, self._decode, data)
        del data
        prediction, response_id = await app.predict(request, _replayed(context))
        return self._response(request, prediction, response_id, raw)

    def _decode(self, data: bytes) -> tuple[Decoded, bool]:
        """The request's rows and outputs, and whether its inputs came raw."""
        try:
            message = pb.ModelInferRequest.FromString(data)
        except DecodeError as exc:
            raise HTTPError(400, "bad_request", f"malformed ModelInferRequest: {exc}") from None
        self._check(message.model_name, message.model_version)
        runner = self.app.ready_runner()
        try:
            body, sections = _body(message)
            rows, n = runner.schema.parse_v2(
                body, self.app.limits.max_request_rows, sections=sections
            )
            wanted = outputs.requested_v2(body, runner.has_probabilities)
        except BadRequest as exc:
            raise client_error(exc) from None
        return Decoded(message.id or None, rows, n, wanted), sections is not None

    def _response(
        self, request: Decoded, prediction: Prediction, response_id: str, raw: bool
    ) -> pb.ModelInferResponse:
        runner: ModelRunner | None = self.app.runner
        classes = runner.class_list if runner is not None else None
        response = pb.ModelInferResponse(
            model_name=self.app.name, model_version=self.app.version or "", id=response_id
        )
        for wanted in request.wanted:
            values, datatype, parameters = outputs.tensor_values(wanted, prediction, classes)
            tensor = response.outputs.add(name=wanted.name, datatype=datatype, shape=values.shape)
            if outputs.CLASSES in parameters:
                tensor.parameters[outputs.CLASSES].string_param = _json(parameters[outputs.CLASSES])
            flat = values.ravel()
            if raw:
                response.raw_output_contents.append(tensors.encode(flat, datatype))
            else:
                _fill(tensor.contents, flat, datatype)
        return response


class _Handlers(grpc.GenericRpcHandler):
    """The service's methods by their full name; any other method: UNIMPLEMENTED."""

    def __init__(self, server: GRPCServer) -> None:
        self.server = server
        self.prefix = f"/{SERVICE}/"

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method: str = handler_call_details.method or ""
        name = method[len(self.prefix) :] if method.startswith(self.prefix) else method
        return self.server.handler(name)


def _body(message: pb.ModelInferRequest) -> tuple[dict[str, Any], list[memoryview | None] | None]:
    """The request as the REST parsers read it (`inputs`, `outputs`), and each input's raw
    bytes when they came as `raw_input_contents`."""
    raw = message.raw_input_contents
    if raw and len(raw) != len(message.inputs):
        raise BadRequest(f"{len(raw)} raw_input_contents for {len(message.inputs)} inputs")
    inputs: list[dict[str, Any]] = []
    for t in message.inputs:
        tensor: dict[str, Any] = {"name": t.name, "shape": list(t.shape), "datatype": t.datatype}
        if raw:
            if t.HasField("contents"):
                raise BadRequest(f"input {t.name[:40]!r}: both contents and raw_input_contents")
        else:
            tensor["data"] = _contents(t)
        inputs.append(tensor)
    body: dict[str, Any] = {"inputs": inputs}
    if message.outputs:
        body["outputs"] = [{"name": o.name} for o in message.outputs]
    return body, [memoryview(r) for r in raw] if raw else None


def _contents(t: pb.ModelInferRequest.InferInputTensor) -> list[Any] | None:
    """An input's typed values, as JSON would give them (text for BYTES); None for a
    datatype the protocol does not know (the parser names it)."""
    field = CONTENTS.get(t.datatype)
    if field is None:
        if t.datatype in tensors.DTYPES:  # FP16: no typed field
            raise BadRequest(f"input {t.name[:40]!r}: {t.datatype} comes as raw_input_contents")
        return None
    values = getattr(t.contents, field)
    if t.datatype != tensors.BYTES:
        return list(values)
    try:
        return [v.decode("utf-8") for v in values]
    except UnicodeDecodeError:
        raise BadRequest(f"input {t.name[:40]!r}: a BYTES element is not UTF-8 text") from None


def _fill(contents: pb.InferTensorContents, flat: np.ndarray[Any, Any], datatype: str) -> None:
    """An output's values into the typed field of its datatype."""
    field = getattr(contents, CONTENTS[datatype])
    if datatype == tensors.BYTES:
        field.extend(v.encode("utf-8") for v in output_data(flat))
    else:
        field.extend(flat.tolist())


def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _replayed(context: Context) -> bool:
    return any(key == _REPLAY for key, _ in context.invocation_metadata() or ())
