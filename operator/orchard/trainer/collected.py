"""Reading back what a ModelDeployment collected (docs/collection.md): the labelled
production rows of some of its versions, in a time window, as training or evaluation rows.

A deployment's collection directory holds one directory per model version, each with
``requests/`` and ``labels/`` Parquet segments. Requests and labels are joined on
``(id, row)``: a label without its request row (the request was not sampled) is dropped,
and so is a request row without a label. The window is on the requests' ``time``, the
moment the answer was given.

Every segment is read once, through the same confined reads as a dataset file, and its
sha256 is taken of the very bytes parsed: the digest of what was read pins the rows.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pandas as pd
import pyarrow.parquet as pq

from orchard.api.trainingjob import CollectedRows, Dataset
from orchard.artifacts import (
    ArtifactError,
    OutsideLocalRoots,
    UnsupportedURI,
    local_path,
    read_bytes,
    redact_uri,
    sha256_bytes,
)
from orchard.trainer.checks import resolve_features
from orchard.trainer.data import LoadedDataset
from orchard.trainer.errors import DataCheckFailed, DatasetUnavailable, InvalidSpec

log = logging.getLogger("orchard.trainer")

LABEL = "label"
# The label's column in a joined frame: a name no input of a model has.
JOINED_LABEL = "__orchard_label__"
KEY = ["id", "row"]
# Columns of a requests segment that are not the model's inputs.
REQUEST_COLUMNS = frozenset({"id", "row", "time", "model_version", "prediction"})


@dataclass(frozen=True)
class Collected:
    """The labelled rows read (each request row's columns, and the label as
    `JOINED_LABEL`), and what pins
    them: every segment read, by its path below the collection directory, with its sha256."""

    frame: pd.DataFrame
    uri: str  # without credentials
    segments: tuple[tuple[str, str], ...]
    since: datetime | None
    until: datetime | None
    versions: tuple[str, ...] | None
    # The columns of each version directory's requests segments (that has some).
    columns: tuple[tuple[str, frozenset[str]], ...] = ()

    @property
    def digest(self) -> str:
        """sha256 over the window and the sorted (segment, sha256) list."""
        pinned = {
            "since": iso(self.since),
            "until": iso(self.until),
            "segments": [list(s) for s in sorted(self.segments)],
        }
        return sha256_bytes(json.dumps(pinned, separators=(",", ":")).encode())

    def info(self) -> dict[str, Any]:
        """What the report and metadata.json record of the rows added (an open end of
        the window, and the versions when all were read, left out)."""
        info = {
            "uri": self.uri,
            "rows": len(self.frame),
            "since": iso(self.since),
            "until": iso(self.until),
            "versions": list(self.versions) if self.versions is not None else None,
            "digest": self.digest,
        }
        return {k: v for k, v in info.items() if v is not None}


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return utc(moment).isoformat().replace("+00:00", "Z")


def utc(moment: datetime) -> datetime:
    """A naive time is taken as UTC, as the segments' times are."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def collection_dir(uri: str, parameter: str = "dataset.collected.uri") -> Path:
    """The local directory of a pvc:// or file:// collection URI (confined like every
    local read); s3:// is not read yet."""
    shown = redact_uri(uri)
    if urlsplit(uri).scheme == "s3":
        raise InvalidSpec(
            f"{parameter} {shown}: collected rows are read from pvc:// or file:// only; "
            "s3:// is not supported yet",
            parameter=parameter,
        )
    try:
        root = local_path(uri)
    except OutsideLocalRoots as exc:
        raise InvalidSpec(
            f"{parameter} {exc.place}; in the cluster, collected rows are read from "
            "pvc://<claim>/<path>",
            parameter=parameter,
        ) from exc
    except UnsupportedURI as exc:
        raise InvalidSpec(f"{parameter}: {exc}", parameter=parameter) from exc
    if not root.is_dir():
        raise DatasetUnavailable(f"collected rows: {shown} is not a directory")
    return root


def _visible(path: Path) -> bool:
    """Not a temp file (a segment is written beside its name, as `.<name>.tmp`)."""
    return not path.name.startswith(".")


def version_dirs(root: Path, versions: Sequence[str] | None) -> list[Path]:
    """The chosen versions' directories, sorted by name; a named version without a
    directory (nothing collected yet) is skipped."""
    found = sorted(p for p in root.iterdir() if _visible(p) and p.is_dir())
    if versions is None:
        return found
    wanted = set(versions)
    chosen = [p for p in found if p.name in wanted]
    absent = sorted(wanted - {p.name for p in chosen})
    if absent:
        log.warning("collected rows: no directory for version(s) %s", ", ".join(absent))
    return chosen


def _segment(path: Path, relative: str) -> tuple[pd.DataFrame, str]:
    """A segment's rows and the sha256 of the bytes they were parsed from."""
    uri = f"file://{path}"
    try:
        raw = read_bytes(uri)
    except OutsideLocalRoots as exc:
        raise InvalidSpec(f"collected segment {relative}: {exc}") from exc
    except ArtifactError as exc:
        raise DatasetUnavailable(f"cannot read collected segment {relative}: {exc}") from exc
    try:
        frame = pq.read_table(io.BytesIO(raw)).to_pandas()
    except Exception as exc:
        raise DatasetUnavailable(
            f"cannot parse collected segment {relative} as parquet ({type(exc).__name__})"
        ) from exc
    return frame, sha256_bytes(raw)


def _read_kind(
    root: Path, directory: Path, kind: str, segments: list[tuple[str, str]]
) -> list[pd.DataFrame]:
    place = directory / kind
    if not place.is_dir():
        return []
    frames = []
    for path in sorted(p for p in place.iterdir() if _visible(p) and p.suffix == ".parquet"):
        relative = path.relative_to(root).as_posix()
        frame, digest = _segment(path, relative)
        needed = {"id", "row", "time"} | ({LABEL} if kind == "labels" else set())
        if absent := sorted(needed - set(frame.columns)):
            raise DatasetUnavailable(
                f"collected segment {relative} has no column {absent[0]!r} (docs/collection.md)"
            )
        segments.append((relative, digest))
        frames.append(frame)
    return frames


def read_collected(
    uri: str,
    *,
    versions: Sequence[str] | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    parameter: str = "dataset.collected.uri",
) -> Collected:
    """The labelled rows under a deployment's collection directory, answered in
    [since, until): every requests column, and the label (`JOINED_LABEL`)."""
    root = collection_dir(uri, parameter)
    segments: list[tuple[str, str]] = []
    joined = []
    columns: list[tuple[str, frozenset[str]]] = []
    for directory in version_dirs(root, versions):  # a pair shares its version's directory
        requests = _read_kind(root, directory, "requests", segments)
        labels = _read_kind(root, directory, "labels", segments)
        if requests:
            common = frozenset.intersection(*(frozenset(map(str, r.columns)) for r in requests))
            columns.append((directory.name, common))
        joined.append(_join(requests, labels))
    nonempty = [j for j in joined if len(j) > 0]
    if nonempty:
        frame = pd.concat(nonempty, ignore_index=True)
    else:
        frame = joined[0] if joined else _join([], [])
    if len(frame) > 0:
        times = pd.to_datetime(frame["time"], utc=True)
        keep = pd.Series(True, index=frame.index)
        if since is not None:
            keep &= times >= pd.Timestamp(utc(since))
        if until is not None:
            keep &= times < pd.Timestamp(utc(until))
        frame = frame[keep].reset_index(drop=True)
    return Collected(
        frame=frame,
        uri=redact_uri(uri),
        segments=tuple(segments),
        since=since,
        until=until,
        versions=tuple(versions) if versions is not None else None,
        columns=tuple(columns),
    )


def _join(requests: list[pd.DataFrame], labels: list[pd.DataFrame]) -> pd.DataFrame:
    """Request rows with their label (one per row: the first written wins)."""
    if not requests or not labels:
        columns = list(requests[0].columns) if requests else [*KEY, "time"]
        return pd.DataFrame(columns=[*columns, JOINED_LABEL])
    asked = pd.concat(requests, ignore_index=True).drop_duplicates(subset=KEY)
    told = pd.concat(labels, ignore_index=True)[[*KEY, LABEL]].drop_duplicates(subset=KEY)
    told = told.rename(columns={LABEL: JOINED_LABEL})
    asked["row"] = asked["row"].astype("int64")
    told["row"] = told["row"].astype("int64")
    return asked.merge(told, on=KEY, how="inner")


def cast_labels(labels: pd.Series, like: pd.Series) -> pd.Series:
    """Labels (written as text for a classifier) in the dtype of the target column
    `like`, where that is numeric; `DataCheckFailed` for a label that is not a number."""
    if not pd.api.types.is_numeric_dtype(like) or pd.api.types.is_bool_dtype(like):
        return labels.map(lambda v: v if v is None or pd.isna(v) else str(v)).astype(object)
    numbers = pd.to_numeric(labels, errors="coerce")
    bad = int((numbers.isna() & labels.notna()).sum())
    if bad:
        raise DataCheckFailed(
            f"{bad} collected label(s) are not numbers, but the target column {like.name!r} is",
            check="targetType",
            column=str(like.name),
        )
    integral = not numbers.isna().any() and bool((numbers == numbers.round()).all())
    if pd.api.types.is_integer_dtype(like) and integral:
        return numbers.astype(like.dtype)
    return numbers.astype(float)


def training_rows(collected: Collected, columns: Sequence[str], target: pd.Series) -> pd.DataFrame:
    """The collected rows as rows of a frame with these input `columns` and the target
    column `target.name` (cast like `target`); `DataCheckFailed` naming a missing input."""
    if len(collected.frame) == 0:
        return pd.DataFrame(columns=[*columns, str(target.name)])
    frame = collected.frame
    present = set(map(str, frame["model_version"])) if "model_version" in frame else set()
    for column in columns:
        if column not in collected.frame.columns or column in REQUEST_COLUMNS:
            raise DataCheckFailed(
                f"the collected rows have no input column {column!r}, which the dataset has",
                check="featuresPresent",
                column=column,
            )
        for version, has in collected.columns:
            if column not in has and version in present:
                raise DataCheckFailed(
                    f"the collected rows of version {version} have no input column "
                    f"{column!r}, which the dataset has",
                    check="featuresPresent",
                    column=column,
                )
    rows = collected.frame[list(columns)].copy()
    rows[str(target.name)] = cast_labels(collected.frame[JOINED_LABEL], target).to_numpy()
    return rows


def append_collected(data: LoadedDataset, spec: Dataset) -> tuple[LoadedDataset, Collected]:
    """The dataset's rows followed by the labelled collected rows `spec.collected` names,
    in the dataset's feature columns and target; its digest pins both parts."""
    chosen: CollectedRows | None = spec.collected
    if chosen is None:  # pragma: no cover - a guard for the caller
        raise InvalidSpec("dataset.collected is not set")
    collected = read_collected(
        chosen.uri, versions=chosen.versions, since=chosen.since, until=chosen.until
    )
    rows = len(collected.frame)
    log.info(
        "collected %s: %d labelled rows from %d segments",
        collected.uri,
        rows,
        len(collected.segments),
    )
    if rows < chosen.min_rows:
        raise DataCheckFailed(
            f"dataset.collected has {rows} labelled row(s) in its window, fewer than "
            f"minRows {chosen.min_rows}",
            check="collectedMinRows",
        )
    if data.target not in data.frame.columns:
        return data, collected  # the checks say what is wrong with the dataset itself
    features = resolve_features(data.frame, data.target, spec.features)
    if any(f not in data.frame.columns for f in features):
        return data, collected  # the checks name it (featuresPresent)
    keep = [*features, data.target]
    added = training_rows(collected, features, data.frame[data.target])
    frame = data.frame[keep]
    if len(added) > 0:
        frame = pd.concat([frame, added[keep]], ignore_index=True)
    pinned = {"dataset": data.digest, "collected": collected.digest}
    digest = sha256_bytes(json.dumps(pinned, separators=(",", ":")).encode())
    return LoadedDataset(frame=frame, uri=data.uri, digest=digest, target=data.target), collected
