"""`kube.AiohttpTransport` against a real HTTP server on loopback: lightkube's requests
go out as they were built, answers come back whole, failures become httpx's errors, and
every request is counted by method, resource and code."""

from __future__ import annotations

import gzip
import socket
import ssl
from collections.abc import AsyncIterator

import httpx2
import pytest
from aiohttp import web

from orchard import kube


def counted(method: str, code: str) -> float:
    return kube.API_REQUESTS.labels(method, "other", code)._value.get()  # /echo and the like


@pytest.fixture
async def server() -> AsyncIterator[str]:
    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        auth = request.headers.get("Authorization")
        return web.json_response({"method": request.method, "body": body.decode(), "auth": auth})

    async def busy(_request: web.Request) -> web.Response:
        return web.json_response({"kind": "Status", "code": 429}, status=429)

    async def zipped(_request: web.Request) -> web.Response:
        return web.Response(
            body=gzip.compress(b'{"zipped": true}'),
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    app = web.Application()
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/busy", busy)
    app.router.add_get("/zipped", zipped)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


@pytest.fixture
async def client() -> AsyncIterator[httpx2.AsyncClient]:
    transport = kube.AiohttpTransport(ssl.create_default_context())
    async with httpx2.AsyncClient(transport=transport) as http:
        yield http


async def test_a_request_goes_out_as_built_and_is_counted(
    server: str, client: httpx2.AsyncClient
) -> None:
    before = counted("PATCH", "200")
    answer = await client.patch(
        f"{server}/echo", content=b'{"spec": 1}', headers={"Authorization": "Bearer t"}
    )
    assert answer.status_code == 200
    assert answer.json() == {"method": "PATCH", "body": '{"spec": 1}', "auth": "Bearer t"}
    assert counted("PATCH", "200") == before + 1


async def test_a_429_is_returned_to_the_caller_and_counted_as_such(
    server: str, client: httpx2.AsyncClient
) -> None:
    before = counted("GET", "429")
    answer = await client.get(f"{server}/busy")
    assert answer.status_code == 429
    assert answer.json()["code"] == 429
    assert counted("GET", "429") == before + 1


async def test_a_compressed_answer_is_decoded_once(server: str, client: httpx2.AsyncClient) -> None:
    answer = await client.get(f"{server}/zipped")
    assert answer.json() == {"zipped": True}


def unused_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_no_server_is_a_connect_error_counted_without_a_code(
    client: httpx2.AsyncClient,
) -> None:
    before = counted("GET", "0")
    with pytest.raises(httpx2.ConnectError):
        await client.get(f"http://127.0.0.1:{unused_port()}/")
    assert counted("GET", "0") == before + 1


@pytest.mark.parametrize(
    ("path", "resource"),
    [
        ("/api/v1/namespaces/ml/pods", "pods"),
        ("/api/v1/namespaces/ml/pods/trainer-0/log", "pods/log"),
        ("/api/v1/namespaces/ml", "namespaces"),
        ("/api/v1/namespaces", "namespaces"),
        ("/apis/batch/v1/namespaces/ml/jobs/iris-train", "jobs"),
        ("/apis/orchard.dev/v1alpha1/namespaces/ml/modelversions/iris-v1/status",
         "modelversions/status"),
        ("/apis/orchard.dev/v1alpha1/trainingjobs", "trainingjobs"),
        ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/x.orchard.dev",
         "customresourcedefinitions"),
        ("/version", "other"),
        ("/apis", "other"),
    ],
)  # fmt: skip
def test_a_request_is_counted_under_the_resource_its_path_names(path: str, resource: str) -> None:
    assert kube.resource_of(path) == resource
