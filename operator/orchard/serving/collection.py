"""Production data for retraining: a sample of requests and the feedback labels, as Parquet.

One `Collector` per serving process. On the event loop it only appends references to what
was answered (`record_request`, `record_labels`: no copy, no I/O); a writer thread turns
the buffer into Parquet segments every `flush_interval` seconds, or sooner once
`max_segment_rows` rows wait, and at shutdown (SIGTERM) everything still buffered is
written before the process exits, so nothing accepted is lost. Memory is bounded
(`max_buffered_rows`: beyond it a request is not collected, and counted as dropped), and
so is a directory's disk (`max_segments` per process and kind: the oldest segment this
process wrote goes first, and is counted; a bucket's retention is its lifecycle rules').
A segment is written beside its final name and renamed into place, or staged in /tmp and
uploaded in one PUT to an s3:// prefix, so a reader never sees half of one. The layout, which a
TrainingJob reads back, is in docs/collection.md:

    <dir>/requests/<pod>-<start>-<seq>.parquet  id, row, time, model_version, <inputs>, prediction
    <dir>/labels/<pod>-<start>-<seq>.parquet    id, row, time, model_version, label
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import random
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchard.contracts import COLLECT_ENV_PREFIX
from orchard.serving.inputs import Array, Rows

log = logging.getLogger("orchard.serving")

REQUESTS, LABELS = "requests", "labels"


@dataclass
class CollectionCounts:
    """What the collector did, for the server's metrics."""

    rows: int = 0  # request rows written
    labels: int = 0  # labels written
    dropped: int = 0  # request rows not collected: the buffer was full
    segments: int = 0
    removed: int = 0  # segments removed to keep within max_segments
    errors: int = 0  # segments that could not be written (their rows are lost, and counted)


@dataclass
class _Buffer:
    ids: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    rows: list[Rows] = field(default_factory=list)  # requests: each request's rows
    values: list[Array | list[Any]] = field(default_factory=list)  # predictions, or labels
    count: int = 0


def _split(buf: _Buffer, max_rows: int) -> list[_Buffer]:
    """The buffer in parts of at most max_rows rows (a request is never cut in two)."""
    parts, part = [], _Buffer()
    for i, values in enumerate(buf.values):
        n = len(values)
        if part.count and part.count + n > max_rows:
            parts.append(part)
            part = _Buffer()
        part.ids.append(buf.ids[i])
        part.times.append(buf.times[i])
        if buf.rows:
            part.rows.append(buf.rows[i])
        part.values.append(values)
        part.count += n
    return [*parts, part] if part.count else parts


class Collector:
    """Samples answered requests and accepted labels, and writes them as segments."""

    def __init__(
        self,
        target: str | Path,  # a directory, or an s3:// prefix
        pod: str,
        version: str | None,
        columns: list[tuple[str, bool]],  # (name, numeric) of each input, in schema order
        *,
        regression: bool = False,
        sample_rate: float = 1.0,
        flush_interval: float = 30.0,
        max_segment_rows: int = 10_000,
        max_buffered_rows: int = 200_000,
        max_segments: int = 10_000,
    ) -> None:
        text = str(target)
        self.s3_prefix = text if text.startswith("s3://") else None
        self.directory = (
            Path(tempfile.mkdtemp(prefix="orchard-collect-")) if self.s3_prefix else Path(target)
        )
        self.pod, self.version = pod, version or ""
        self.columns, self.regression = columns, regression
        self.sample_rate = sample_rate
        self.flush_interval, self.max_segment_rows = flush_interval, max_segment_rows
        self.max_buffered_rows, self.max_segments = max_buffered_rows, max_segments
        self.counts = CollectionCounts()
        self._start = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self._seq = 0
        self._buffers = {REQUESTS: _Buffer(), LABELS: _Buffer()}
        self._written: dict[str, deque[Path]] = {REQUESTS: deque(), LABELS: deque()}
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="orchard-collect")
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # --- on the event loop ---------------------------------------------------------------

    def record_request(self, request_id: str, rows: Rows, predictions: Array, n: int) -> None:
        if self.sample_rate < 1.0 and random.random() >= self.sample_rate:
            return
        if self._buffered() + n > self.max_buffered_rows:
            self.counts.dropped += n
            return
        self._add(REQUESTS, request_id, rows, predictions, n)

    def record_labels(self, request_id: str, labels: list[Any]) -> None:
        """Labels the server accepted: always kept (they are few, and costly to get)."""
        self._add(LABELS, request_id, None, labels, len(labels))

    def _add(self, kind: str, request_id: str, rows: Rows | None, values: Any, n: int) -> None:
        buf = self._buffers[kind]
        buf.ids.append(request_id)
        buf.times.append(time.time())
        if rows is not None:
            buf.rows.append(rows)
        buf.values.append(values)
        buf.count += n
        if buf.count >= self.max_segment_rows:
            self._wake.set()

    def _buffered(self) -> int:
        return sum(b.count for b in self._buffers.values())

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="orchard-collect")

    async def _run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(self.flush_interval):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write what is buffered (on the writer thread), max_segment_rows to a segment."""
        loop = asyncio.get_running_loop()
        for kind, buf in self._buffers.items():
            if buf.count:
                self._buffers[kind] = _Buffer()
                for part in _split(buf, self.max_segment_rows):
                    await loop.run_in_executor(self._writer, self._write, kind, part)

    async def close(self) -> None:
        """At shutdown: stop the timer and write everything still buffered."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.flush()
        self._writer.shutdown(wait=True)

    # --- on the writer thread ------------------------------------------------------------

    def _write(self, kind: str, buf: _Buffer) -> None:
        try:
            table = self._requests_table(buf) if kind == REQUESTS else self._labels_table(buf)
            self._seq += 1
            folder = self.directory / kind
            folder.mkdir(parents=True, exist_ok=True)
            name = f"{self.pod}-{self._start}-{self._seq:06d}.parquet"
            tmp = folder / f".{name}.tmp"
            import pyarrow.parquet as pq

            pq.write_table(table, tmp, compression="zstd")
            os.replace(tmp, folder / name)
            if self.s3_prefix is not None:  # one PUT: the object appears whole, or not at all
                self._upload(folder / name, f"{kind}/{name}")
        except Exception as exc:  # disk full, a directory not writable: count, keep serving
            where = self.s3_prefix or self.directory
            log.warning("cannot write a %s segment to %s: %s", kind, where, exc)
            self.counts.errors += 1
            return
        self.counts.segments += 1
        if kind == REQUESTS:
            self.counts.rows += buf.count
        else:
            self.counts.labels += buf.count
        if self.s3_prefix is None:
            self._keep_within(kind, folder / name)

    def _upload(self, local: Path, key: str) -> None:
        from orchard.artifacts.store import S3Settings, S3Store, split_s3

        try:
            store = S3Store(S3Settings.from_env(COLLECT_ENV_PREFIX))
            bucket, prefix = split_s3(str(self.s3_prefix))
            store.client.upload_file(str(local), bucket, f"{prefix.rstrip('/')}/{key}".lstrip("/"))
        finally:
            local.unlink(missing_ok=True)  # the local copy only stages the upload

    def _keep_within(self, kind: str, written: Path) -> None:
        """This process's segments of a kind, the oldest removed beyond max_segments (no
        listing of the directory, which holds every pod's)."""
        mine = self._written[kind]
        mine.append(written)
        while len(mine) > self.max_segments:
            mine.popleft().unlink(missing_ok=True)
            self.counts.removed += 1

    def _common(self, buf: _Buffer, sizes: list[int]) -> dict[str, Any]:
        """id, row, time and model_version of every row: built in arrow's and numpy's C
        code (one index array), not per row in Python, to keep the GIL for serving."""
        import pyarrow as pa

        counts = np.asarray(sizes, dtype=np.int64)
        request = np.repeat(np.arange(len(sizes)), counts)  # each row's request
        starts = np.cumsum(counts) - counts
        total = int(counts.sum())
        return {
            "id": pa.array(buf.ids, pa.string()).take(pa.array(request)),
            "row": pa.array((np.arange(total) - starts[request]).astype(np.int32)),
            "time": pa.array(
                (np.asarray(buf.times)[request] * 1000).astype(np.int64),
                pa.timestamp("ms", tz="UTC"),
            ),
            "model_version": pa.array([self.version], pa.string()).take(
                pa.array(np.zeros(total, dtype=np.int64))
            ),
        }

    def _requests_table(self, buf: _Buffer) -> Any:
        import pyarrow as pa

        sizes = [len(v) for v in buf.values]
        data = self._common(buf, sizes)
        matrix = [r for r in buf.rows if not isinstance(r, list)]
        whole = np.concatenate(matrix) if len(matrix) == len(buf.rows) and matrix else None
        for j, (name, numeric) in enumerate(self.columns):
            if whole is not None:  # every request one 2-D array: slice the columns of one
                values = whole[:, j]
            else:
                parts = [r[j] if isinstance(r, list) else r[:, j] for r in buf.rows]
                values = np.concatenate(parts) if parts else np.array([])
            if numeric:
                data[name] = pa.array(values.astype(float), pa.float64())
            else:
                data[name] = pa.array([v if isinstance(v, str) else None for v in values])
        predictions = np.concatenate([np.asarray(v) for v in buf.values])
        if self.regression:
            data["prediction"] = pa.array(predictions.astype(float), pa.float64())
        elif predictions.dtype.kind in "iu":  # integer class labels as text, cast in arrow
            data["prediction"] = pa.array(predictions).cast(pa.string())
        else:
            data["prediction"] = pa.array([str(v) for v in predictions.tolist()], pa.string())
        return pa.table(data)

    def _labels_table(self, buf: _Buffer) -> Any:
        import pyarrow as pa

        sizes = [len(v) for v in buf.values]
        data = self._common(buf, sizes)
        labels = [label for values in buf.values for label in values]
        data["label"] = (  # as the predictions are written: values, or class names as text
            pa.array([float(v) for v in labels], pa.float64())
            if self.regression
            else pa.array([str(v) for v in labels], pa.string())
        )
        return pa.table(data)
