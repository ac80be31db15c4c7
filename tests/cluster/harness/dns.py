"""A minimal DNS client: one question over UDP or TCP, the reply's code and its A records.

`up` asks the cluster's DNS a question it must answer before calling it ready; the e2e
tests run this same file inside a pod and in another network namespace, so it uses
nothing but the standard library and imports nothing from the harness.
"""

from __future__ import annotations

import random
import socket
import struct
from dataclasses import dataclass, field

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "AAAA": 28, "SRV": 33}
RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


@dataclass
class Reply:
    rcode: str
    authoritative: bool
    addresses: list[str] = field(default_factory=list)  # the A records of the answer
    names: list[str] = field(default_factory=list)  # the PTR and CNAME targets of the answer


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode("ascii")
    return out + b"\0"


def read_name(msg: bytes, offset: int) -> tuple[str, int]:
    """The (possibly compressed) name at offset, and the offset just after it."""
    labels: list[str] = []
    end = None
    for _ in range(128):  # a loop of pointers is a malformed reply
        length = msg[offset]
        if length & 0xC0 == 0xC0:
            if end is None:
                end = offset + 2
            offset = ((length & 0x3F) << 8) | msg[offset + 1]
            continue
        if length == 0:
            return ".".join(labels) + ".", end if end is not None else offset + 1
        labels.append(msg[offset + 1 : offset + 1 + length].decode("ascii", "replace"))
        offset += 1 + length
    raise ValueError("malformed name in DNS reply")


def query(
    name: str,
    server: str,
    qtype: str = "A",
    port: int = 53,
    tcp: bool = False,
    timeout: float = 2.0,
) -> Reply:
    """Ask `server` one question (recursion desired, as a stub resolver does); a timeout
    or a refused connection raises OSError."""
    ident = random.randrange(1 << 16)
    question = encode_name(name) + struct.pack("!HH", TYPES[qtype], 1)
    packet = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + question
    family = socket.AF_INET6 if ":" in server else socket.AF_INET
    if tcp:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect((server, port))
            sock.sendall(struct.pack("!H", len(packet)) + packet)
            size = struct.unpack("!H", recv_exactly(sock, 2))[0]
            msg = recv_exactly(sock, size)
    else:
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.settimeout(timeout)
            sock.connect((server, port))
            sock.send(packet)
            while True:
                msg = sock.recv(65535)
                if len(msg) >= 12 and struct.unpack("!H", msg[:2])[0] == ident:
                    break
    return parse(msg)


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("DNS server closed the connection")
        data += chunk
    return data


def parse(msg: bytes) -> Reply:
    _, flags, qdcount, ancount, _, _ = struct.unpack("!HHHHHH", msg[:12])
    reply = Reply(
        rcode=RCODES.get(flags & 0xF, str(flags & 0xF)), authoritative=bool(flags & 0x400)
    )
    offset = 12
    for _ in range(qdcount):
        offset = read_name(msg, offset)[1] + 4
    for _ in range(ancount):
        offset = read_name(msg, offset)[1]
        rtype, _, _, length = struct.unpack("!HHIH", msg[offset : offset + 10])
        offset += 10
        if rtype == TYPES["A"] and length == 4:
            reply.addresses.append(socket.inet_ntoa(msg[offset : offset + 4]))
        elif rtype in (TYPES["PTR"], TYPES["CNAME"]):
            reply.names.append(read_name(msg, offset)[0])
        offset += length
    return reply
