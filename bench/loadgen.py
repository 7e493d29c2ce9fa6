"""A load generator outside the server's interpreter: ``wrk`` when it is installed (Debian:
``apt-get install wrk``), else this module run as a process of its own pinned to one CPU.

Either way ``concurrency`` clients each keep one HTTP/1.1 connection open and send GETs
back to back for ``seconds``, cycling through ``paths``, with the API token and
``Accept-Encoding: gzip`` as a client would send them. The result: requests, errors
(connection errors, timeouts, non-2xx answers), p50/p95/p99 latency in ms and the
requests per second.

    python -m bench.loadgen --url http://127.0.0.1:8000 --token TOKEN /api/v1/me/
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

from bench.stats import percentile

LUA = Path(__file__).with_name("wrk_report.lua")


def run(
    url: str, token: str, paths: list[str], *, concurrency: int = 20, seconds: float = 15.0
) -> dict:
    """Load ``paths`` on the server at ``url``; wrk if present, else a pinned process."""
    wrk = shutil.which("wrk")
    if wrk:
        return _wrk(wrk, url, token, paths, concurrency, seconds)
    return _python_process(url, token, paths, concurrency, seconds)


def _summary(
    generator: str, requests: int, errors: int, seconds: float, p50: float, p95: float, p99: float
) -> dict:
    return {
        "generator": generator,
        "requests": requests,
        "errors": errors,
        "seconds": round(seconds, 1),
        "requests_per_second": round(requests / seconds, 1) if seconds else 0.0,
        "p50_ms": round(p50, 1),
        "p95_ms": round(p95, 1),
        "p99_ms": round(p99, 1),
    }


def _wrk(wrk: str, url: str, token: str, paths: list[str], concurrency: int, seconds: float):
    command = [
        wrk, "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
        "-H", f"Authorization: Token {token}", "-H", "Accept-Encoding: gzip",
        "-s", str(LUA), url, "--", *paths,
    ]  # fmt: skip
    pinned = _pin_command(command)
    out = subprocess.run(pinned, capture_output=True, text=True, check=True, timeout=seconds + 60)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    errors = sum(
        report[k]
        for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return _summary(
        f"wrk -t1 -c{concurrency}" + (" (taskset, last CPU)" if pinned != command else ""),
        report["requests"],
        errors,
        report["duration_us"] / 1e6,
        report["p50_us"] / 1000,
        report["p95_us"] / 1000,
        report["p99_us"] / 1000,
    )


def _last_cpu() -> int | None:
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return cpus[-1] if len(cpus) > 1 else None


def _pin_command(command: list[str]) -> list[str]:
    """The load generator on one CPU (the last), so it never takes both from the server."""
    cpu = _last_cpu()
    taskset = shutil.which("taskset")
    return [taskset, "-c", str(cpu), *command] if cpu is not None and taskset else command


def _python_process(url: str, token: str, paths: list[str], concurrency: int, seconds: float):
    command = [
        sys.executable, "-m", "bench.loadgen", "--url", url, "--token", token,
        "--concurrency", str(concurrency), "--seconds", str(seconds), "--pin", *paths,
    ]  # fmt: skip
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run(
        command, capture_output=True, text=True, check=True, timeout=seconds + 60, cwd=root
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _threads(url: str, token: str, paths: list[str], concurrency: int, seconds: float) -> dict:
    """``concurrency`` threads, one keep-alive connection each (this process only)."""
    parts = urlsplit(url)
    headers = {"Authorization": f"Token {token}", "Accept-Encoding": "gzip"}
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client(index: int) -> None:
        connection = http.client.HTTPConnection(
            parts.hostname or "127.0.0.1", parts.port, timeout=10
        )
        i = index
        mine: list[float] = []
        failed = 0
        while time.monotonic() < deadline:
            path = paths[i % len(paths)]
            i += 1
            start = time.perf_counter()
            try:
                connection.request("GET", path, headers=headers)
                response = connection.getresponse()
                response.read()
                failed += not 200 <= response.status < 300
            except (OSError, http.client.HTTPException):
                failed += 1
                connection.close()
                connection = http.client.HTTPConnection(
                    parts.hostname or "127.0.0.1", parts.port, timeout=10
                )
            mine.append((time.perf_counter() - start) * 1000)
        with lock:
            latencies.extend(mine)
            errors[0] += failed

    started = time.perf_counter()
    workers = [threading.Thread(target=client, args=(n,)) for n in range(concurrency)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall = time.perf_counter() - started
    return _summary(
        f"python -m bench.loadgen ({concurrency} threads, one process"
        + (", pinned to the last CPU)" if _last_cpu() is not None else ")"),
        len(latencies),
        errors[0],
        wall,
        percentile(latencies, 50),
        percentile(latencies, 95),
        percentile(latencies, 99),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--pin", action="store_true", help="run on the last CPU only")
    parser.add_argument("--python", action="store_true", help="threads here, even with wrk")
    parser.add_argument("paths", nargs="+")
    args = parser.parse_args(argv)
    if args.pin and (cpu := _last_cpu()) is not None:
        os.sched_setaffinity(0, {cpu})
    if args.pin or args.python:
        result = _threads(args.url, args.token, args.paths, args.concurrency, args.seconds)
    else:
        result = run(
            args.url, args.token, args.paths, concurrency=args.concurrency, seconds=args.seconds
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
