#!/usr/bin/env bash
# Build the platform's images with podman where no image registry is reachable (`make
# image`): the base image (a stand-in from Debian packages when `podman pull` fails),
# the wheelhouse (pip on the host, which reaches PyPI), the application image from the
# repository's Dockerfile, and PostgreSQL and Redis images from Debian packages for
# docker-compose.offline.yml. Prints each step's time and the image sizes.
#   deploy/offline/build.sh            # everything
#   CXR_IMAGE_PULL_TIMEOUT=60          # seconds to wait for a registry before the stand-in
set -euo pipefail
cd "$(dirname "$0")/../.."
BASE=docker.io/library/python:3.11-slim-bookworm
APP=localhost/cxrplatform:latest
PYTHON=${PYTHON:-python3}
WHEELHOUSE=var/wheelhouse

step() { printf '== %s\n' "$*"; STEP_START=$(date +%s); }
took() { printf '   %s: %ss\n' "$1" "$(($(date +%s) - STEP_START))"; }

step "podman"
bash deploy/offline/podman-setup.sh
podman --version

step "base image $BASE"
if podman image exists "$BASE"; then
  echo "   present"
elif timeout "${CXR_IMAGE_PULL_TIMEOUT:-60}" podman pull -q "$BASE" >/dev/null 2>&1; then
  echo "   pulled from the registry"
else
  echo "   no registry: a stand-in from Debian packages"
  bash deploy/offline/base-image.sh "$BASE"
fi
took base

step "wheelhouse $WHEELHOUSE (pip on the host, from requirements.lock)"
stamp=$WHEELHOUSE/.built-from
if [ -f "$stamp" ] && sha256sum -c --status "$stamp" 2>/dev/null; then
  echo "   up to date"
else
  mkdir -p "$WHEELHOUSE"
  # The project's own wheel is left out: the Dockerfile installs `.` from the context.
  nice "$PYTHON" -m pip wheel --quiet -c requirements.lock -w "$WHEELHOUSE" . setuptools wheel
  # Debian's Python is 3.11.2: redis then also needs async-timeout (python_full_version
  # < 3.11.3), which pip on a newer host Python leaves out.
  nice "$PYTHON" -m pip download --quiet --no-deps -d "$WHEELHOUSE" "async-timeout>=4.0.3"
  rm -f "$WHEELHOUSE"/cxrplatform-*.whl
  sha256sum requirements.lock pyproject.toml >"$stamp"
fi
took wheelhouse

step "application image $APP (Dockerfile)"
nice podman build --format docker --tag "$APP" \
  --volume "$PWD/$WHEELHOUSE:/wheelhouse:ro" \
  --build-arg PIP_INSTALL_ARGS="--no-index --find-links /wheelhouse" .
took app

step "PostgreSQL and Redis images from Debian packages (docker-compose.offline.yml)"
nice podman build --format docker --tag localhost/cxr-postgres:15 \
  --file deploy/offline/postgres.Containerfile deploy/offline
nice podman build --format docker --tag localhost/cxr-redis:7 \
  --file deploy/offline/redis.Containerfile deploy/offline
took services

for image in "$BASE" "$APP" localhost/cxr-postgres:15 localhost/cxr-redis:7; do
  printf '   %-46s %s MB\n' "$image" "$(($(podman image inspect --format '{{.Size}}' "$image") / 1000000))"
done
