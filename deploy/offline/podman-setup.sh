#!/usr/bin/env bash
# Make rootful podman run containers on this kind of machine (idempotent): runc as the
# runtime (crun fails on cgroup v1 mounts here) and no default ulimits (raising
# RLIMIT_NOFILE/NPROC is refused in this kernel's sandbox). Installs podman, runc,
# debootstrap and docker-compose (deploy/offline/stack.sh) from Debian when missing.
set -euo pipefail
need=()
for tool in podman runc debootstrap docker-compose; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
conf=/etc/containers/containers.conf
want='# Written by deploy/offline/podman-setup.sh.
[containers]
default_ulimits = []

[engine]
runtime = "runc"'
if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
  mkdir -p /etc/containers
  printf '%s\n' "$want" >"$conf"
  echo "podman-setup: wrote $conf"
fi
