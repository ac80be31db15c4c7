"""Images on the node: the pause image built here, and archives imported into containerd's
k8s.io namespace. The product images are built by images/build.py."""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import grpc

from .common import (
    CACHE,
    CONTAINERD_SOCK,
    HERE,
    IMAGE_PREFIX,
    IMAGES,
    PAUSE_IMAGE,
    VAR,
    HarnessError,
    run,
    say,
)


def ctr(*args: str, check: bool = True) -> str:
    return run(["ctr", "--address", str(CONTAINERD_SOCK), "-n", "k8s.io", *args], check=check)


def cri_ready() -> bool:
    """containerd's CRI answers a call. `ctr version` answers as soon as containerd
    listens, but the CRI refuses every call ("server is not initialized yet") while it
    recovers its state, and a kubelet started then exits."""
    with grpc.insecure_channel(f"unix://{CONTAINERD_SOCK}") as channel:
        version: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/runtime.v1.RuntimeService/Version"
        )
        try:
            version(b"", timeout=2)  # an empty VersionRequest, the answer left unread
        except grpc.RpcError:
            return False
    return True


def containerd_images() -> set[str]:
    out = ctr("images", "ls", "-q")
    return set(out.split())


def pause_archive() -> Path:
    """The pause image as a docker archive, built once per version of pause.c."""
    source = HERE / "pause" / "pause.c"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    archive = CACHE / "images" / f"pause-{digest}.tar"
    if archive.exists():
        return archive
    say("pause: compiling the sandbox program and building its image")
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "pause"
        run(["gcc", "-static", "-Os", "-o", str(exe), str(source)])
        run(["strip", str(exe)], check=False)
        container = run(["buildah", "from", "scratch"]).strip()
        try:
            run(["buildah", "copy", "--chmod", "0755", container, str(exe), "/pause"])
            run(
                [
                    "buildah",
                    "config",
                    "--entrypoint",
                    '["/pause"]',
                    "--user",
                    "65535:65535",
                    container,
                ]
            )
            run(["buildah", "commit", "--rm", container, PAUSE_IMAGE])
        except HarnessError:
            run(["buildah", "rm", container], check=False)
            raise
    push_archive(PAUSE_IMAGE, archive)
    return archive


def push_archive(image: str, archive: Path) -> None:
    """Export a buildah image as a docker archive that keeps its full name."""
    partial = archive.with_suffix(".partial")
    partial.unlink(missing_ok=True)
    run(["buildah", "push", "--quiet", image, f"docker-archive:{partial}:{image}"])
    partial.rename(archive)


def import_archive(image: str, archive: Path) -> bool:
    """Import an archive into containerd's k8s.io namespace unless already there."""
    stamp_dir = VAR / "containerd" / "orchard-imported"
    stamp = stamp_dir / hashlib.sha256(image.encode()).hexdigest()[:16]
    mark = f"{image} {archive.stat().st_mtime_ns} {archive.stat().st_size}"
    if stamp.exists() and stamp.read_text() == mark and image in containerd_images():
        return False
    start = time.monotonic()
    ctr("images", "import", "--no-unpack", str(archive))
    if image not in containerd_images():
        raise HarnessError(f"import of {archive} did not yield {image}; got {containerd_images()}")
    stamp_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(mark)
    say(f"images: {image} imported into containerd in {time.monotonic() - start:.1f}s")
    return True


def import_built_images() -> None:
    for archive in sorted(IMAGES.glob("*.tar")):
        import_archive(f"{IMAGE_PREFIX}/{archive.stem}:dev", archive)
