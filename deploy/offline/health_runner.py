"""Run the containers' healthchecks where podman cannot schedule them itself.

podman runs a container's healthcheck from a systemd timer; without systemd (a container
or a VM whose first process is not systemd) no check ever runs, every container stays
"starting" and docker-compose's `depends_on: condition: service_healthy` waits forever.
This loop does what the timers would: every second it runs `podman healthcheck run` for
each running container of the compose project whose interval has passed since its last
check, so podman records the result and the health status moves as in Docker.
Standard library only.

    python3 deploy/offline/health_runner.py PROJECT
"""

# Fixed argument lists for podman, found on PATH like the shell scripts beside it.
# ruff: noqa: S603, S607
from __future__ import annotations

import json
import subprocess
import sys
import time


def _seconds(nanoseconds: object, default: float) -> float:
    return int(nanoseconds) / 1e9 if isinstance(nanoseconds, int) and nanoseconds > 0 else default


def project_checks(project: str) -> dict[str, float]:
    """Running containers of the project that have a healthcheck: id -> interval (s)."""
    listed = subprocess.run(
        [
            "podman",
            "ps",
            "-q",
            "--no-trunc",
            "--filter",
            f"label=com.docker.compose.project={project}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    ids = listed.stdout.split()
    if not ids:
        return {}
    inspected = subprocess.run(
        ["podman", "inspect", *ids], capture_output=True, text=True, check=False
    )
    try:
        containers = json.loads(inspected.stdout or "[]")
    except json.JSONDecodeError:
        return {}
    checks = {}
    for container in containers:
        check = (container.get("Config") or {}).get("Healthcheck") or {}
        test = check.get("Test") or []
        if test and test[0] != "NONE":
            checks[container["Id"]] = _seconds(check.get("Interval"), 30.0)
    return checks


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 deploy/offline/health_runner.py PROJECT", file=sys.stderr)
        return 2
    project = argv[0]
    last: dict[str, float] = {}
    # The first check after a container starts comes after a short wait (not a whole
    # interval), so a stack comes up healthy without waiting a minute per worker.
    first_after = 5.0
    seen: dict[str, float] = {}
    running: dict[str, subprocess.Popen[bytes]] = {}
    while True:
        now = time.monotonic()
        for cid, interval in project_checks(project).items():
            seen.setdefault(cid, now)
            if cid in running and running[cid].poll() is None:
                continue
            due = last.get(cid, seen[cid] + first_after - interval) + interval
            if now >= due:
                last[cid] = now
                running[cid] = subprocess.Popen(
                    ["podman", "healthcheck", "run", cid],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
        time.sleep(1)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
