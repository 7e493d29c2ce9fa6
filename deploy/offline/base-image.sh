#!/usr/bin/env bash
# A stand-in for the Dockerfile's base image (python:3.11-slim-bookworm) built from
# Debian packages only, for machines that reach Debian's package archive but no image
# registry: debootstrap a minimal bookworm, add Debian's Python 3.11 with a virtual
# environment at /usr/local (so /usr/local/bin/python and pip exist, as in the official
# image), and `podman import` it under the official name. A registry's image is never
# replaced: run it only where `podman pull` fails (deploy/offline/build.sh decides).
#   deploy/offline/base-image.sh [IMAGE_NAME]
set -euo pipefail
name=${1:-docker.io/library/python:3.11-slim-bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d /var/tmp/cxr-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
nice debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,netbase,tzdata \
  bookworm "$root" "$mirror" >/dev/null
chroot "$root" python3 -m venv /usr/local
chroot "$root" /usr/local/bin/pip --version
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
  "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
tar -C "$root" --numeric-owner -c . | podman import \
  --change 'ENV LANG=C.UTF-8' \
  --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python3"]' \
  - "$name" >/dev/null
echo "base-image: $name ($(podman image inspect --format '{{.Size}}' "$name") bytes)"
