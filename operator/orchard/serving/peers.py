"""The other pods of this deployment, for feedback that reached a pod that did not answer.

A ModelDeployment gives its pods a headless Service whose DNS name resolves to the ready
serving pods' addresses (`--peers`, ORCHARD_PEERS); a pod leaves out its own address
(`--pod-ip`, POD_IP). Feedback a pod cannot match is sent on to every peer at once with
the `orchard-forwarded` header (so a peer never sends it on again); the first answer
other than 404 is the answer. Plain HTTP/1.1 over asyncio streams: the serving image
carries no HTTP client library, and this is one small request to a known server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time

log = logging.getLogger("orchard.serving")

FORWARDED_HEADER = b"orchard-forwarded"
TIMEOUT = 2.0  # seconds for one peer's whole answer
MAX_ANSWER_BYTES = 64 * 1024
RESOLVE_EVERY = 5.0  # seconds an address list is used before the name is resolved again


class Peers:
    """The peers behind a DNS name, resolved at most every RESOLVE_EVERY seconds."""

    def __init__(self, name: str | None, port: int, own_ip: str | None) -> None:
        self.name, self.port, self.own_ip = name, port, own_ip
        self._addresses: list[str] = []
        self._resolved_at = -RESOLVE_EVERY

    async def addresses(self) -> list[str]:
        if not self.name:
            return []
        if time.monotonic() - self._resolved_at >= RESOLVE_EVERY:
            try:
                found = await asyncio.get_running_loop().getaddrinfo(
                    self.name, self.port, type=socket.SOCK_STREAM
                )
                self._addresses = sorted({str(a[4][0]) for a in found} - {self.own_ip or ""})
            except OSError as exc:  # no peers resolvable now: this pod answers alone
                log.warning("cannot resolve peers %s: %s", self.name, exc)
                self._addresses = []
            self._resolved_at = time.monotonic()
        return self._addresses

    async def forward(self, path: str, body: bytes) -> tuple[int, bytes] | None:
        """The first peer answer other than 404 (status, body), or None if none has one."""
        tasks = [
            asyncio.ensure_future(_post(ip, self.port, path, body)) for ip in await self.addresses()
        ]
        try:
            for next_done in asyncio.as_completed(tasks):
                answer = await next_done
                if answer is not None and answer[0] != 404:
                    return answer
            return None
        finally:
            for task in tasks:
                task.cancel()


async def _post(ip: str, port: int, path: str, body: bytes) -> tuple[int, bytes] | None:
    """One POST; None when the peer cannot be reached or answers nonsense."""
    host = f"[{ip}]" if ":" in ip else ip
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n{FORWARDED_HEADER.decode()}: 1\r\n"
        "connection: close\r\n\r\n"
    ).encode()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(TIMEOUT):
            reader, writer = await asyncio.open_connection(ip, port)
            writer.write(head + body)
            await writer.drain()
            answer = await reader.read(MAX_ANSWER_BYTES)
            while chunk := await reader.read(MAX_ANSWER_BYTES - len(answer)):
                answer += chunk
                if len(answer) >= MAX_ANSWER_BYTES:
                    break
        status_line, _, rest = answer.partition(b"\r\n")
        _, _, content = rest.partition(b"\r\n\r\n")
        return int(status_line.split()[1]), content
    except (OSError, TimeoutError, ValueError, IndexError) as exc:
        log.info("peer %s did not answer feedback: %s", ip, type(exc).__name__)
        return None
    finally:
        if writer is not None:
            writer.close()
