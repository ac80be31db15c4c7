"""Getting the training data: scikit-learn's bundled datasets by name, or a CSV or
Parquet file at a URI, with the sha256 fingerprint that pins exactly which bytes trained
the model.
"""

from __future__ import annotations

import io
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pandas as pd

from orchard.api.trainingjob import Dataset
from orchard.artifacts import (
    ArtifactError,
    OutsideLocalRoots,
    UnsupportedURI,
    read_bytes,
    redact_uri,
    sha256_bytes,
)
from orchard.trainer.errors import DatasetUnavailable, InvalidSpec

# Credentials for an s3:// dataset: ORCHARD_DATASET_AWS_* (envFrom with this prefix) win
# over plain AWS_*, so the dataset's Secret and the artifact store's may differ.
DATASET_ENV_PREFIX = "ORCHARD_DATASET_"
BUILTIN_TARGET = "target"
# An http(s) download: each read waits at most READ_TIMEOUT_SECONDS, the whole at most
# the deadline, and it may be at most max_bytes long (both from the environment).
READ_TIMEOUT_SECONDS = 60
DOWNLOAD_TIMEOUT_ENV = "ORCHARD_DATASET_DOWNLOAD_TIMEOUT"  # seconds
MAX_BYTES_ENV = "ORCHARD_DATASET_MAX_BYTES"
DEFAULT_DOWNLOAD_SECONDS = 600.0
DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB: a pod's memory limit bounds the parsed frame anyway
CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class DownloadLimits:
    """How long and how large an http(s) dataset may be: a server that drips a byte a
    second, or never stops sending, must not hold a training pod (or its memory) forever."""

    seconds: float = DEFAULT_DOWNLOAD_SECONDS
    max_bytes: int = DEFAULT_MAX_BYTES

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> DownloadLimits:
        env = os.environ if env is None else env
        try:
            seconds = float(env.get(DOWNLOAD_TIMEOUT_ENV) or DEFAULT_DOWNLOAD_SECONDS)
            max_bytes = int(env.get(MAX_BYTES_ENV) or DEFAULT_MAX_BYTES)
        except ValueError as exc:
            raise InvalidSpec(f"{DOWNLOAD_TIMEOUT_ENV} / {MAX_BYTES_ENV}: {exc}") from exc
        if seconds <= 0 or max_bytes <= 0:
            raise InvalidSpec(f"{DOWNLOAD_TIMEOUT_ENV} and {MAX_BYTES_ENV} must be positive")
        return cls(seconds=seconds, max_bytes=max_bytes)


@dataclass(frozen=True)
class LoadedDataset:
    """A dataset and what is recorded of it: the URI without its credentials
    (`redact_uri`), and the digest that pins the exact bytes read."""

    frame: pd.DataFrame
    uri: str
    digest: str
    target: str


def clean_name(name: str) -> str:
    """A column name fit for a JSON key and a URL: 'sepal length (cm)' -> 'sepal_length'."""
    name = re.sub(r"\s*\([^)]*\)", "", name).strip().lower()
    return re.sub(r"[^a-z0-9]+", "_", name).strip("_")


def _builtin_loader(name: str) -> Callable[..., Any]:
    from sklearn import datasets

    loaders: dict[str, Callable[..., Any]] = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "diabetes": datasets.load_diabetes,
        "digits": datasets.load_digits,
    }
    if name not in loaders:
        raise InvalidSpec(f"unknown builtin dataset {name!r}; choose one of {sorted(loaders)}")
    return loaders[name]


def load_builtin(name: str) -> pd.DataFrame:
    """A bundled dataset as one frame: clean feature names, a `target` column, and class
    labels as strings where the dataset names its classes."""
    bunch = _builtin_loader(name)(as_frame=True)
    features: pd.DataFrame = bunch.data.copy()
    features.columns = [clean_name(str(c)) for c in features.columns]
    if len(set(features.columns)) != len(features.columns):  # pragma: no cover - a guard
        raise DatasetUnavailable(f"builtin dataset {name!r} has clashing column names")
    target = bunch.target
    names = getattr(bunch, "target_names", None)
    if names is not None and len(names) > 0:
        labels = np.asarray([str(n) for n in names], dtype=object)
        target = pd.Series(labels[np.asarray(target, dtype=int)], name=BUILTIN_TARGET, dtype=object)
    features[BUILTIN_TARGET] = np.asarray(target)
    return features


def frame_fingerprint(frame: pd.DataFrame) -> str:
    """The sha256 of a frame's canonical CSV text: a builtin dataset has no file, and
    the rows `orchard evaluate` scores are gathered from several."""
    return sha256_bytes(frame.to_csv(index=False, lineterminator="\n").encode())


def download(uri: str, limits: DownloadLimits) -> bytes:
    """The body at an http(s) URI, read a chunk at a time against the deadline and the
    size cap (a Content-Length beyond the cap is refused before any of the body is read)."""
    shown = redact_uri(uri)
    deadline = time.monotonic() + limits.seconds
    body = io.BytesIO()  # getvalue() hands over its buffer: the body is held once
    try:
        timeout = min(READ_TIMEOUT_SECONDS, limits.seconds)
        with urllib.request.urlopen(uri, timeout=timeout) as resp:
            declared = resp.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > limits.max_bytes:
                raise DatasetUnavailable(
                    f"{shown} is {int(declared)} bytes, more than the {limits.max_bytes} "
                    f"bytes a dataset download may be ({MAX_BYTES_ENV})"
                )
            while chunk := resp.read1(CHUNK_BYTES):  # what arrived, not a full chunk
                body.write(chunk)
                if body.tell() > limits.max_bytes:
                    raise DatasetUnavailable(
                        f"{shown} is more than the {limits.max_bytes} bytes a dataset "
                        f"download may be ({MAX_BYTES_ENV})"
                    )
                if time.monotonic() > deadline:
                    raise DatasetUnavailable(
                        f"the download of {shown} did not finish within {limits.seconds:g} s "
                        f"({body.tell()} bytes read; {DOWNLOAD_TIMEOUT_ENV})"
                    )
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DatasetUnavailable(f"cannot download {shown}: {exc}") from exc
    return body.getvalue()


def fetch_bytes(uri: str, limits: DownloadLimits | None = None) -> bytes:
    """The raw bytes of a dataset file at file://, pvc://, http(s):// or s3://.

    In the cluster local paths reach only the mounted volumes (orchard.artifacts.store);
    a path outside them is `InvalidSpec`, as is any URI the trainer will not read: the
    spec has to change, and retrying the pod cannot help.
    """
    shown = redact_uri(uri)
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https"):
        if "@" in parts.netloc:
            raise InvalidSpec(
                f"dataset.uri {shown} carries credentials in its host part, which the trainer "
                "does not send; use a presigned URL, or s3:// with dataset.secretName",
                parameter="dataset.uri",
            )
        return download(uri, limits or DownloadLimits.from_env())
    if parts.scheme not in ("file", "pvc", "s3"):
        raise InvalidSpec(
            f"unsupported dataset URI scheme {parts.scheme!r}: {shown}", parameter="dataset.uri"
        )
    try:
        return read_bytes(uri, s3_env_prefix=DATASET_ENV_PREFIX)
    except OutsideLocalRoots as exc:
        raise InvalidSpec(
            f"dataset.uri {exc.place}; in the cluster, datasets are read from "
            "pvc://<claim>/<path>, s3:// or https://",
            parameter="dataset.uri",
        ) from exc
    except UnsupportedURI as exc:
        raise InvalidSpec(f"dataset.uri: {exc}", parameter="dataset.uri") from exc
    except ArtifactError as exc:
        raise DatasetUnavailable(f"cannot read dataset {shown}: {exc}") from exc


def infer_format(uri: str, declared: str | None) -> str:
    """csv or parquet: as declared, else from the file extension."""
    if declared:
        return declared
    suffixes = [s.lower() for s in PurePosixPath(urlsplit(uri).path).suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        return "parquet"
    if ".csv" in suffixes or ".tsv" in suffixes:
        return "csv"
    raise InvalidSpec(
        f"cannot tell the format of {redact_uri(uri)} from its extension; "
        "set dataset.format (csv or parquet)"
    )


def parse_problem(exc: Exception) -> str:
    """What stopped the parser, in words of our own: pandas' and pyarrow's messages may
    quote the line they stopped at, and that line may be anything (a link to
    /proc/self/environ makes it the pod's whole environment). Kept: the kind of error and
    the line number, where the parser gives one."""
    if isinstance(exc, pd.errors.EmptyDataError):
        return "the file is empty"
    if isinstance(exc, UnicodeDecodeError):
        return f"the file is not UTF-8 text (byte {exc.start} cannot be decoded)"
    line = re.search(r"\bline (\d+)", str(exc))
    where = f" near line {line.group(1)}" if line else ""
    return f"the file is malformed{where} ({type(exc).__name__})"


def parse_table(raw: bytes, fmt: str, uri: str = "") -> pd.DataFrame:
    """A frame from CSV (optionally gzip-compressed) or Parquet bytes."""
    try:
        if fmt == "parquet":
            return pd.read_parquet(io.BytesIO(raw))
        compression = "gzip" if raw[:2] == b"\x1f\x8b" else None
        path = urlsplit(uri).path.lower()
        sep = "\t" if path.removesuffix(".gz").endswith(".tsv") else ","
        return pd.read_csv(io.BytesIO(raw), compression=compression, sep=sep)
    except Exception as exc:
        raise DatasetUnavailable(
            f"cannot parse {redact_uri(uri) or 'the dataset'} as {fmt}: {parse_problem(exc)}"
        ) from exc


def load_dataset(spec: Dataset) -> LoadedDataset:
    """The dataset a TrainingJob names, with its fingerprint."""
    if spec.builtin is not None:
        frame = load_builtin(spec.builtin)
        return LoadedDataset(
            frame=frame,
            uri=f"builtin:{spec.builtin}",
            digest=frame_fingerprint(frame),
            target=spec.target or BUILTIN_TARGET,
        )
    if spec.uri is None or spec.target is None:
        raise InvalidSpec("dataset needs either builtin, or uri and target")
    fmt = infer_format(spec.uri, spec.format)
    raw = fetch_bytes(spec.uri)
    return LoadedDataset(
        frame=parse_table(raw, fmt, spec.uri),
        uri=redact_uri(spec.uri),  # what metadata.json, the result and the logs show
        digest=sha256_bytes(raw),
        target=spec.target,
    )
