"""The ASGI app: the Open Inference Protocol V1 and V2 over REST, routed by `ROUTES`.

Routes (`{m}` is the served model's name; `/versions/{v}` may follow it in V2 paths):

    GET  /v2/health/live   /v2/health/ready   /v2   /v2/models/{m}   /v2/models/{m}/ready
    POST /v2/models/{m}/infer   /v2/models/{m}/feedback     GET  /v2/models/{m}/monitoring
    GET  /   /v1/models   /v1/models/{m}      POST /v1/models/{m}:predict
    GET  /metrics

`GET /` is KServe's V1 liveness (`{"status": "alive"}`). What an inference request asks
back is `outputs` (the labels, class probabilities; JSON or binary); a V2 body may carry
binary tensors after its JSON (`tensors`); a request body may be compressed, and an
answer is compressed when the client accepts it (`encoding`). The Open Inference
Protocol's gRPC service (`grpc_service`, on its own port, a `Companion` the lifespan
starts and stops) answers through the same `predict`, errors and metrics.

A path that names a model or a version the server does not serve is a 404 before its
method is looked at, and so is a path no route matches; both are counted under endpoint
`unknown`. A wrong method is a 405, counted under the route's endpoint.

Errors are `{"error": "..."}` on one line, with the reason counted in
`orchard_request_errors_total`. Everything a client gets wrong is a 4xx, its error and
not the served version's (the canary analysis counts only 5xx against a version):

======  ====================  ==========================================================
status  reason                when
======  ====================  ==========================================================
400     bad_request           the body is not JSON, or not rows in a form of the protocol, or
                              its binary tensors or compressed data do not match what it
                              says; an unknown requested output; an `id` that is not a string
400     invalid_value         a number beyond float32's range (`limits.MAX_ABS_VALUE`), a
                              JSON number too large for a double, or a value of the wrong
                              type for its column: refused before the model sees it
404     not_found             an unknown model, version or path
404     unmatched             feedback for an id no pod of the deployment answered (or one
                              forgotten); its labels are counted as unmatched
405     method_not_allowed    a wrong method (with an `allow` header)
408     body_timeout          the body did not arrive within `--body-timeout`
409     already_labelled      a second feedback for the same request
413     too_large             a body over `--max-body-bytes` (refused on its Content-Length
                              before it is read, when it has one), or one that decompresses
                              to more than that
413     too_many_rows         more rows than `--max-request-rows`, or a body with more values
                              than that many rows hold (refused before it is decoded)
415     unsupported_encoding  a Content-Encoding other than gzip, deflate or identity
503     not_ready             until the model is loaded
500     prediction_failed     the model raised on rows that passed validation: the version's
                              fault, so a canary that raises where the stable answers fails
500     internal              a fault of the server
======  ====================  ==========================================================

Every inference response carries an `id`: the request's own (a string; any other type
is a 400), or one the server makes. A version in a path must be the one served: an empty
one (`/versions//infer`) is a 404 like any other. Feedback (`{"id", "labels"}`,
`orchard.serving.feedback`) labels that request's rows; a malformed body, a label count
that is not the request's row count, or a label of the wrong type for the model is a 400
naming the problem.

A request with the header `Orchard-Replay` (`contracts.REPLAY_HEADER`, any value) is a
replayed one, sent by `orchard replay` so that a canary step with too few requests can
conclude: it is answered exactly like any other and counted in the request metrics, but
its classes go to `orchard_replay_predictions_total` (a regression's values nowhere), its
rows to no input, drift or confidence counter, and it is neither remembered for feedback
(feedback for its id is unmatched) nor collected; `orchard_replay_requests_total` counts
them.

An answer given before the request's body was read closes the connection. The HTTP
protocol (`protocol`) answers 408, 431 and 503 itself, before any request reaches the
app, and counts those in `orchard_connections_dropped_total`. Bodies over
`limits.PARSE_INLINE_BYTES` are decoded and checked on a parse thread, so health checks
keep their turn on the event loop while a large body is decoded.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from orchard.contracts import INFERENCE_ENDPOINTS, REPLAY_HEADER, Endpoint
from orchard.serving import encoding, outputs, tensors
from orchard.serving.batching import Batcher, PredictionFailed
from orchard.serving.collection import Collector
from orchard.serving.feedback import AlreadyLabelled, RecentPredictions, parse_feedback, score
from orchard.serving.inputs import BadRequest, InvalidValue, Rows, TooManyRows
from orchard.serving.limits import PARSE_INLINE_BYTES, Limits
from orchard.serving.metrics import Metrics
from orchard.serving.model import BatchResult, ModelRunner, Prediction
from orchard.serving.monitoring import pod_view
from orchard.serving.peers import FORWARDED_HEADER, Peers

log = logging.getLogger("orchard.serving")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_MESSAGE_CHARS = 300  # of an error message
_CLOSE = (b"connection", b"close")
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_PLATFORM = "sklearn"
_REPLAY = REPLAY_HEADER.encode()
_HEADER_LENGTH = tensors.HEADER_LENGTH.encode()
_JSON = b"application/json"
_OCTETS = b"application/octet-stream"  # a JSON header and binary tensors
_PROMETHEUS = b"text/plain; version=0.0.4"
_V2_TYPES = {"number": "FP64", "integer": "INT64", "boolean": "BOOL", "string": "BYTES"}


class HTTPError(Exception):
    """An error answer: status, reason (for metrics) and a one-line message."""

    def __init__(self, status: int, reason: str, message: str, allow: str | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.allow = status, reason, message, allow


class Companion(Protocol):
    """A server that runs beside the app on its event loop (the gRPC one), started once
    the batcher runs and stopped before it stops."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclass(slots=True)  # not frozen: one per request, and a frozen one takes 1 µs to build
class Reply:
    """A response body, its content type, and headers beyond the usual ones."""

    body: bytes
    content_type: bytes = _JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


@dataclass(slots=True)  # not frozen: as Reply
class Decoded:
    """An inference request, read: its id, rows, row count and the outputs it asks for."""

    id: str | None
    rows: Rows
    n: int
    wanted: tuple[outputs.Wanted, ...]


@dataclass(frozen=True)
class Route:
    """One method on one path. `path` is a regular expression for the whole path, whose
    `model` group names the model; `handler` names the `App` method that answers (None:
    an inference request, whose body is read, decoded and batched), called with the
    scope and the body when `body` is set."""

    method: str
    path: str
    endpoint: Endpoint
    handler: str | None = None
    body: bool = False


_V2_MODEL = "/v2/models/(?P<model>[^/]*)"
ROUTES = (  # patterns are tried in this order: inference first
    Route("POST", _V2_MODEL + "/infer", Endpoint.V2_INFER),
    Route("POST", "/v1/models/(?P<model>.*):predict", Endpoint.V1_PREDICT),
    Route("POST", _V2_MODEL + "/feedback", Endpoint.V2_FEEDBACK, "_feedback", body=True),
    Route("GET", "/v2/health/live", Endpoint.V2_HEALTH_LIVE, "_live"),
    Route("GET", "/v2/health/ready", Endpoint.V2_HEALTH_READY, "_ready"),
    Route("GET", "/v2/?", Endpoint.V2_SERVER_METADATA, "server_metadata"),
    Route("GET", _V2_MODEL + "/?", Endpoint.V2_MODEL_METADATA, "model_metadata"),
    Route("GET", _V2_MODEL + "/ready", Endpoint.V2_MODEL_READY, "_model_ready"),
    Route("GET", _V2_MODEL + "/monitoring", Endpoint.V2_MONITORING, "_monitoring"),
    Route("GET", "/v1/models", Endpoint.V1_MODELS, "_v1_models"),
    Route("GET", "/v1/models/(?P<model>[^/:]*)", Endpoint.V1_MODEL, "_v1_model"),
    Route("GET", "/metrics", Endpoint.METRICS, "_render_metrics"),
    Route("GET", "/", Endpoint.V1_LIVE, "_v1_live"),
)
# A V2 path may name the version after the model: /v2/models/{m}/versions/{v}/ready is
# /v2/models/{m}/ready once the model and the version are checked (once: no second one).
_VERSIONED = re.compile(_V2_MODEL + "/versions/(?P<version>[^/]*)", re.DOTALL)

Methods = dict[str, Route]  # the routes of one path, by method
Patterns = list[tuple[re.Pattern[str], Methods]]


def _index(routes: tuple[Route, ...]) -> tuple[dict[str, Methods], Patterns]:
    """The table for lookup: literal paths by path, then patterns in table order (no path
    matches two patterns), each with its routes by method."""
    literal: dict[str, Methods] = {}
    patterns: dict[str, Methods] = {}
    for route in routes:
        by_path = literal if re.escape(route.path) == route.path else patterns
        by_path.setdefault(route.path, {})[route.method] = route
    return literal, [(re.compile(p, re.DOTALL), m) for p, m in patterns.items()]


_LITERAL, _PATTERNS = _index(ROUTES)


def client_error(exc: BadRequest) -> HTTPError:
    if isinstance(exc, TooManyRows):
        return HTTPError(413, "too_many_rows", str(exc))
    if isinstance(exc, InvalidValue):
        return HTTPError(400, "invalid_value", str(exc))
    return HTTPError(400, "bad_request", str(exc))


class App:
    """Serves one model. `load` (run on a thread at startup) returns the model's runner."""

    def __init__(
        self,
        name: str,
        load: Callable[[], ModelRunner] | None = None,
        *,
        version: str | None = None,
        max_batch_size: int = 32,
        max_batch_wait: float = 0.002,
        max_batch_rows: int = 2048,
        info: dict[str, str] | None = None,
        on_load_failed: Callable[[BaseException], None] | None = None,
        limits: Limits | None = None,
        peers: Peers | None = None,
        collector: Collector | None = None,
        servers: Sequence[Companion] = (),
    ) -> None:
        self.name = name
        self.limits = limits or Limits()
        self.peers = peers
        self.collector = collector
        self.servers = tuple(servers)
        self.recent = RecentPredictions(self.limits.feedback_requests, self.limits.feedback_rows)
        self.version = version
        self.load = load
        self.info = info or {}
        self.on_load_failed = on_load_failed
        self.runner: ModelRunner | None = None
        self.metrics = Metrics(name)
        self.metrics.collection = collector.counts if collector is not None else None
        self.batcher = Batcher(
            self._predict,
            max_batch_size,
            max_batch_wait,
            self._observed,
            max_rows=max_batch_rows,
        )
        self._estimates: set[asyncio.Task[None]] = set()  # samples being scored
        self.loading: asyncio.Task[None] | None = None
        self.load_error: BaseException | None = None
        # One thread decodes large bodies: one at a time, so their memory does not add up.
        self.parser = ThreadPoolExecutor(1, thread_name_prefix="orchard-parse")

    # --- lifecycle ----------------------------------------------------------------------

    def set_runner(self, runner: ModelRunner) -> None:
        """Make the model live (the app answers 503 on model routes until then)."""
        self.metrics.set_model(
            runner.schema.names, [c.numeric for c in runner.schema.columns],
            not runner.classification, {**self.info, "runtime": runner.runtime.name},
        )  # fmt: skip
        self.metrics.set_baseline(runner.drift_bins, runner.prediction_bins, runner.confidence_bins)
        self.runner = runner

    def _observed(self, result: BatchResult, rows: int, requests: int) -> None:
        """A batch was answered: count it, and score its sample for the estimate."""
        self.metrics.observe_batch(result, rows, requests)
        if result.sample is not None and self.runner is not None:
            task = asyncio.get_running_loop().create_task(
                self._estimate(self.runner, result.sample)
            )
            self._estimates.add(task)
            task.add_done_callback(self._estimates.discard)

    async def _estimate(self, runner: ModelRunner, sample: Rows) -> None:
        try:
            counts = await self.batcher.between_batches(runner.confidence_counts, sample)
        except (RuntimeError, asyncio.CancelledError):  # the server is shutting down
            return
        self.metrics.observe_confidence(counts)

    def _predict(
        self,
        parts: list[Rows],
        sizes: list[int],
        replayed: list[bool] | None,
        proba: list[bool] | None,
    ) -> BatchResult:
        assert self.runner is not None
        return self.runner.predict_batch(parts, sizes, replayed, proba)

    async def _load(self) -> None:
        assert self.load is not None
        try:
            runner = await asyncio.get_running_loop().run_in_executor(None, self.load)
        except Exception as exc:
            log.error("cannot load model %r: %s: %s", self.name, type(exc).__name__, exc)
            self.load_error = exc
            if self.on_load_failed is not None:
                self.on_load_failed(exc)
            return
        self.set_runner(runner)
        log.info("model %r is ready", self.name)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self.batcher.start()
                if self.collector is not None:
                    self.collector.start()
                if self.load is not None and self.runner is None:
                    self.loading = asyncio.get_running_loop().create_task(self._load())
                try:
                    for server in self.servers:
                        await server.start()
                except Exception as exc:  # a port taken: uvicorn logs it and exits
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for server in self.servers:  # its calls under way are answered first
                    await server.stop()
                self.runner = None  # not ready while draining
                await self.batcher.stop()
                self.parser.shutdown(wait=False, cancel_futures=True)
                if self.collector is not None:  # after the last answer: all of it is written
                    await self.collector.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- HTTP ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        method: str = scope["method"]
        endpoint: str = Endpoint.UNKNOWN
        status = 200
        replay = False
        unread = _has_body(scope)  # a body left unread: close the connection after answering
        try:
            route, allowed = self._route(method, scope["path"])
            endpoint = route.endpoint
            if route.method != method:
                raise HTTPError(
                    405, "method_not_allowed", f"{method} is not allowed here", ", ".join(allowed)
                )
            if route.handler is None:
                replay = _header(scope, _REPLAY) is not None
                runner = self.ready_runner()
                body = await self._read_body(scope, receive)
                if body is None:
                    return
                unread = False
                v2 = endpoint == Endpoint.V2_INFER
                header_length = _header_length(scope) if v2 else None
                request = await self._decode(runner, v2, body, header_length)
                del body  # only the rows are needed from here on
                payload: Any = await self._infer(runner, v2, request, replay)
            elif route.body:
                body = await self._read_body(scope, receive)
                if body is None:
                    return
                unread = False
                payload = await getattr(self, route.handler)(scope, body)
            else:
                payload = getattr(self, route.handler)()
            if isinstance(payload, Reply):
                reply = payload
            elif isinstance(payload, bytes):  # /metrics
                reply = Reply(payload, _PROMETHEUS)
            else:
                reply = Reply(orjson.dumps(payload, option=_DUMPS_OPTIONS))
            if len(reply.body) >= encoding.MIN_COMPRESSED_BYTES:
                await self._compress(scope, reply)
            await _send(send, 200, reply.body, reply.content_type, reply.headers)
        except HTTPError as err:
            status = err.status
            self.metrics.observe_error(endpoint, err.reason)
            extra = [(b"allow", err.allow.encode())] if err.allow else []
            if unread:
                extra.append(_CLOSE)
            message = one_line(err.message)
            await _send(send, status, orjson.dumps({"error": message}), extra=extra)
        except Exception as exc:
            log.exception("internal error on %s %s", method, one_line(scope["path"]))
            status = 500
            self.metrics.observe_error(endpoint, "internal")
            await _send(
                send, 500, orjson.dumps({"error": f"internal error: {type(exc).__name__}"}),
                extra=[_CLOSE] if unread else (),
            )  # fmt: skip
        timed = endpoint in INFERENCE_ENDPOINTS
        self.metrics.observe_request(
            endpoint, status, time.perf_counter() - start if timed else None
        )
        if replay:
            self.metrics.observe_replay(endpoint, status)

    def _route(self, method: str, path: str) -> tuple[Route, tuple[str, ...]]:
        """The route that answers `method` on `path` (else one on that path), and the
        methods allowed there; 404 for a path no route matches or a model not served."""
        target = path
        if (versioned := _VERSIONED.match(path)) is not None:
            name, version = versioned["model"], versioned["version"]
            self.check_model(name)
            self.check_version(name, version)
            target = f"/v2/models/{name}{path[versioned.end() :]}"
        methods = _LITERAL.get(target) or self._matching(target, path)
        route = methods.get(method) or next(iter(methods.values()))
        return route, tuple(methods)

    def _matching(self, target: str, path: str) -> Methods:
        """The routes of the first pattern `target` matches, once its model is checked."""
        for pattern, methods in _PATTERNS:
            if (params := pattern.fullmatch(target)) is not None:
                if "model" in pattern.groupindex:
                    self.check_model(params["model"])
                return methods
        raise HTTPError(404, "not_found", f"no route for {path}")

    def check_model(self, name: str) -> None:
        if name != self.name:
            raise HTTPError(
                404, "not_found", f"model {name!r} is not served here (this serves {self.name!r})"
            )

    def check_version(self, name: str, version: str) -> None:
        """404 unless `version` is the one served (an empty one never is)."""
        if not version or version != self.version:
            raise HTTPError(404, "not_found", f"model {name!r} has no version {version!r}")

    def ready_runner(self) -> ModelRunner:
        if self.runner is None:
            raise HTTPError(503, "not_ready", f"model {self.name!r} is not ready")
        return self.runner

    # --- handlers -----------------------------------------------------------------------

    def _live(self) -> dict[str, Any]:
        return {"live": True}

    def _ready(self) -> dict[str, Any]:
        self.ready_runner()
        return {"ready": True}

    def _model_ready(self) -> dict[str, Any]:
        self.ready_runner()
        return {"name": self.name, "ready": True}

    def _v1_live(self) -> dict[str, Any]:
        return {"status": "alive"}

    def server_metadata(self) -> dict[str, Any]:
        from orchard import __version__

        return {"name": "orchard", "version": __version__, "extensions": [tensors.EXTENSION]}

    def model_metadata(self) -> dict[str, Any]:
        runner = self.ready_runner()
        schema = runner.schema
        if schema.columns:
            inputs = [
                {"name": c.name, "datatype": _V2_TYPES[c.type], "shape": [-1]}
                for c in schema.columns
            ]
        else:
            inputs = [{"name": "input-0", "datatype": "FP64", "shape": [-1, schema.width or -1]}]
        meta: dict[str, Any] = {
            "name": self.name,
            "versions": [self.version] if self.version else [],
            "platform": _PLATFORM,
            "inputs": inputs,
            "outputs": outputs.metadata(runner.output_datatype, runner.class_list),
            # What answers (serving/runtime.py): onnx or sklearn, and why.
            "parameters": {"runtime": runner.runtime.name, "runtime_reason": runner.runtime.reason},
        }
        return meta

    async def _feedback(self, scope: Scope, body: bytes) -> dict[str, Any]:
        """Label the rows of an earlier answer: this pod's, else a peer's (`feedback`)."""
        runner = self.ready_runner()
        try:
            feedback = parse_feedback(orjson.loads(body))
        except orjson.JSONDecodeError as exc:
            raise HTTPError(400, "bad_request", f"malformed JSON: {exc}") from None
        except BadRequest as exc:
            raise HTTPError(400, "bad_request", str(exc)) from None
        if self.recent.knows(feedback.id):
            try:
                predictions = self.recent.take(feedback.id)
                scored = score(predictions, feedback.labels, runner.classification, runner.classes)
            except AlreadyLabelled as exc:
                raise HTTPError(409, "already_labelled", str(exc)) from None
            except BadRequest as exc:
                raise HTTPError(400, "bad_request", str(exc)) from None
            self.recent.labelled(feedback.id)
            self.metrics.observe_feedback(scored)
            if self.collector is not None:
                self.collector.record_labels(feedback.id, feedback.labels)
            return {"accepted": scored.rows}
        if _header(scope, FORWARDED_HEADER) is not None:  # a peer asks: only its own pod counts
            raise HTTPError(404, "not_found", f"no answer with id {feedback.id!r} here")
        answer = await self.peers.forward(scope["path"], body) if self.peers else None
        if answer is not None:
            return _relayed(*answer)
        self.metrics.observe_unmatched(len(feedback.labels))
        raise HTTPError(
            404, "unmatched",
            f"no pod of this deployment answered a request with id {feedback.id!r} "
            f"(or it was forgotten: each pod remembers its last "
            f"{self.limits.feedback_requests} answers); counted as unmatched",
        )  # fmt: skip

    def _monitoring(self) -> dict[str, Any]:
        """This pod's drift and accuracy since it started (`serving.monitoring`)."""
        self.ready_runner()
        return pod_view(self.metrics, self.version)

    def _v1_model(self) -> dict[str, Any]:
        return {"name": self.name, "ready": self.runner is not None}

    def _v1_models(self) -> dict[str, Any]:
        return {"models": [self.name]}

    def _render_metrics(self) -> bytes:
        return self.metrics.render()

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole request body within the limits, decompressed when it says it is
        compressed; None if the client went away."""
        limit = self.limits.max_body_bytes
        coding = _content_coding(scope)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            raise HTTPError(413, "too_large", f"body of {declared} bytes, over {limit}")
        try:
            async with asyncio.timeout(self.limits.body_timeout):
                body = await _receive_body(receive, limit)
        except TimeoutError:
            raise HTTPError(
                408, "body_timeout", f"body not received within {self.limits.body_timeout:g} s"
            ) from None
        if body is None or coding is None:
            return body
        loop = asyncio.get_running_loop()  # up to the body cap of work: off the event loop
        return await loop.run_in_executor(self.parser, _decompress, body, coding, limit)

    async def _decode(
        self, runner: ModelRunner, v2: bool, body: bytes, header_length: int | None
    ) -> Decoded:
        """The request, read (on the parse thread for a large body)."""
        if len(body) <= PARSE_INLINE_BYTES:
            return self._parse(runner, v2, body, header_length)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.parser, self._parse, runner, v2, body, header_length)

    def _parse(
        self, runner: ModelRunner, v2: bool, body: bytes, header_length: int | None
    ) -> Decoded:
        schema, max_rows = runner.schema, self.limits.max_request_rows
        try:
            binary = None
            if header_length is not None:  # a JSON header, then binary tensors
                body, binary = tensors.split(body, header_length)
            schema.check_body(body, max_rows)
            try:
                request = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                if "infinity" in str(exc):  # a number too large for a double, say 1e400
                    raise InvalidValue(f"a JSON number beyond a double's range: {exc}") from None
                raise BadRequest(f"malformed JSON: {exc}") from None
            if v2:
                rows, n = schema.parse_v2(request, max_rows, binary)
                wanted = outputs.requested_v2(request, runner.has_probabilities)
            else:
                rows, n = schema.parse_v1(request, max_rows)
                wanted = outputs.requested_v1(request, runner.has_probabilities)
            request_id = request.get("id")  # a dict by now: the parsers insist on an object
            if request_id is not None and not isinstance(request_id, str):
                raise BadRequest(f"'id' must be a string, not {type(request_id).__name__}")
            return Decoded(request_id, rows, n, wanted)
        except tensors.MalformedTensor as exc:
            raise HTTPError(400, "bad_request", str(exc)) from None
        except BadRequest as exc:
            raise client_error(exc) from None

    async def predict(self, request: Decoded, replay: bool = False) -> tuple[Prediction, str]:
        """The answer to a decoded request, and its id: batched with every other request
        (REST and gRPC alike), remembered for feedback and collected."""
        rows, n = request.rows, request.n
        try:
            prediction = await self.batcher.submit(
                rows, n, replay, outputs.wants_probabilities(request.wanted)
            )
        except PredictionFailed as exc:
            raise HTTPError(500, "prediction_failed", f"prediction failed: {exc}") from None
        predictions = prediction.labels
        response_id = request.id if request.id is not None else str(uuid.uuid4())
        if not replay:  # a replayed answer is no production data: no feedback, no collection
            self.recent.remember(response_id, predictions)  # for feedback on it
            if self.collector is not None:
                self.collector.record_request(response_id, rows, predictions, n)
        return prediction, response_id

    async def _infer(
        self, runner: ModelRunner, v2: bool, request: Decoded, replay: bool = False
    ) -> Reply:
        prediction, response_id = await self.predict(request, replay)
        if not v2:
            answer = outputs.v1_outputs(request.wanted, prediction, runner.class_list)
            answer["id"] = response_id
            return Reply(orjson.dumps(answer, option=_DUMPS_OPTIONS))
        tensors_out, chunks = outputs.v2_outputs(request.wanted, prediction, runner.class_list)
        response: dict[str, Any] = {
            "model_name": self.name,
            "id": response_id,
            "parameters": {},
            "outputs": tensors_out,
        }
        if self.version:
            response["model_version"] = self.version
        head = orjson.dumps(response, option=_DUMPS_OPTIONS)
        if not chunks:
            return Reply(head)
        length = (_HEADER_LENGTH, str(len(head)).encode())
        return Reply(b"".join([head, *chunks]), _OCTETS, (length,))

    async def _compress(self, scope: Scope, reply: Reply) -> None:
        """Compress the answer in the coding the client accepts, if any (a large one off
        the event loop)."""
        coding = encoding.accepted(_header(scope, b"accept-encoding"))
        if coding is None:
            return
        if len(reply.body) <= PARSE_INLINE_BYTES:
            reply.body = encoding.compress(reply.body, coding)
        else:
            loop = asyncio.get_running_loop()
            reply.body = await loop.run_in_executor(
                self.parser, encoding.compress, reply.body, coding
            )
        reply.headers += ((b"content-encoding", coding.encode()), (b"vary", b"accept-encoding"))


_RELAYED_REASONS = {400: "bad_request", 409: "already_labelled", 503: "not_ready"}


def _relayed(status: int, content: bytes) -> dict[str, Any]:
    """A peer's answer to forwarded feedback, as this pod's own."""
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise HTTPError(502, "internal", f"a peer answered feedback with status {status}")
    if status == 200:
        return answer
    message = str(answer.get("error") or f"a peer answered feedback with status {status}")
    raise HTTPError(status, _RELAYED_REASONS.get(status, "internal"), message)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


def _header_length(scope: Scope) -> int | None:
    """The binary tensor extension's `Inference-Header-Content-Length`, if given."""
    value = _header(scope, _HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise HTTPError(
            400, "bad_request", f"{tensors.HEADER_LENGTH} must be a byte count, not {value[:20]!r}"
        )
    return int(value)


def _content_coding(scope: Scope) -> str | None:
    """The request body's content coding (None: not compressed); 415 for an unknown one."""
    try:
        return encoding.coding(_header(scope, b"content-encoding"))
    except encoding.EncodingError as exc:
        raise HTTPError(exc.status, exc.reason, str(exc)) from None


def _decompress(body: bytes, coding: str, limit: int) -> bytes:
    try:
        return encoding.decompress(body, coding, limit)
    except encoding.EncodingError as exc:
        raise HTTPError(exc.status, exc.reason, str(exc)) from None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def _has_body(scope: Scope) -> bool:
    return bool(_content_length(scope)) or _header(scope, b"transfer-encoding") is not None


def one_line(text: str) -> str:
    """A message for a response or a log: one line, at most _MESSAGE_CHARS characters."""
    line = " ".join(text[: 2 * _MESSAGE_CHARS].split())
    return line if len(line) <= _MESSAGE_CHARS else line[: _MESSAGE_CHARS - 3] + "..."


async def _receive_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client went away; 413 beyond `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, "too_large", f"body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = _JSON,
    extra: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
