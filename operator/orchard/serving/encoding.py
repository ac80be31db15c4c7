"""Compressed bodies: `Content-Encoding` of requests, `Accept-Encoding` for responses.

A request body may come gzip- or deflate-compressed (tritonclient's
`request_compression_algorithm`); it is decompressed with its decompressed size held to
the same cap as a plain body (`--max-body-bytes`), so a small "zip bomb" costs no more
than the largest body the server accepts: beyond it, `TooLarge` (413). Another coding
is `UnsupportedEncoding` (415), data that does not decompress is `Malformed` (400).

A response is compressed when the client accepts gzip or deflate (gzip first, at equal
preference) and the body is at least `MIN_COMPRESSED_BYTES`: below that the saving is a
few bytes and the cost a few microseconds. "deflate" is the zlib format (RFC 9110), as
tritonclient and browsers read it; a raw deflate request body is accepted too, as some
clients send one.
"""

from __future__ import annotations

import zlib

IDENTITY = "identity"
GZIP = "gzip"
DEFLATE = "deflate"
MIN_COMPRESSED_BYTES = 1024
LEVEL = 6  # zlib's default

# zlib's window bits: a gzip wrapper, a zlib wrapper, no wrapper (raw deflate).
_WBITS = {GZIP: 16 + zlib.MAX_WBITS, DEFLATE: zlib.MAX_WBITS}
_RAW_DEFLATE = -zlib.MAX_WBITS


class EncodingError(ValueError):
    """A request body that cannot be decoded; `status` and `reason` say how to answer."""

    status = 400
    reason = "bad_request"


class UnsupportedEncoding(EncodingError):
    status = 415
    reason = "unsupported_encoding"


class TooLarge(EncodingError):
    status = 413
    reason = "too_large"


class Malformed(EncodingError):
    pass


def coding(header: bytes | None) -> str | None:
    """The one content coding a `Content-Encoding` value names (None: none, identity)."""
    if header is None:
        return None
    name = header.decode("latin-1").strip().lower()
    if name in ("", IDENTITY):
        return None
    if name not in _WBITS:
        raise UnsupportedEncoding(
            f"Content-Encoding {name[:40]!r} is not supported: send gzip, deflate or identity"
        )
    return name


def decompress(body: bytes, name: str, limit: int) -> bytes:
    """`body` decoded from `name`, at most `limit` bytes of it (beyond: `TooLarge`)."""
    try:
        return _inflate(body, _WBITS[name], limit)
    except zlib.error as exc:
        if name != DEFLATE:
            raise Malformed(f"body is not valid {name} data: {exc}") from None
    try:  # some clients send deflate without its zlib wrapper
        return _inflate(body, _RAW_DEFLATE, limit)
    except zlib.error as exc:
        raise Malformed(f"body is not valid deflate data: {exc}") from None


def _inflate(body: bytes, wbits: int, limit: int) -> bytes:
    inflater = zlib.decompressobj(wbits)
    out = inflater.decompress(body, limit + 1)  # one byte more tells that it is over
    if len(out) > limit:
        raise TooLarge(f"body decompresses to more than {limit} bytes")
    if not inflater.eof:
        raise Malformed("compressed body ends before its end of stream")
    if inflater.unused_data:
        raise Malformed("data after the end of the compressed body")
    return out


def accepted(header: bytes | None) -> str | None:
    """The coding to answer in for an `Accept-Encoding` value: gzip or deflate, whichever
    it prefers (gzip at equal preference; `*` stands for both), None for neither."""
    if not header:
        return None
    prefs: dict[str, float] = {}
    for item in header.decode("latin-1").lower().split(","):
        name, _, params = item.partition(";")
        prefs[name.strip()] = _quality(params)
    anything = prefs.get("*", 0.0)
    quality = {name: prefs.get(name, anything) for name in (GZIP, DEFLATE)}
    best = max(quality, key=quality.__getitem__)  # the first of equals: gzip
    return best if quality[best] > 0 else None


def _quality(params: str) -> float:
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip() == "q":
            try:
                return min(max(float(value), 0.0), 1.0)
            except ValueError:
                return 0.0
    return 1.0


def compress(body: bytes, name: str) -> bytes:
    """`body` in the coding `name` (gzip or deflate)."""
    packer = zlib.compressobj(LEVEL, zlib.DEFLATED, _WBITS[name])
    return packer.compress(body) + packer.flush()
