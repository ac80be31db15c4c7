"""Credentials never leave a URI: presigned queries, userinfo passwords and tokens."""

from __future__ import annotations

import pytest

from orchard.artifacts import redact_text, redact_uri

PRESIGNED = (
    "https://bucket.s3.amazonaws.com/data/penguins.csv"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAFAKE%2F20260101%2Fus-east-1"
    "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=hunter2hunter2"
)


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        (
            PRESIGNED,
            "https://bucket.s3.amazonaws.com/data/penguins.csv?X-Amz-Algorithm=REDACTED"
            "&X-Amz-Credential=REDACTED&X-Amz-Date=REDACTED&X-Amz-Expires=REDACTED"
            "&X-Amz-SignedHeaders=REDACTED&X-Amz-Signature=REDACTED",
        ),
        # Azure SAS and GCS signed URLs have the same shape
        ("https://a.blob.core.windows.net/c/x.csv?sv=2022&sig=hunter2", None),
        ("https://user:hunter2@example.test/x.csv", "https://user:REDACTED@example.test/x.csv"),
        ("https://hunter2@example.test/x.csv", "https://REDACTED@example.test/x.csv"),
        ("https://example.test/x.csv#token=hunter2", "https://example.test/x.csv#REDACTED"),
        ("https://example.test/x.csv?hunter2", "https://example.test/x.csv?REDACTED"),
        (
            "https://example.test/x.csv?a=&b=hunter2",
            "https://example.test/x.csv?a=REDACTED&b=REDACTED",
        ),
        # what carries no credential comes back as it was
        ("pvc://datasets/penguins.csv", "pvc://datasets/penguins.csv"),
        ("s3://bucket/a/b.parquet", "s3://bucket/a/b.parquet"),
        ("file:///tmp/x.csv", "file:///tmp/x.csv"),
        ("builtin:iris", "builtin:iris"),
        ("/plain/path.csv", "/plain/path.csv"),
        ("https://example.test:8443/x.csv", "https://example.test:8443/x.csv"),
        ("", ""),
    ],
)
def test_redact_uri(uri: str, expected: str | None) -> None:
    redacted = redact_uri(uri)
    if expected is not None:
        assert redacted == expected
    assert "hunter2" not in redacted
    assert "AKIAFAKE" not in redacted
    assert redact_uri(redacted) == redacted  # idempotent


@pytest.mark.parametrize("odd", ["http://[::1", "https://a@b@c/x?y", "://x?k=v", "?k=v#f"])
def test_redact_uri_never_raises(odd: str) -> None:
    assert "=v" not in redact_uri(odd)
    assert redact_uri(redact_uri(odd)) == redact_uri(odd)


def test_redact_text_finds_uris_in_a_sentence() -> None:
    text = f"cannot download {PRESIGNED}: HTTP Error 403: Forbidden."
    redacted = redact_text(text)
    assert "hunter2" not in redacted and "AKIAFAKE" not in redacted
    assert redacted.endswith("X-Amz-Signature=REDACTED: HTTP Error 403: Forbidden.")
    assert redact_text("no uri here: 'a=b?c'") == "no uri here: 'a=b?c'"
    quoted = redact_text("got 'https://u:hunter2@h/x' and (s3://b/k?v=hunter2).")
    assert quoted == "got 'https://u:REDACTED@h/x' and (s3://b/k?v=REDACTED)."
