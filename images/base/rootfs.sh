#!/bin/sh
# Writes the root filesystem of Orchard's base image as a tarball to $1:
# Debian bookworm (minbase) with Python 3 and venv, and an unprivileged user
# "orchard" (uid 10001) for images to run as, and the packages named (comma-separated)
# in $EXTRA_PACKAGES, which images/<name>/packages asks for. images/build.py hashes
# this file (and those packages), so any change here gives the base a new tag and a rebuild.
set -eu
out=$1
mmdebstrap --quiet --variant=minbase \
  --include="python3,python3-venv,ca-certificates${EXTRA_PACKAGES:+,$EXTRA_PACKAGES}" \
  --customize-hook='chroot "$1" useradd --uid 10001 --user-group --create-home --shell /usr/sbin/nologin orchard' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/usr/share/doc "$1"/usr/share/man' \
  bookworm "$out" </dev/null
