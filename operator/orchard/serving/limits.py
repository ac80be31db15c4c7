"""What one client may ask of the server: every limit `orchard serve` enforces, declared once.

Each field of `Limits` is a flag of `orchard serve` with an environment default
(`main.add_arguments` builds the flags from the fields' metadata). A client that goes
beyond a limit gets a 4xx (its error, never the served version's), or its connection
is closed:

========================  ==============================  =======  ==========================
flag                      environment                     default  beyond it
========================  ==============================  =======  ==========================
--max-request-rows        ORCHARD_MAX_REQUEST_ROWS        10000    413 too_many_rows
--max-body-bytes          ORCHARD_MAX_BODY_BYTES          16 MiB   413 too_large
--max-header-bytes        ORCHARD_MAX_HEADER_BYTES        16 KiB   431, connection closed
--header-timeout          ORCHARD_HEADER_TIMEOUT          10 s     408, connection closed
--body-timeout            ORCHARD_BODY_TIMEOUT            30 s     408 body_timeout, closed
--keep-alive-timeout      ORCHARD_KEEP_ALIVE_TIMEOUT      5 s      idle connection closed
--max-connections         ORCHARD_MAX_CONNECTIONS         512      see below
--feedback-requests       ORCHARD_FEEDBACK_REQUESTS       100000   the oldest forgotten
--feedback-rows           ORCHARD_FEEDBACK_ROWS           1000000  the oldest forgotten
========================  ==============================  =======  ==========================

- The header timeout runs from the connection's opening, or from its previous response,
  to the end of a request's headers: a connection that never sends anything is closed,
  slow headers (slowloris) get a 408. The body timeout runs from the end of the headers
  to the last byte of the body (an unfinished chunked body gets a 408).
- At `--max-connections` open connections, a new one closes the connection that has been
  waiting longest on its client (idle, sending headers or sending a body); only when
  every connection has a request in the model is the new one answered 503 and closed.
  The cap is lowered to fit the process's file descriptor limit (`fit_fd_limit`).
- Feedback is matched to the answers a pod remembers: at most `--feedback-requests`
  requests and `--feedback-rows` rows, the oldest forgotten first (feedback for one of
  those is 404 unmatched, and counted). A remembered one-row answer takes about 0.44 KB
  (44 MB at the default cap, measured with tracemalloc): lower the cap for small pods.
- The row cap also bounds parsing: a body with more JSON values than that many rows of
  the model can hold is refused (413 too_many_rows) before it is parsed.
- String features reach the metrics as label values: at most `MAX_CATEGORIES` distinct
  ones per feature (later ones count as `__other__`), each cut to `MAX_LABEL_CHARS`
  characters, with control and line-separator characters written as `\\xHH`/`\\uHHHH`.
- Every number must lie within ±`MAX_ABS_VALUE`, float32's range: scikit-learn's tree
  models (and every estimator that casts to float32) raise beyond it, and so bounded,
  the server's sums of squares cannot overflow. Beyond it: 400 invalid_value. Missing
  values are `null` (NaN to the model); JSON has no NaN or Infinity, and a literal too
  large for a double is refused as invalid_value too.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
from dataclasses import dataclass, field

log = logging.getLogger("orchard.serving")

# float32's largest finite value (numpy.finfo(numpy.float32).max), as a Python float.
MAX_ABS_VALUE = 3.4028234663852886e38
# Distinct values of a string feature counted by name in the metrics; the rest: "__other__".
MAX_CATEGORIES = 50
# Characters of a string feature's value kept as a label value; longer ones end in "…".
MAX_LABEL_CHARS = 64
# Bodies up to this size are parsed on the event loop; larger ones on the parse thread.
PARSE_INLINE_BYTES = 64 * 1024
# File descriptors kept for the process itself (model files, logs, the event loop).
FD_RESERVE = 64


def _flag(flag: str, env: str, text: str) -> dict[str, str]:
    """A limit's flag, its environment variable and its help: a field's metadata."""
    return {"flag": flag, "env": env, "help": text}


@dataclass(frozen=True)
class Limits:
    """The limits of one server process (the module docstring says what each one does)."""

    max_request_rows: int = field(
        default=10_000,
        metadata=_flag(
            "--max-request-rows", "ORCHARD_MAX_REQUEST_ROWS", "most rows in one request"
        ),
    )
    max_body_bytes: int = field(
        default=16 * 1024 * 1024,
        metadata=_flag("--max-body-bytes", "ORCHARD_MAX_BODY_BYTES", "largest request body"),
    )
    max_header_bytes: int = field(
        default=16 * 1024,
        metadata=_flag(
            "--max-header-bytes", "ORCHARD_MAX_HEADER_BYTES", "largest request line and headers"
        ),
    )
    header_timeout: float = field(
        default=10.0,
        metadata=_flag(
            "--header-timeout", "ORCHARD_HEADER_TIMEOUT",
            "seconds for a request's headers to arrive, from the connection's opening or "
            "its previous response",
        ),
    )  # fmt: skip
    body_timeout: float = field(
        default=30.0,
        metadata=_flag(
            "--body-timeout", "ORCHARD_BODY_TIMEOUT",
            "seconds for a request's body to arrive after its headers",
        ),
    )  # fmt: skip
    keep_alive_timeout: float = field(
        default=5.0,
        metadata=_flag(
            "--keep-alive-timeout", "ORCHARD_KEEP_ALIVE_TIMEOUT",
            "seconds an idle keep-alive connection stays open",
        ),
    )  # fmt: skip
    max_connections: int = field(
        default=512,
        metadata=_flag(
            "--max-connections", "ORCHARD_MAX_CONNECTIONS",
            "most open connections; beyond it, the one waiting longest on its client is closed",
        ),
    )  # fmt: skip
    feedback_requests: int = field(
        default=100_000,
        metadata=_flag(
            "--feedback-requests", "ORCHARD_FEEDBACK_REQUESTS",
            "most answered requests remembered for feedback",
        ),
    )  # fmt: skip
    feedback_rows: int = field(
        default=1_000_000,
        metadata=_flag(
            "--feedback-rows", "ORCHARD_FEEDBACK_ROWS",
            "most predicted rows remembered for feedback",
        ),
    )  # fmt: skip


LIMIT_FIELDS = dataclasses.fields(Limits)


def fit_fd_limit(limits: Limits) -> Limits:
    """The limits with a connection cap that the file descriptor limit can hold.

    At the fd limit `accept` fails and nothing answers, liveness included: better to
    close connections by the cap's rules first.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or limits.max_connections <= soft - FD_RESERVE:
        return limits
    fitted = max(1, soft - FD_RESERVE)
    log.warning(
        "--max-connections %d lowered to %d to fit the file descriptor limit %d",
        limits.max_connections, fitted, soft,
    )  # fmt: skip
    return dataclasses.replace(limits, max_connections=fitted)
