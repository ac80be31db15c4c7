"""The model server's route table: what every kind of path answers, and under which
endpoint label it is counted. In process, through the ASGI interface, before a model is
loaded (so model routes answer 503: the routing is what is pinned here)."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest

from orchard.contracts import Endpoint
from orchard.serving.app import _PATTERNS, ROUTES, App

NOT_SERVED = "model {!r} is not served here (this serves 'iris')"
NOT_READY = "model 'iris' is not ready"
NO_ROUTE = "no route for {path}"
NO_VERSION = "model 'iris' has no version {!r}"

CASES = [
    # method, path, status, endpoint label, error message (None: answered), allow header
    ("GET", "/v2/health/live", 200, "v2_health_live", None, ""),
    ("GET", "/v2/health/ready", 503, "v2_health_ready", NOT_READY, ""),
    ("GET", "/v2", 200, "v2_server_metadata", None, ""),
    ("GET", "/v2/", 200, "v2_server_metadata", None, ""),
    ("GET", "/", 200, "v1_live", None, ""),
    ("GET", "/metrics", 200, "metrics", None, ""),
    ("GET", "/v1/models", 200, "v1_models", None, ""),
    ("GET", "/v1/models/iris", 200, "v1_model", None, ""),
    ("GET", "/v2/models/iris", 503, "v2_model_metadata", NOT_READY, ""),
    ("GET", "/v2/models/iris/", 503, "v2_model_metadata", NOT_READY, ""),
    ("GET", "/v2/models/iris/ready", 503, "v2_model_ready", NOT_READY, ""),
    ("POST", "/v2/models/iris/infer", 503, "v2_infer", NOT_READY, ""),
    ("POST", "/v1/models/iris:predict", 503, "v1_predict", NOT_READY, ""),
    # the version may follow the model in V2 paths, once
    ("GET", "/v2/models/iris/versions/3", 503, "v2_model_metadata", NOT_READY, ""),
    ("GET", "/v2/models/iris/versions/3/", 503, "v2_model_metadata", NOT_READY, ""),
    ("GET", "/v2/models/iris/versions/3/ready", 503, "v2_model_ready", NOT_READY, ""),
    ("POST", "/v2/models/iris/versions/3/infer", 503, "v2_infer", NOT_READY, ""),
    ("POST", "/v2/models/iris/versions/9/infer", 404, "unknown", NO_VERSION.format("9"), ""),
    ("GET", "/v2/models/iris/versions/", 404, "unknown", NO_VERSION.format(""), ""),
    ("POST", "/v2/models/iris/versions//infer", 404, "unknown", NO_VERSION.format(""), ""),
    ("POST", "/v2/models/iris/versions/9/explain", 404, "unknown", NO_VERSION.format("9"), ""),
    ("POST", "/v2/models/nope/versions/3/explain", 404, "unknown", NOT_SERVED.format("nope"), ""),
    ("POST", "/v2/models/iris/versions/3/explain", 404, "unknown", NO_ROUTE, ""),
    ("POST", "/v2/models/iris/versions/3/versions/3/infer", 404, "unknown", NO_ROUTE, ""),
    ("GET", "/v2/models/iris/versions", 404, "unknown", NO_ROUTE, ""),
    # a model not served: 404 before the method is looked at
    ("POST", "/v2/models/nope/infer", 404, "unknown", NOT_SERVED.format("nope"), ""),
    ("GET", "/v2/models/nope/infer", 404, "unknown", NOT_SERVED.format("nope"), ""),
    ("GET", "/v2/models/nope", 404, "unknown", NOT_SERVED.format("nope"), ""),
    ("GET", "/v2/models/ready", 404, "unknown", NOT_SERVED.format("ready"), ""),
    ("GET", "/v2/models/", 404, "unknown", NOT_SERVED.format(""), ""),
    ("POST", "/v2/models/ir\nis/infer", 404, "unknown", NOT_SERVED.format("ir\nis"), ""),
    ("GET", "/v1/models/", 404, "unknown", NOT_SERVED.format(""), ""),
    ("GET", "/v1/models/nope", 404, "unknown", NOT_SERVED.format("nope"), ""),
    ("POST", "/v1/models/nope:predict", 404, "unknown", NOT_SERVED.format("nope"), ""),
    ("POST", "/v1/models/:predict", 404, "unknown", NOT_SERVED.format(""), ""),
    ("POST", "/v1/models/a/b:predict", 404, "unknown", NOT_SERVED.format("a/b"), ""),
    ("POST", "/v1/models/iris:x:predict", 404, "unknown", NOT_SERVED.format("iris:x"), ""),
    ("POST", "/v1/models/ir\nis:predict", 404, "unknown", NOT_SERVED.format("ir\nis"), ""),
    # the wrong method: 405, counted under the route's endpoint
    ("GET", "/v2/models/iris/infer", 405, "v2_infer", "GET is not allowed here", "POST"),
    ("GET", "/v1/models/iris:predict", 405, "v1_predict", "GET is not allowed here", "POST"),
    ("PUT", "/v2/models/iris/ready", 405, "v2_model_ready", "PUT is not allowed here", "GET"),
    ("POST", "/metrics", 405, "metrics", "POST is not allowed here", "GET"),
    ("POST", "/v1/models", 405, "v1_models", "POST is not allowed here", "GET"),
    ("POST", "/", 405, "v1_live", "POST is not allowed here", "GET"),
    # no route
    ("GET", "//", 404, "unknown", NO_ROUTE, ""),
    ("GET", "/v2//", 404, "unknown", NO_ROUTE, ""),
    ("GET", "/v2/health/live/", 404, "unknown", NO_ROUTE, ""),
    ("GET", "/V2/health/live", 404, "unknown", NO_ROUTE, ""),
    ("GET", "/v2/models", 404, "unknown", NO_ROUTE, ""),
    ("GET", "/v2/models/iris//", 404, "unknown", NO_ROUTE, ""),
    ("POST", "/v2/models/iris/explain", 404, "unknown", NO_ROUTE, ""),
    ("POST", "/v2/models/nope/explain", 404, "unknown", NO_ROUTE, ""),
    ("GET", "/v1/models/iris/", 404, "unknown", NO_ROUTE, ""),
    ("POST", "/v1/models/iris:explain", 404, "unknown", NO_ROUTE, ""),
]  # fmt: skip


async def answer(app: App, method: str, path: str) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": method, "path": path, "headers": []}, receive, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


@pytest.mark.parametrize(("method", "path", "status", "endpoint", "error", "allow"), CASES)
async def test_every_kind_of_path_answers_as_it_always_has(
    method: str, path: str, status: int, endpoint: str, error: str | None, allow: str
) -> None:
    app = App("iris", version="3")
    got, headers, body = await answer(app, method, path)
    assert got == status
    assert headers.get(b"allow", b"").decode() == allow
    assert list(app.metrics.requests) == [(endpoint, status)]
    if error is None:
        assert not app.metrics.errors
    else:
        assert orjson.loads(body) == {"error": error.format(path=path)}
        assert [e for e, _ in app.metrics.errors] == [endpoint]


async def test_without_a_version_only_unversioned_paths_route() -> None:
    app = App("iris")
    assert (await answer(app, "GET", "/v2/models/iris/versions/3"))[0] == 404
    assert (await answer(app, "GET", "/v2/models/iris/versions/"))[0] == 404  # the empty one
    assert (await answer(app, "POST", "/v2/models/iris/versions//infer"))[0] == 404


def test_the_table_is_sound() -> None:
    """Each handler exists, each endpoint has one route (the gRPC service's are its
    methods), and no path matches two patterns."""
    assert all(r.handler is None or callable(getattr(App, r.handler)) for r in ROUTES)
    rest = {e for e in Endpoint if not e.startswith("grpc_")} - {Endpoint.UNKNOWN}
    assert {r.endpoint for r in ROUTES} == rest
    for _, _, _, endpoint, _, _ in CASES:
        assert endpoint in set(Endpoint)
    for _, path, *_ in CASES:
        target = re.sub(r"/versions/[^/]*", "", path, count=1)
        assert sum(1 for pattern, _ in _PATTERNS if pattern.fullmatch(target)) <= 1, path
