"""One small interface over where artifacts live: a local path, a mounted volume, S3.

- ``file:///abs/dir`` (or a plain path): a local directory.
- ``pvc://<claim>/<path>``: the claim mounted at ``$ORCHARD_PVC_ROOT/<claim>/``
  (default ``/mnt/pvc/<claim>/``), so the same URI means the same bytes in every pod
  that mounts the claim there.
- ``s3://<bucket>/<prefix>``: any S3-compatible store; credentials and endpoint from the
  environment (as injected from a Secret), see `S3Settings`.

A directory is written file by file with ``metadata.json`` last: a reader that sees
metadata.json sees the files it pins (and `verify_artifact` catches anything else).

Local paths are confined when ``$ORCHARD_LOCAL_ROOTS`` is set, as the operator sets it in
every trainer and verifier pod: a pod's own filesystem holds nothing a user should read
(``/proc/self/environ`` holds the S3 keys of its Secrets), so there file:// and pvc://
reach only the mounted volumes, checked on the resolved path so that a symbolic link on a
volume cannot point out of it. Unset, as on a laptop, any local path is used as given.
Messages show URIs through `redact_uri`.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import urlsplit

from orchard.artifacts.errors import (
    ArtifactError,
    ArtifactNotFound,
    OutsideLocalRoots,
    UnsupportedURI,
)
from orchard.artifacts.metadata import METADATA_FILE
from orchard.artifacts.redact import redact_uri

PVC_ROOT_ENV = "ORCHARD_PVC_ROOT"
DEFAULT_PVC_ROOT = "/mnt/pvc"
# The directories local paths are confined to, os.pathsep-separated: in the cluster, the
# mounted volumes (the operator sets it to DEFAULT_PVC_ROOT); unset on a laptop.
LOCAL_ROOTS_ENV = "ORCHARD_LOCAL_ROOTS"


class ArtifactStore(Protocol):
    """Put a directory, get a directory, read one object's bytes."""

    def put_dir(self, local: Path, uri: str) -> None: ...

    def get_dir(self, uri: str, local: Path) -> Path: ...

    def read_bytes(self, uri: str) -> bytes: ...


def _files_metadata_last(local: Path) -> list[Path]:
    files = sorted(p for p in local.rglob("*") if p.is_file())
    return sorted(files, key=lambda p: p.relative_to(local).as_posix() == METADATA_FILE)


def _safe_relative(path: str) -> PurePosixPath:
    rel = PurePosixPath(path.lstrip("/"))
    if ".." in rel.parts:
        raise UnsupportedURI(f"path {path!r} leaves its root ('..' is not allowed)")
    return rel


def local_roots(env: Mapping[str, str] | None = None) -> tuple[str, ...] | None:
    """The directories local paths are confined to, or None when they are not.

    Set but empty confines to nothing at all: a setting meant to protect fails closed.
    """
    env = os.environ if env is None else env
    if LOCAL_ROOTS_ENV not in env:
        return None
    return tuple(r for r in env[LOCAL_ROOTS_ENV].split(os.pathsep) if r)


def _within(path: str, roots: tuple[str, ...]) -> bool:
    """Whether a resolved path lies in (or is) one of the roots, themselves resolved."""
    return any(Path(path).is_relative_to(os.path.realpath(root)) for root in roots)


def confine(path: Path, uri: str, env: Mapping[str, str] | None = None) -> Path:
    """`path` resolved (every symbolic link followed) when local paths are confined, or
    `OutsideLocalRoots` when it resolves outside the roots; `path` as it is when not."""
    roots = local_roots(env)
    if roots is None:
        return path
    real = os.path.realpath(path)
    if not _within(real, roots):
        # Said when the path names a place on a volume and a link there leads out.
        lexical = os.path.abspath(path)
        through_link = any(Path(lexical).is_relative_to(os.path.abspath(r)) for r in roots)
        raise OutsideLocalRoots(redact_uri(uri), roots, through_link=through_link)
    return Path(real)


def local_path(uri: str, env: Mapping[str, str] | None = None) -> Path:
    """The local path a file:// or pvc:// URI (or a plain path) names, confined to
    $ORCHARD_LOCAL_ROOTS when that is set (see `confine`)."""
    env = os.environ if env is None else env
    parts = urlsplit(uri)
    shown = redact_uri(uri)
    if parts.scheme == "":
        return confine(Path(uri), uri, env)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UnsupportedURI(f"file URI with a host is not supported: {shown}")
        return confine(Path(parts.path), uri, env)
    if parts.scheme == "pvc":
        if not parts.netloc or parts.netloc in (".", "..") or "@" in parts.netloc:
            raise UnsupportedURI(
                f"pvc URI without a valid claim name: {shown} (pvc://<claim>/<path>)"
            )
        root = Path(env.get(PVC_ROOT_ENV) or DEFAULT_PVC_ROOT)
        return confine(root / parts.netloc / _safe_relative(parts.path), uri, env)
    raise UnsupportedURI(f"not a local URI: {shown}")


def _read_confined(path: Path, uri: str, roots: tuple[str, ...]) -> bytes:
    """The bytes of a regular file inside the roots, checked on the file actually opened:
    a link swapped in after `confine` looked (another pod may write the volume) is caught
    by O_NOFOLLOW or by the opened descriptor's own path, and a FIFO or device is refused
    before anything is read from it."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | os.O_CLOEXEC
    fd = os.open(path, flags)
    with os.fdopen(fd, "rb") as f:
        opened = f"/proc/self/fd/{fd}"
        if os.path.islink(opened) and not _within(os.readlink(opened), roots):
            raise OutsideLocalRoots(redact_uri(uri), roots, through_link=True)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ArtifactError(f"{redact_uri(uri)} is not a regular file")
        os.set_blocking(fd, True)
        return f.read()


class LocalStore:
    """file:// and pvc:// (a volume mounted into the pod is just a directory)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = env

    def put_dir(self, local: Path, uri: str) -> None:
        dest = local_path(uri, self._env)
        try:
            dest.mkdir(parents=True, exist_ok=True)
            for src in _files_metadata_last(local):
                target = dest / src.relative_to(local)
                target.parent.mkdir(parents=True, exist_ok=True)
                # Copy beside the target, then rename: a reader never sees half a file.
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
                os.close(fd)
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from other readers
                os.replace(tmp, target)
        except OSError as exc:
            raise ArtifactError(f"cannot write {redact_uri(uri)} ({dest}): {exc}") from exc

    def get_dir(self, uri: str, local: Path) -> Path:
        src = local_path(uri, self._env)
        if not src.is_dir():
            raise ArtifactNotFound(f"{redact_uri(uri)} ({src}) is not a directory")
        try:
            shutil.copytree(src, local, dirs_exist_ok=True)
        except OSError as exc:
            raise ArtifactError(f"cannot read {redact_uri(uri)} ({src}): {exc}") from exc
        return local

    def read_bytes(self, uri: str) -> bytes:
        path = local_path(uri, self._env)
        roots = local_roots(self._env)
        try:
            return path.read_bytes() if roots is None else _read_confined(path, uri, roots)
        except FileNotFoundError as exc:
            raise ArtifactNotFound(f"{redact_uri(uri)} ({path}) does not exist") from exc
        except OSError as exc:
            raise ArtifactError(f"cannot read {redact_uri(uri)} ({path}): {exc}") from exc


@dataclass(frozen=True)
class S3Settings:
    """Where and as whom to reach an S3-compatible store.

    Read from the environment; a variable with the prefix (for example
    ``ORCHARD_DATASET_AWS_ACCESS_KEY_ID``, from ``envFrom: [{prefix: ORCHARD_DATASET_, ...}]``)
    wins over the plain one, so the dataset and the artifacts may use different Secrets.
    """

    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    endpoint_url: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_env(cls, prefix: str = "", env: Mapping[str, str] | None = None) -> S3Settings:
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return (env.get(prefix + name) if prefix else None) or env.get(name) or None

        return cls(
            access_key_id=get("AWS_ACCESS_KEY_ID"),
            secret_access_key=get("AWS_SECRET_ACCESS_KEY"),
            session_token=get("AWS_SESSION_TOKEN"),
            endpoint_url=get("AWS_ENDPOINT_URL_S3") or get("AWS_ENDPOINT_URL"),
            region=get("AWS_REGION") or get("AWS_DEFAULT_REGION") or "us-east-1",
        )


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise UnsupportedURI(f"not an s3 URI: {redact_uri(uri)} (s3://<bucket>/<key>)")
    key = _safe_relative(parts.path).as_posix()
    return parts.netloc, "" if key == "." else key


class S3Store:
    """s3:// through boto3, imported only when an s3:// URI is used."""

    def __init__(self, settings: S3Settings | None = None) -> None:
        self._settings = settings or S3Settings.from_env()
        self._client: Any = None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            s = self._settings
            self._client = boto3.client(
                "s3",
                endpoint_url=s.endpoint_url,
                aws_access_key_id=s.access_key_id,
                aws_secret_access_key=s.secret_access_key,
                aws_session_token=s.session_token,
                region_name=s.region,
                config=Config(
                    s3={"addressing_style": "path"},
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=10,
                    read_timeout=60,
                ),
            )
        return self._client

    def _error(self, exc: Exception, uri: str) -> ArtifactError:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "NoSuchBucket", "404", "NotFound"):
            return ArtifactNotFound(f"{redact_uri(uri)} does not exist ({code})")
        return ArtifactError(f"s3 request for {redact_uri(uri)} failed: {exc}")

    def put_dir(self, local: Path, uri: str) -> None:
        bucket, prefix = split_s3(uri)
        try:
            for src in _files_metadata_last(local):
                rel = src.relative_to(local).as_posix()
                key = f"{prefix.rstrip('/')}/{rel}" if prefix.strip("/") else rel
                self.client.upload_file(str(src), bucket, key)
        except Exception as exc:
            raise self._error(exc, uri) from exc

    def get_dir(self, uri: str, local: Path) -> Path:
        bucket, prefix = split_s3(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        found = False
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = _safe_relative(obj["Key"][len(prefix) :])
                    if not rel.parts:
                        continue
                    target = local / Path(*rel.parts)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self.client.download_file(bucket, obj["Key"], str(target))
                    found = True
        except ArtifactError:
            raise
        except Exception as exc:
            raise self._error(exc, uri) from exc
        if not found:
            raise ArtifactNotFound(f"{redact_uri(uri)} holds no objects")
        return local

    def read_bytes(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        try:
            body: bytes = self.client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise self._error(exc, uri) from exc
        return body


def store_for(
    uri: str, env: Mapping[str, str] | None = None, s3_env_prefix: str = ""
) -> ArtifactStore:
    """The store that serves a URI's scheme."""
    scheme = urlsplit(uri).scheme
    if scheme in ("", "file", "pvc"):
        return LocalStore(env)
    if scheme == "s3":
        return S3Store(S3Settings.from_env(s3_env_prefix, env))
    raise UnsupportedURI(f"unsupported artifact URI scheme {scheme!r}: {redact_uri(uri)}")


def put_dir(local: Path, uri: str, *, s3_env_prefix: str = "") -> None:
    """Write a local directory to a URI."""
    store_for(uri, s3_env_prefix=s3_env_prefix).put_dir(local, uri)


def get_dir(uri: str, local: Path, *, s3_env_prefix: str = "") -> Path:
    """Fetch the directory at a URI into a local directory."""
    return store_for(uri, s3_env_prefix=s3_env_prefix).get_dir(uri, local)


def read_bytes(uri: str, *, s3_env_prefix: str = "") -> bytes:
    """The bytes of one object (a file, a key)."""
    return store_for(uri, s3_env_prefix=s3_env_prefix).read_bytes(uri)
