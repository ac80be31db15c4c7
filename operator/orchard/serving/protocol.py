"""HTTP/1.1 connections: uvicorn's httptools protocol, with the limits it lacks.

What uvicorn gives the httptools protocol, and what it does not (as of uvicorn 0.54):
- `timeout_keep_alive` applies, but only once a response is complete: a connection that
  never sends anything, or sends headers slowly, is held forever.
- `limit_concurrency` applies, but answers 503 to every request once that many
  connections are open, idle ones included: idle connections alone would fail liveness.
- `h11_max_incomplete_event_size` is h11's; nothing caps the headers httptools buffers.
- `backlog` applies (the listen queue).

`GuardedProtocol` adds, with the values of `limits.Limits`: a header timeout (408), a
header size cap (431), and a connection cap that closes the connection waiting longest
on its client to make room (503 only when every connection has a request in the model).
The app (`app`) adds the body timeout and the body size cap. What the protocol answers
is a one-line `{"error": ...}` JSON body with `connection: close`.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar, Protocol

import orjson
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from orchard.serving.limits import Limits


class ConnectionEvents(Protocol):
    """What the protocol reports (metrics.Metrics implements it)."""

    def connection_opened(self) -> None: ...

    def connection_closed(self) -> None: ...

    def connection_dropped(self, reason: str) -> None: ...


class _HeadersTooLarge(Exception):
    """Raised in a parser callback to stop parsing; `send_400_response` answers 431."""


class GuardedProtocol(HttpToolsProtocol):
    """One connection, held to `limits`; `events` hears of opened, closed, dropped ones."""

    limits: ClassVar[Limits] = Limits()
    events: ClassVar[ConnectionEvents | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.waiting_since = 0.0  # when the connection last began to wait on its client
        self.awaiting_headers = True
        self.header_bytes = 0  # received since the last complete headers
        self.headers_too_large = False
        self.header_timer: asyncio.TimerHandle | None = None

    # --- connection ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.events is not None:
            self.events.connection_opened()
        self._wait_for_headers()
        open_ = sum(1 for c in self.connections if not c.transport.is_closing())
        if open_ > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        if self.events is not None:
            self.events.connection_closed()
        super().connection_lost(exc)

    def _make_room(self) -> None:
        """Close the connection that has waited longest on its client, or refuse this one."""
        waiting = [
            c
            for c in self.connections
            if c is not self
            and isinstance(c, GuardedProtocol)
            and not c.transport.is_closing()
            and c.waits_on_client()
        ]
        if waiting:
            min(waiting, key=lambda c: c.waiting_since).drop("evicted")
        else:
            self.refuse(503, "too many connections: every one has a request in progress",
                        "over_capacity")  # fmt: skip

    def waits_on_client(self) -> bool:
        """Idle, in its headers, or in its body: nothing of the server's is lost by closing."""
        if self.pipeline:
            return False
        cycle = self.cycle
        return cycle is None or cycle.response_complete or cycle.more_body

    def drop(self, reason: str) -> None:
        """Close the connection without an answer."""
        if self.events is not None:
            self.events.connection_dropped(reason)
        self.transport.close()

    def refuse(self, status: int, message: str, reason: str) -> None:
        """Answer `status` with `{"error": message}` (unless a response is under way), close."""
        if self.events is not None:
            self.events.connection_dropped(reason)
        if self.cycle is None or self.cycle.response_complete:
            body = orjson.dumps({"error": message})
            head = [STATUS_LINE[status]]
            for name, value in self.server_state.default_headers:
                head += [name, b": ", value, b"\r\n"]
            head += [
                b"content-type: application/json\r\n",
                b"content-length: %d\r\n" % len(body),
                b"connection: close\r\n\r\n",
            ]
            self.transport.write(b"".join(head) + body)
        self.transport.close()

    # --- headers ------------------------------------------------------------------------

    def _wait_for_headers(self) -> None:
        """The connection now waits for a request's headers: start their clock."""
        self.waiting_since = self.loop.time()
        self.awaiting_headers = True
        self._cancel_header_timer()
        self.header_timer = self.loop.call_later(self.limits.header_timeout, self._headers_late)

    def _cancel_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_late(self) -> None:
        self.header_timer = None
        if self.transport.is_closing():
            return
        if self.header_bytes == 0:
            self.drop("idle")  # nothing of a request came: no one to answer
        else:
            self.refuse(408, f"request headers took longer than {self.limits.header_timeout:g} s",
                        "header_timeout")  # fmt: skip

    def data_received(self, data: bytes) -> None:
        if self.awaiting_headers:
            self.header_bytes += len(data)
        super().data_received(data)
        # Headers still incomplete after this read: all of it was headers.
        if (
            self.awaiting_headers
            and self.header_bytes > self.limits.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._refuse_headers()

    def on_message_begin(self) -> None:
        self.awaiting_headers = True
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.awaiting_headers = False
        self.header_bytes = 0
        self._cancel_header_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.limits.max_header_bytes:  # all of them came in one read
            self.headers_too_large = True
            raise _HeadersTooLarge  # the parser stops; uvicorn calls send_400_response
        self.waiting_since = self.loop.time()  # for the body, if one follows
        super().on_headers_complete()

    def send_400_response(self, msg: str) -> None:
        if self.headers_too_large:
            self._refuse_headers()
        else:
            self.refuse(400, "invalid HTTP request", "invalid_http")

    def _refuse_headers(self) -> None:
        self.refuse(431, f"request headers larger than {self.limits.max_header_bytes} bytes",
                    "headers_too_large")  # fmt: skip

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.timeout_keep_alive_task is not None:  # idle: uvicorn armed its keep-alive
            self._wait_for_headers()


def protocol_class(limits: Limits, events: ConnectionEvents | None) -> type[GuardedProtocol]:
    """A `GuardedProtocol` bound to these limits and events, for `uvicorn.Config(http=...)`."""

    class Bound(GuardedProtocol):
        pass

    Bound.limits = limits
    Bound.events = events
    return Bound
