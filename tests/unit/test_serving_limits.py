"""The server's limits over real sockets on loopback: timeouts, sizes, rows and connections.

Without them, partial headers, unfinished chunked bodies and slowloris connections were
held forever, a million-row request was decoded on the event loop, and idle connections
could take every file descriptor. Each test runs a server (in a thread of this process,
as `orchard serve` configures it) with short limits, and speaks raw HTTP where a client
library would not misbehave on purpose.
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from test_serving_support import app_for, iris_artifact, running_server

import orchard.serving.limits as limits_module
from orchard.serving import main as serve_main
from orchard.serving.app import App
from orchard.serving.artifact import Column
from orchard.serving.inputs import Schema, TooManyRows, structure_count
from orchard.serving.limits import LIMIT_FIELDS, Limits, fit_fd_limit

SHORT = Limits(
    max_request_rows=100,
    max_body_bytes=64 * 1024,
    max_header_bytes=4096,
    header_timeout=0.5,
    body_timeout=1.0,
    keep_alive_timeout=0.5,
    max_connections=16,
)
ROW = [5.1, 3.5, 1.4, 0.2]


@pytest.fixture(scope="module")
def iris_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return iris_artifact(tmp_path_factory.mktemp("iris") / "iris")


@pytest.fixture()
def server(iris_dir: Path) -> Iterator[tuple[str, App]]:
    app = app_for(iris_dir, "iris", limits=SHORT)
    with running_server(app) as base:
        yield base, app


def address(base: str) -> tuple[str, int]:
    host, port = base.removeprefix("http://").split(":")
    assert host == "127.0.0.1"
    return host, int(port)


def connect(base: str) -> socket.socket:
    return socket.create_connection(address(base), timeout=5)


def read_until_closed(sock: socket.socket, within: float = 5.0) -> bytes:
    """Everything the server sends until it closes the connection (bounded in time)."""
    deadline = time.monotonic() + within
    data = b""
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not chunk:
            break
        data += chunk
    else:
        raise AssertionError(f"the server kept the connection open for {within} s")
    return data


def answer(raw: bytes) -> tuple[int, dict[str, str], Any]:
    """Status, headers and decoded JSON body of one raw HTTP response."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return status, headers, json.loads(body) if body else None


def dropped(base: str, reason: str) -> float:
    text = httpx.get(f"{base}/metrics").text
    key = f'orchard_connections_dropped_total{{reason="{reason}"}} '
    line = next((ln for ln in text.splitlines() if ln.startswith(key)), None)
    return float(line.split()[-1]) if line else 0.0


# --- headers --------------------------------------------------------------------------------


def test_partial_headers_are_cut_off_after_the_header_timeout(server: tuple[str, App]) -> None:
    base, _ = server
    with connect(base) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n")
        status, headers, body = answer(read_until_closed(sock))
        took = time.monotonic() - start
    assert status == 408
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert "headers took longer" in body["error"]
    assert SHORT.header_timeout * 0.9 < took < SHORT.header_timeout + 2
    assert dropped(base, "header_timeout") >= 1


def test_slowloris_cannot_hold_a_connection(server: tuple[str, App]) -> None:
    """A header byte every 0.1 s does not reset the clock: the headers as a whole are late."""
    base, _ = server
    with connect(base) as sock:
        start = time.monotonic()
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ")
        closed = False
        for _ in range(50):  # at most 5 s
            try:
                sock.sendall(b"a")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.1)
            sock.settimeout(0.001)
            try:
                if sock.recv(65536, socket.MSG_PEEK) is not None:
                    closed = True
                    break
            except (BlockingIOError, TimeoutError):
                pass
            finally:
                sock.settimeout(5)
        assert closed, "a slowloris connection was held for 5 s"
        took = time.monotonic() - start
    assert took < SHORT.header_timeout + 2


def test_a_silent_connection_is_closed(server: tuple[str, App]) -> None:
    base, _ = server
    before = dropped(base, "idle")
    with connect(base) as sock:
        assert read_until_closed(sock) == b""  # nothing of a request came: no answer either
    assert dropped(base, "idle") == before + 1


def test_idle_keep_alive_connection_is_closed(server: tuple[str, App]) -> None:
    base, _ = server
    with connect(base) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        start = time.monotonic()
        raw = read_until_closed(sock)
        assert raw.startswith(b"HTTP/1.1 200")
        assert time.monotonic() - start < SHORT.keep_alive_timeout + 2


@pytest.mark.parametrize("in_one_read", [True, False], ids=["complete", "never-ending"])
def test_oversized_headers_are_refused_431(server: tuple[str, App], in_one_read: bool) -> None:
    base, _ = server
    with connect(base) as sock:
        if in_one_read:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n")
        else:
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nX-Big: ")
            for _ in range(10):
                try:
                    sock.sendall(b"a" * 1000)
                except (BrokenPipeError, ConnectionResetError):
                    break
                time.sleep(0.01)
        status, headers, body = answer(read_until_closed(sock))
    assert status == 431
    assert headers["connection"] == "close"
    assert body == {"error": f"request headers larger than {SHORT.max_header_bytes} bytes"}
    assert dropped(base, "headers_too_large") >= 1


def test_headers_within_the_limit_are_served(server: tuple[str, App]) -> None:
    base, _ = server
    r = httpx.get(f"{base}/v2/health/live", headers={"x-fine": "a" * 3000})
    assert r.status_code == 200


def test_garbage_is_a_json_400(server: tuple[str, App]) -> None:
    base, _ = server
    with connect(base) as sock:
        sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
        status, _, body = answer(read_until_closed(sock))
    assert status == 400 and body == {"error": "invalid HTTP request"}


# --- bodies ---------------------------------------------------------------------------------


def test_unfinished_chunked_body_is_answered_408(server: tuple[str, App]) -> None:
    base, app = server
    with connect(base) as sock:
        sock.sendall(
            b"POST /v1/models/iris:predict HTTP/1.1\r\nHost: x\r\n"
            b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n"
            b'5\r\n{"ins\r\n'
        )
        start = time.monotonic()
        status, headers, body = answer(read_until_closed(sock))
        took = time.monotonic() - start
    assert status == 408
    assert headers["connection"] == "close"
    assert body == {"error": f"body not received within {SHORT.body_timeout:g} s"}
    assert SHORT.body_timeout * 0.9 < took < SHORT.body_timeout + 2
    assert app.metrics.errors[("v1_predict", "body_timeout")] >= 1


def test_body_over_the_limit_is_refused_on_its_content_length(server: tuple[str, App]) -> None:
    """Refused at once, before a byte of it is read, and the connection closed."""
    base, _ = server
    with connect(base) as sock:
        sock.sendall(
            b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
        )
        start = time.monotonic()
        status, headers, body = answer(read_until_closed(sock))
    assert time.monotonic() - start < 1
    assert status == 413 and headers["connection"] == "close"
    assert "over 65536" in body["error"]


def test_chunked_body_over_the_limit_is_cut_off(server: tuple[str, App]) -> None:
    base, _ = server

    def chunks() -> Iterator[bytes]:
        yield b'{"instances": ['
        for _ in range(1000):
            yield b"[5.1, 3.5, 1.4, 0.2]," * 10

    r = httpx.post(f"{base}/v1/models/iris:predict", content=chunks())
    assert r.status_code == 413
    assert "larger than 65536" in r.json()["error"]


def test_an_answer_before_the_body_is_read_closes_the_connection(
    server: tuple[str, App],
) -> None:
    """Else a client could trickle the rest of an unread body on a kept-alive connection."""
    base, _ = server
    r = httpx.post(f"{base}/v2/models/nope/infer", content=b"x" * 1000)
    assert r.status_code == 404 and r.headers["connection"] == "close"
    r = httpx.post(f"{base}/v2/models/iris/infer", json={"inputs": []})
    assert r.status_code == 400 and "connection" not in r.headers  # read: stays open


# --- rows -----------------------------------------------------------------------------------


def test_rows_beyond_the_cap_are_refused_413(server: tuple[str, App]) -> None:
    base, app = server
    ok = httpx.post(f"{base}/v1/models/iris:predict", json={"instances": [ROW] * 100})
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 100
    for path, body in [
        ("/v1/models/iris:predict", {"instances": [ROW] * 101}),
        ("/v2/models/iris/infer", {"inputs": [{"name": "x", "shape": [101, 4],
                                              "datatype": "FP64", "data": [ROW] * 101}]}),
        ("/v2/models/iris/infer", {"inputs": [{"name": "x", "shape": [10**9, 4],
                                              "datatype": "FP64", "data": ROW}]}),
    ]:  # fmt: skip
        r = httpx.post(f"{base}{path}", json=body)
        assert r.status_code == 413, r.text
        assert "100" in r.json()["error"]
    assert app.metrics.errors[("v1_predict", "too_many_rows")] >= 1
    assert app.metrics.errors[("v2_infer", "too_many_rows")] >= 2


def test_a_million_rows_is_refused_quickly(iris_dir: Path) -> None:
    """At the default limits: refused on its size, or on its values before decoding."""
    app = app_for(iris_dir, "iris")
    with running_server(app) as base:
        url = f"{base}/v2/models/iris/infer"
        full = orjson.dumps({"instances": [ROW] * 1_000_000})  # 18 MB
        compact = (
            b'{"inputs": [{"name": "x", "shape": [1000000, 4], "datatype": "FP32", "data": ['
            + b"0," * 3_999_999
            + b"0]}]}"
        )
        assert len(compact) < Limits().max_body_bytes
        for body, words in [(full, "bytes, over"), (compact, "more values than 10000 rows")]:
            start = time.monotonic()
            r = httpx.post(url, content=body, timeout=30)
            took = time.monotonic() - start
            assert r.status_code == 413, r.text
            assert words in r.json()["error"]
            assert took < 2.0, f"{took:.2f} s to refuse a million rows"


def test_the_value_count_bounds_decoding_but_not_honest_bodies() -> None:
    """Every accepted form of a request at the row cap passes; a million-row body does not."""
    columns = [Column(f"c{i}", "number") for i in range(3)] + [Column("s", "string")]
    schema = Schema(columns)
    n = 1000
    text = 'a, "b", [c], {d} \\" \\\\'  # commas, brackets and escapes inside strings
    row = [1.5, None, 3, text]
    bodies = [
        {"instances": [row] * n},
        {"instances": [dict(zip([c.name for c in columns], row, strict=True))] * n},
        {"inputs": [{"name": "t", "shape": [n, 4], "datatype": "BYTES", "data": [row] * n}]},
        {"inputs": [{"name": "t", "shape": [n, 4], "datatype": "BYTES", "data": row * n}]},
        {"inputs": [{"name": c.name, "shape": [n, 1], "data": [[v]] * n,
                     "datatype": "FP64" if c.numeric else "BYTES"}
                    for c, v in zip(columns, row, strict=True)],
         "parameters": {"content_type": "pd"}, "id": "r-1"},
    ]  # fmt: skip
    for body in bodies:
        schema.check_body(orjson.dumps(body), max_rows=n)
        parse = schema.parse_v2 if "inputs" in body else schema.parse_v1
        assert parse(body, n)[1] == n
    # The count allows for the most verbose form: compact rows pass up to about twice the
    # cap (the parser then counts them exactly); three times is refused undecoded.
    with pytest.raises(TooManyRows):
        schema.check_body(orjson.dumps({"instances": [[1, 2, 3, "x"]] * (n * 3)}), max_rows=n)
    assert structure_count(b'{"a": "x,y,[z]{", "b": [1, 2]}', 0) == 4
    assert structure_count(b'["\\\\", ",", "\\",", 1]', 0) == 4


# --- connections ----------------------------------------------------------------------------


def test_idle_connections_beyond_the_cap_cannot_block_liveness(server: tuple[str, App]) -> None:
    base, _ = server
    before = dropped(base, "evicted")
    idle = [connect(base) for _ in range(SHORT.max_connections + 10)]
    try:
        for sock in idle[-3:]:  # some have started a request, too
            sock.sendall(b"GET /v2/health/live HTTP/1.1\r\n")
        start = time.monotonic()
        r = httpx.get(f"{base}/v2/health/live", timeout=5)
        assert r.status_code == 200
        assert time.monotonic() - start < 1.0
        assert dropped(base, "evicted") - before >= 10
        oldest = idle[0]
        oldest.settimeout(2)
        assert oldest.recv(1) == b""  # the one waiting longest was closed
    finally:
        for sock in idle:
            sock.close()


def test_every_connection_busy_in_the_model_gets_503(iris_dir: Path) -> None:
    """Only when no connection waits on its client is a new one refused, with a 503."""
    limits = Limits(max_connections=2)
    app = app_for(iris_dir, "iris", limits=limits)
    release = threading.Event()
    with running_server(app) as base:
        assert app.runner is not None
        real = app.runner.model

        class Held:
            def predict(self, rows: Any) -> Any:
                release.wait(10)
                return real.predict(rows)

        app.runner.model = Held()
        app.runner.native = None  # the pipeline answers, held
        results: list[int] = []

        def call() -> None:
            r = httpx.post(f"{base}/v1/models/iris:predict", json={"instances": [ROW]}, timeout=20)
            results.append(r.status_code)

        callers = [threading.Thread(target=call) for _ in range(2)]
        for t in callers:
            t.start()
        time.sleep(0.5)  # both requests are in the model now
        try:
            with connect(base) as sock:
                status, headers, body = answer(read_until_closed(sock))
            assert status == 503 and headers["connection"] == "close"
            assert "too many connections" in body["error"]
        finally:
            release.set()
            for t in callers:
                t.join(20)
        assert results == [200, 200]


# --- flags ----------------------------------------------------------------------------------


def test_every_limit_is_a_flag_with_an_env_default_and_documented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc = limits_module.__doc__ or ""
    for limit in LIMIT_FIELDS:
        assert limit.metadata["flag"] in doc and limit.metadata["env"] in doc, limit.name
    monkeypatch.setenv("ORCHARD_MAX_REQUEST_ROWS", "77")
    monkeypatch.setenv("ORCHARD_BODY_TIMEOUT", "2.5")
    parser = argparse.ArgumentParser()
    serve_main.add_arguments(parser)
    args = parser.parse_args(["--model-dir", "/m", "--model-name", "m", "--max-connections", "9"])
    limits = serve_main.limits_from(args)
    assert (limits.max_request_rows, limits.body_timeout, limits.max_connections) == (77, 2.5, 9)
    assert limits.header_timeout == Limits().header_timeout
    help_text = parser.format_help()
    for limit in LIMIT_FIELDS:
        assert limit.metadata["flag"] in help_text and limit.metadata["env"] in help_text
    for bad in (["--max-request-rows", "0"], ["--header-timeout", "soon"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["--model-dir", "/m", "--model-name", "m", *bad])


def test_default_limits_are_the_documented_ones() -> None:
    limits = Limits()
    assert limits.max_request_rows == 10_000
    assert limits.max_body_bytes == 16 * 1024 * 1024
    assert limits.max_header_bytes == 16 * 1024
    assert (limits.header_timeout, limits.body_timeout, limits.keep_alive_timeout) == (10, 30, 5)
    assert limits.max_connections == 512


def test_connection_cap_stays_below_the_fd_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(limits_module.resource, "getrlimit", lambda _: (200, 4096))
    assert fit_fd_limit(Limits(max_connections=512)).max_connections == 200 - 64
    assert fit_fd_limit(Limits(max_connections=100)).max_connections == 100
