"""Credentials out of URIs, before a URI is written down or shown to anyone.

A dataset URI may carry a credential: a presigned URL's query (``X-Amz-Signature=…``,
``sig=…``, ``token=…``) or a password in its userinfo. Everything Orchard writes a URI
into (metadata.json, the trainer's result and termination message, log lines, error
messages, a ModelVersion's spec) takes it through `redact_uri` first, and free text that
may quote one through `redact_text`.

Lineage keeps its meaning: the redacted URI still says where the data came from, and the
dataset's sha256 digest, recorded beside it, pins the exact bytes that were read.
"""

from __future__ import annotations

import re

REDACTED = "REDACTED"

# A URI inside free text: a scheme, "://", then anything up to white space or a quote.
_URI_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>`]+")
# Punctuation that ends a sentence rather than the URI before it.
_TRAILING = ".,;:!?)]}"


def _redact_query(query: str) -> str:
    """Every parameter's value replaced; the keys stay, so a reader still sees what kind
    of URL it was. A bare item (no "=") may itself be a token, so it goes too."""
    items = []
    for item in query.split("&"):
        key, sep, _ = item.partition("=")
        items.append(item if not item else f"{key}={REDACTED}" if sep else REDACTED)
    return "&".join(items)


def _redact_authority(authority: str) -> str:
    """``user:password@host`` keeps the user; a lone userinfo (a token used as the user
    name, as in ``https://<token>@host``) is replaced whole."""
    userinfo, at, host = authority.rpartition("@")
    if not at:
        return authority
    user, colon, _ = userinfo.partition(":")
    return f"{user}:{REDACTED}@{host}" if colon else f"{REDACTED}@{host}"


def redact_uri(uri: str) -> str:
    """`uri` without its credentials: the password (or a lone token) of its userinfo, the
    value of every query parameter, and its fragment, each replaced by ``REDACTED``.

    Split by hand rather than with urllib, so that no input makes it raise; idempotent;
    a URI without any of these parts comes back unchanged.
    """
    rest, hash_, fragment = uri.partition("#")
    rest, question, query = rest.partition("?")
    scheme, sep, tail = rest.partition("://")
    if sep and "/" not in scheme:
        authority, slash, path = tail.partition("/")
        rest = f"{scheme}://{_redact_authority(authority)}{slash}{path}"
    out = rest
    if question:
        out += "?" + _redact_query(query)
    if hash_:
        out += "#" + (REDACTED if fragment else "")
    return out


def redact_text(text: str) -> str:
    """`text` with every URI in it redacted (a library's message may quote the URL it was
    given); the punctuation that closes a sentence after a URI is kept."""

    def one(match: re.Match[str]) -> str:
        found = match.group(0)
        core = found.rstrip(_TRAILING)
        return redact_uri(core) + found[len(core) :]

    return _URI_IN_TEXT.sub(one, text)
