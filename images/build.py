"""Build every images/<dir>/Dockerfile as localhost/orchard/<dir>:dev and load it into the
local cluster's node.

buildah builds from a local base image (images/base, with the Debian packages an image
lists in images/<dir>/packages) and the project's wheels (or the binaries of
tests/cluster/build.sh it lists in images/<dir>/builds), with no network; each image is
saved as .cluster/images/<dir>.tar and imported into the node's containerd now if it
runs, else at the next `up`. An unchanged image is not rebuilt.

    python -m images.build [NAME...] [--no-import] [--unless-external]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.cluster.harness.common import (
    CACHE,
    IMAGE_PREFIX,
    IMAGES,
    LOGS,
    REPO,
    HarnessError,
    build_dir,
    run,
    say,
)
from tests.cluster.harness.images import import_built_images, push_archive
from tests.cluster.harness.lifecycle import EXTERNAL_HELP, leave_to_external, locked
from tests.cluster.harness.processes import rel, running, tail

COPIES_WHEELS = re.compile(r"^\s*(COPY|ADD)\b.*\bwheels\b", re.MULTILINE | re.IGNORECASE)


def packages_of(image_dir: Path) -> tuple[str, ...]:
    """The Debian packages an image needs beyond the base's (images/<name>/packages, one
    per line): its base is then the base recipe with those included, built the same way."""
    listed = image_dir / "packages"
    if not listed.exists():
        return ()
    lines = (line.split("#", 1)[0].strip() for line in listed.read_text().splitlines())
    return tuple(sorted(line for line in lines if line))


def base_image(packages: tuple[str, ...] = ()) -> str:
    """The base image from images/base (mmdebstrap), tagged by a hash of its recipe (and
    of the extra packages, when an image asks for some)."""
    recipe = REPO / "images" / "base" / "rootfs.sh"
    digest = hashlib.sha256(recipe.read_bytes())
    if packages:
        digest.update(",".join(packages).encode())
    tag = f"{IMAGE_PREFIX}/base:{digest.hexdigest()[:12]}"
    if (
        subprocess.run(
            ["buildah", "inspect", "--type", "image", tag], capture_output=True
        ).returncode
        == 0
    ):
        say(f"base: {tag} (cached)")
        return tag
    say(f"base: building {tag} with mmdebstrap (about 30 s)")
    start = time.monotonic()
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        rootfs = Path(tmp) / "rootfs.tar"
        log = LOGS / "base-image.log"
        LOGS.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "EXTRA_PACKAGES": ",".join(packages)}
        with log.open("w") as out:
            rc = subprocess.run(
                ["sh", str(recipe), str(rootfs)], stdout=out, stderr=subprocess.STDOUT, env=env
            ).returncode
        if rc != 0:
            raise HarnessError(f"base image recipe failed; last lines of {log}:\n{tail(log)}")
        container = run(["buildah", "from", "scratch"]).strip()
        try:
            run(["buildah", "add", container, str(rootfs), "/"])
            run(
                [
                    "buildah",
                    "config",
                    "--env",
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env",
                    "LANG=C.UTF-8",
                    "--cmd",
                    "/bin/sh",
                    "--workingdir",
                    "/",
                    container,
                ]
            )
            run(["buildah", "commit", "--rm", container, tag])
        except HarnessError:
            run(["buildah", "rm", container], check=False)
            raise
    if not packages:
        run(["buildah", "tag", tag, f"{IMAGE_PREFIX}/base:dev"])
    say(f"base: built {tag} in {time.monotonic() - start:.1f}s")
    return tag


def source_digest() -> str:
    """A hash of everything that goes into the project's wheel."""
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes())
    for path in sorted((REPO / "operator").rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and ".egg-info" not in str(path):
            digest.update(str(path.relative_to(REPO)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def build_wheels() -> Path:
    """build/wheels: the project's wheel and every dependency of all its extras.

    Dependencies are fetched once per version of pyproject.toml and the project's wheel
    is rebuilt only when its sources change, so an unchanged tree keeps buildah's layer
    cache valid. Images install from here, offline.
    """
    wheels = REPO / "build" / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip"]
    deps_stamp = (
        wheels / f".deps-{hashlib.sha256((REPO / 'pyproject.toml').read_bytes()).hexdigest()[:12]}"
    )
    project_stamp = wheels / f".project-{source_digest()}"
    start = time.monotonic()
    log = LOGS / "wheels.log"
    LOGS.mkdir(parents=True, exist_ok=True)

    def pip_wheel(*args: str) -> None:
        with log.open("a") as out:
            rc = subprocess.run(
                [*pip, "wheel", "-q", "--wheel-dir", str(wheels), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            ).returncode
        if rc != 0:
            raise HarnessError(f"pip wheel failed; last lines of {log}:\n{tail(log)}")

    if not deps_stamp.exists():
        say(f"wheels: fetching dependency wheels into {rel(wheels)} (log {rel(log)})")
        pip_wheel(f"{REPO}[operator,train,serve]")
        for old in wheels.glob(".deps-*"):
            old.unlink()
        deps_stamp.touch()
    if not (project_stamp.exists() and any(wheels.glob("orchard-*.whl"))):
        for old in [*wheels.glob("orchard-*.whl"), *wheels.glob(".project-*")]:
            old.unlink()
        pip_wheel("--no-deps", str(REPO))
        project_stamp.touch()
        shutil.rmtree(REPO / "build" / "lib", ignore_errors=True)
        shutil.rmtree(REPO / "build" / "bdist.linux-x86_64", ignore_errors=True)
    count = len(list(wheels.glob("*.whl")))
    say(f"wheels: {count} wheels ready in {time.monotonic() - start:.1f}s")
    return wheels


def builds_of(image_dir: Path) -> list[Path]:
    """The binaries of tests/cluster/build.sh an image copies in (images/<name>/builds,
    one build name per line, e.g. argocd): each is added to the build context by name."""
    listed = image_dir / "builds"
    if not listed.exists():
        return []
    out = []
    for name in listed.read_text().split():
        folder = build_dir(name)
        if not (folder / ".complete").exists():
            raise HarnessError(f"image {image_dir.name} needs the {name} build: run `make {name}`")
        out.append(folder / name)
    return out


def context_digest(context: Path, base: str) -> str:
    """A hash of a build's inputs: the base tag and every file of its context.

    buildah 1.28 does not reuse the layers of a multi-stage build's first stage, so an
    unchanged build is skipped here instead. Wheels are immutable once written, so
    they count by name, size and mtime; other files by content.
    """
    digest = hashlib.sha256(base.encode())
    for path in sorted(context.rglob("*")):
        if not path.is_file():
            continue
        digest.update(str(path.relative_to(context)).encode())
        if path.suffix == ".whl":
            stat = path.stat()
            digest.update(f"{stat.st_size} {stat.st_mtime_ns}".encode())
        else:
            digest.update(path.read_bytes())
    return digest.hexdigest()


def build_images(names: list[str] | None, do_import: bool) -> list[str]:
    """Build images/<name>/Dockerfile (all but base) as localhost/orchard/<name>:dev.

    The build context is a copy of images/<name>/ with the project's wheels added as
    wheels/, so a Dockerfile can `COPY wheels /wheels` and install with no network.
    """
    dockerfiles = sorted((REPO / "images").glob("*/Dockerfile"))
    selected = [
        d for d in dockerfiles if d.parent.name != "base" and (not names or d.parent.name in names)
    ]
    if not selected:
        raise HarnessError("no images/*/Dockerfile to build")
    for tool in ("buildah", "mmdebstrap"):
        if not shutil.which(tool):
            raise HarnessError(f"{tool} is not installed; run `make deps`")
    wanted = {packages_of(d.parent) for d in selected}
    bases = {packages: base_image(packages) for packages in wanted}
    needs_wheels = any(COPIES_WHEELS.search(d.read_text()) for d in selected)
    wheels = build_wheels() if needs_wheels else None
    IMAGES.mkdir(parents=True, exist_ok=True)
    built: list[str] = []
    for dockerfile in selected:
        name = dockerfile.parent.name
        tag = f"{IMAGE_PREFIX}/{name}:dev"
        context = REPO / "build" / "images" / name
        shutil.rmtree(context, ignore_errors=True)
        shutil.copytree(dockerfile.parent, context)
        if wheels is not None:
            shutil.copytree(
                wheels,
                context / "wheels",
                copy_function=os.link,
                ignore=shutil.ignore_patterns(".*"),
            )
        for build in builds_of(dockerfile.parent):
            shutil.copy2(build, context / build.name)
        base = bases[packages_of(dockerfile.parent)]
        inputs = context_digest(context, base)
        archive, inputs_file = IMAGES / f"{name}.tar", IMAGES / f"{name}.inputs"
        if (
            archive.exists()
            and inputs_file.exists()
            and inputs_file.read_text() == inputs
            and subprocess.run(
                ["buildah", "inspect", "--type", "image", tag], capture_output=True
            ).returncode
            == 0
        ):
            say(f"images: {tag} is up to date")
            built.append(tag)
            continue
        inputs_file.unlink(missing_ok=True)
        log = LOGS / f"image-{name}.log"
        say(f"images: building {tag} (log {rel(log)})")
        start = time.monotonic()
        with log.open("w") as out:
            rc = subprocess.run(
                [
                    "buildah",
                    "bud",
                    "--layers",
                    "--network",
                    "none",
                    "--build-arg",
                    f"BASE_IMAGE={base}",
                    "-t",
                    tag,
                    "-f",
                    str(context / "Dockerfile"),
                    str(context),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            ).returncode
        if rc != 0:
            raise HarnessError(f"building {tag} failed; last lines of {log}:\n{tail(log)}")
        image_id = run(
            ["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", tag]
        ).strip()
        id_file = IMAGES / f"{name}.id"
        if not (archive.exists() and id_file.exists() and id_file.read_text() == image_id):
            push_archive(tag, archive)
            id_file.write_text(image_id)
        inputs_file.write_text(inputs)
        say(f"images: built {tag} in {time.monotonic() - start:.1f}s")
        built.append(tag)
    if do_import and running("containerd"):
        import_built_images()
    elif do_import:
        say("images: containerd is not running; `make cluster-up` imports them")
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="images.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("names", nargs="*", help="only these images/<name> (default: all)")
    parser.add_argument("--no-import", action="store_true", help="build only")
    parser.add_argument("--unless-external", action="store_true", help=EXTERNAL_HELP)
    args = parser.parse_args(argv)
    if args.unless_external and leave_to_external():
        return 0
    try:
        with locked():
            build_images(args.names, not args.no_import)
    except (HarnessError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
