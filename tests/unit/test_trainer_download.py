"""A dataset over http(s) is bounded in time and size: real loopback servers that drip,
that send without end, or that announce more than the cap."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from orchard.trainer.data import DownloadLimits, download, fetch_bytes
from orchard.trainer.errors import DatasetUnavailable, InvalidSpec

HEADER = b"a,b,label\n"
ROW = b"1.5,2.5,x\n"


class Hostile(http.server.BaseHTTPRequestHandler):
    """/drip: a byte every 50 ms; /endless: rows until the client hangs up (no length);
    /big: a Content-Length of 10 GB; /ok: a small CSV."""

    def do_GET(self) -> None:
        self.send_response(200)
        if self.path == "/big":
            self.send_header("Content-Length", str(10 * 1000**3))
            self.end_headers()
            return
        if self.path == "/ok":
            body = HEADER + ROW * 3
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.end_headers()
        try:
            if self.path == "/drip":
                for byte in HEADER * 1000:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
            while self.path == "/endless":
                self.wfile.write(ROW * 10_000)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hostile)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_server_that_drips_is_given_up_at_the_deadline(base: str) -> None:
    start = time.monotonic()
    with pytest.raises(DatasetUnavailable, match=r"did not finish within 1 s \(\d+ bytes read"):
        download(f"{base}/drip", DownloadLimits(seconds=1, max_bytes=1 << 20))
    assert time.monotonic() - start < 5  # the deadline, not the per-read timeout (60 s)


def test_a_body_without_end_stops_at_the_cap(base: str) -> None:
    with pytest.raises(DatasetUnavailable, match="more than the 1048576 bytes"):
        download(f"{base}/endless", DownloadLimits(seconds=60, max_bytes=1 << 20))


def test_an_announced_length_beyond_the_cap_is_refused_before_reading(base: str) -> None:
    with pytest.raises(DatasetUnavailable, match="is 10000000000 bytes, more than the 1048576"):
        download(f"{base}/big", DownloadLimits(seconds=60, max_bytes=1 << 20))


def test_within_the_limits_the_body_is_read_whole(base: str) -> None:
    assert download(f"{base}/ok", DownloadLimits(seconds=5, max_bytes=1 << 20)) == HEADER + ROW * 3


def test_the_limits_come_from_the_trainer_pods_environment(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert DownloadLimits.from_env({}) == DownloadLimits(seconds=600, max_bytes=1 << 30)
    env = {"ORCHARD_DATASET_DOWNLOAD_TIMEOUT": "2.5", "ORCHARD_DATASET_MAX_BYTES": "100"}
    assert DownloadLimits.from_env(env) == DownloadLimits(seconds=2.5, max_bytes=100)
    with pytest.raises(InvalidSpec, match="must be positive"):
        DownloadLimits.from_env({"ORCHARD_DATASET_MAX_BYTES": "0"})
    with pytest.raises(InvalidSpec, match="ORCHARD_DATASET_DOWNLOAD_TIMEOUT"):
        DownloadLimits.from_env({"ORCHARD_DATASET_DOWNLOAD_TIMEOUT": "soon"})
    monkeypatch.setenv("ORCHARD_DATASET_MAX_BYTES", "10")
    with pytest.raises(DatasetUnavailable, match="is 40 bytes, more than the 10 bytes"):
        fetch_bytes(f"{base}/ok")  # what the trainer calls, with the pod's settings
