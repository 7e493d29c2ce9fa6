"""End-to-end platform benchmark: a real web server and real workers, measured from outside.

The platform runs in a temporary directory of its own: a fresh database
(SQLite there, or ``BENCH_DATABASE_URL`` for an empty PostgreSQL database of the
bench's own), a ``redis-server`` on a free loopback port (the filesystem
broker when the binary is missing; it polls once a second, which the figures
then include), gunicorn with the production settings (``deploy/gunicorn.conf.py``)
on a free loopback port, and one Celery worker on the ``inference`` queue only, first
on the LiteRT runtime (the lean worker), then on Keras (the previous path), each
measured the same way. Everything goes through the REST API with token auth, as a
client would, and everything is stopped at the end.

Measured, for each runtime:

* upload -> prediction latency: one image at a time (POST /api/v1/cases/, then
  GET /api/v1/cases/{id}/ every 25 ms until the prediction is done), so each upload
  meets a warm, idle worker; the POST alone too (the upload's validation and decoding);
* burst throughput of one worker: the worker stops consuming (Celery remote control),
  ``n_burst`` uploads queue up, it consumes again; images per minute from then to the
  last prediction's ``finished_at``;
* peak resident memory of the worker's processes (main and pool child), sampled every
  0.2 s.

No explanation worker runs: the automatic Grad-CAMs wait in their queue, so the figures
are the inference worker's alone. Then the read API under 20 concurrent clients, with a
load generator outside the server's interpreter (``bench.loadgen``: wrk, or a process
of its own pinned to one CPU): the framework floor (``GET /api/v1/me/``, authentication
and a JSON answer), the case list and case detail (10 cases in turn), p50/p95 and errors.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from bench.stats import summary

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
IMAGES = sorted(
    p
    for p in (ROOT / "tests" / "fixtures" / "images").iterdir()
    if p.suffix.lower() in {".jpg", ".jpeg", ".png"}
)
FINISHED = {"done", "failed"}


def _load_client_module():
    path = ROOT / "examples" / "api_client.py"
    spec = importlib.util.spec_from_file_location("api_client", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


api_client = _load_client_module()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_port(port: int, timeout: float, process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


class MemorySampler(threading.Thread):
    """Peak RSS of each worker process (main and its pool children), sampled."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.mains: dict[int, str] = {}
        self.peaks: dict[str, int] = {}
        self.stopped = threading.Event()

    def watch(self, pid: int, name: str) -> None:
        self.mains[pid] = name

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            for pid, name in list(self.mains.items()):
                try:
                    main = psutil.Process(pid)
                    found = [(f"{name} main", main)] + [
                        (f"{name} pool child", child) for child in main.children()
                    ]
                    total = 0
                    for label, process in found:
                        rss = process.memory_info().rss
                        total += rss
                        self.peaks[label] = max(self.peaks.get(label, 0), rss)
                    self.peaks[f"{name} total"] = max(self.peaks.get(f"{name} total", 0), total)
                except psutil.Error:
                    continue


class Platform:
    """Web server, broker and workers in a temporary directory, stopped by ``close``."""

    def __init__(self, broker: str | None = None) -> None:
        """``broker="filesystem://"``: the embedded demo's broker, no redis-server."""
        self.dir = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.web: subprocess.Popen | None = None
        self.redis: subprocess.Popen | None = None
        database = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{self.dir / 'db.sqlite3'}"
        redis_server = shutil.which("redis-server") if broker is None else None
        if redis_server:
            port = _free_port()
            self.redis = subprocess.Popen(
                [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", str(self.dir)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            _wait_port(port, 10, self.redis, "redis-server")
            broker = f"redis://127.0.0.1:{port}/0"
        else:
            broker = broker or "filesystem://"
        self.broker = broker
        self.database = database.split("://", 1)[0]
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "cxrplatform.settings",
            "DEBUG": "0",
            "SECRET_KEY": "bench-only-" + os.urandom(16).hex(),
            "CXR_PSEUDONYM_KEY": "bench-only-pseudonym-" + os.urandom(16).hex(),
            "SESSION_COOKIE_SECURE": "0",
            "CSRF_COOKIE_SECURE": "0",
            "SECURE_SSL_REDIRECT": "0",
            "ALLOWED_HOSTS": "127.0.0.1",
            "DATABASE_URL": database,
            "CELERY_BROKER_URL": broker,
            "CXR_VAR_DIR": str(self.dir / "var"),
            "MEDIA_ROOT": str(self.dir / "media"),
            "LOG_LEVEL": "WARNING",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/"

    def manage(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        if result.returncode:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return result.stdout

    def setup(self) -> str:
        """Migrate, register the bundled model as production, return a clinician's token."""
        self.manage("migrate", "--noinput")
        self.manage("register_model", "--bundled", "--if-no-production")
        out = self.manage(
            "shell",
            "-c",
            "from apps.accounts.services import create_demo_users\n"
            "from knox.models import AuthToken\n"
            "from django.contrib.auth import get_user_model\n"
            "rows = create_demo_users()\n"
            "name = next(u for u, _, role in rows if role == 'clinician')\n"
            "user = get_user_model().objects.get(username=name)\n"
            "print('TOKEN', AuthToken.objects.create(user=user)[1])\n",
        )
        return next(line.split()[1] for line in out.splitlines() if line.startswith("TOKEN"))

    def start_web(self, workers: int | None = None, threads: int | None = None) -> str:
        """gunicorn with deploy/gunicorn.conf.py (``workers`` x ``threads`` override it)."""
        env = dict(self.env)
        if workers is not None:
            env["WEB_CONCURRENCY"] = str(workers)
        if threads is not None:
            env["CXR_WEB_THREADS"] = str(threads)
        log_file = (self.dir / "gunicorn.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{self.port}", "cxrplatform.wsgi:application"],
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        self.web = process
        _wait_port(self.port, 60, process, "gunicorn")
        probe = (
            "import runpy; c = runpy.run_path('deploy/gunicorn.conf.py'); "
            "print(c['workers'], c['threads'], c['worker_class'])"
        )
        shown = subprocess.run(
            [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True
        ).stdout.split()
        return f"gunicorn, {shown[0]} processes x {shown[1]} threads ({shown[2]})"

    def stop_web(self) -> None:
        if self.web is not None:
            self._stop(self.web)
            self.processes.remove(self.web)
            self.web = None

    def start_worker(self, index: int, runtime: str = "litert") -> subprocess.Popen:
        log_path = self.dir / f"worker-{index}-{runtime}.log"
        with log_path.open("w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "cxrplatform", "worker",
                 "-Q", "inference", "--concurrency", "1", "--pool", "prefork",
                 "--loglevel", "INFO", "--hostname", f"bench{index}@%h",
                 "--without-gossip", "--without-mingle"],
                cwd=ROOT,
                env={**self.env, "CXR_WARM_MODEL": "1", "CXR_INFERENCE_RUNTIME": runtime},
                stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + 180
        while "ready." not in log_path.read_text(errors="replace"):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker {index} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        # CXR_WARM_MODEL loads the model in the pool child after "ready."; wait for it.
        while "loading model version" not in log_path.read_text(errors="replace"):
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        self.workers.append(process)
        return process

    @staticmethod
    def _stop(process: subprocess.Popen) -> None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def control(self, command: str, index: int) -> None:
        """``celery control <command> inference`` to worker ``index`` (add/cancel_consumer)."""
        destination = f"bench{index}@{socket.gethostname()}"
        result = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "cxrplatform", "control", command,
             "inference", "--destination", destination, "--timeout", "10"],
            cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if result.returncode or "error" in result.stdout.lower():
            raise RuntimeError(f"celery control {command}: {result.stdout}{result.stderr}")

    def stop_workers(self) -> None:
        for process in self.workers:
            self._stop(process)
        self.workers.clear()

    def close(self) -> None:
        self.stop_workers()
        for process in self.processes:
            self._stop(process)
        if self.redis is not None:
            self.redis.terminate()
            self.redis.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _prediction(case: dict) -> dict | None:
    image = case["images"][0]
    return image.get("prediction")


def _prediction_done(case: dict) -> bool:
    prediction = _prediction(case)
    return prediction is not None and prediction["status"] == "done"


def _wait_case(client, case_id: int, timeout: float = 120, interval: float = 0.025) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        case = client.json("GET", f"api/v1/cases/{case_id}/")
        prediction = _prediction(case)
        if prediction and prediction["status"] in FINISHED:
            return case
        time.sleep(interval)
    raise TimeoutError(f"case {case_id}: no prediction within {timeout} s")


def upload_latency(client, n: int) -> dict:
    """Upload -> prediction done, one image at a time; and the POST alone."""
    samples, posts, failed = [], [], 0
    for i in range(n):
        image = IMAGES[i % len(IMAGES)]
        start = time.perf_counter()
        case = client.create_case([image])
        posts.append((time.perf_counter() - start) * 1000)
        done = _wait_case(client, case["id"])
        samples.append((time.perf_counter() - start) * 1000)
        failed += not _prediction_done(done)
    return {
        **summary(samples, "ms", digits=1),
        "post": summary(posts, "ms", digits=1),
        "failed": failed,
    }


def _finished_at(case: dict) -> float:
    from datetime import datetime

    prediction = _prediction(case)
    if prediction is None or not prediction.get("finished_at"):
        raise ValueError(f"case {case['id']}: no finished prediction")
    return datetime.fromisoformat(prediction["finished_at"].replace("Z", "+00:00")).timestamp()


def burst_throughput(platform: Platform, client, n: int, clients: int = 4) -> dict:
    """A backlog of ``n`` uploads for one worker: it stops consuming, the uploads queue,
    it consumes again; images/min from then until the last prediction finished."""
    platform.control("cancel_consumer", 0)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        cases = list(pool.map(lambda i: client.create_case([IMAGES[i % len(IMAGES)]]), range(n)))
    uploaded = time.perf_counter() - start
    resumed = time.time()
    platform.control("add_consumer", 0)
    results = [_wait_case(client, case["id"], timeout=300, interval=0.1) for case in cases]
    failed = sum(not _prediction_done(case) for case in results)
    last = max(_finished_at(case) for case in results if _prediction_done(case))
    seconds = last - resumed
    return {
        "images": n,
        "seconds": round(seconds, 2),
        "upload_seconds": round(uploaded, 2),
        "uploads_per_minute": round(n / uploaded * 60, 1),
        "images_per_minute": round(n / seconds * 60, 1),
        "failed": failed,
    }


def read_load(url: str, token: str, case_ids: list[int], seconds: float = 15.0) -> dict:
    """The framework floor, the case list and case detail under 20 clients, one after
    another on the same server, from a load generator outside the server's interpreter."""
    from bench import loadgen

    paths = {
        "floor": ["/api/v1/me/"],
        "list": ["/api/v1/cases/"],
        "detail": [f"/api/v1/cases/{pk}/" for pk in case_ids[:10]],
    }
    results: dict = {"users": 20, "seconds_each": seconds}
    for name, targets in paths.items():
        results[name] = loadgen.run(url, token, targets, concurrency=20, seconds=seconds)
        results[name]["load_after"] = [round(x, 2) for x in os.getloadavg()]
        log.info("read load %s: %s", name, results[name])
    floor = results["floor"]["p95_ms"]
    for name in ("list", "detail"):
        results[name]["p95_over_floor"] = round(results[name]["p95_ms"] / floor, 2)
    results["generator"] = results["floor"]["generator"]
    return results


def web_sweep(seconds: float = 10.0) -> list[dict]:
    """Read-API p95 under 20 clients for several gunicorn processes x threads (the choice
    in deploy/gunicorn.conf.py): ``python -m bench.e2e --web-sweep``."""
    platform = Platform()
    rows = []
    try:
        token = platform.setup()
        platform.start_web()
        client = api_client.Client(platform.url, token=token, timeout=60)
        for i in range(12):  # cases to read (no worker: their predictions stay pending)
            client.create_case([IMAGES[i % len(IMAGES)]])
        ids = [case["id"] for case in client.json("GET", "api/v1/cases/")["results"]]
        platform.stop_web()
        for workers, threads in ((1, 8), (2, 2), (2, 4), (2, 8), (4, 2)):
            shown = platform.start_web(workers, threads)
            time.sleep(1.0)
            row: dict[str, Any] = {
                "web": shown,
                "load_before": [round(x, 2) for x in os.getloadavg()],
            }
            for name, result in read_load(platform.url.rstrip("/"), token, ids, seconds).items():
                if isinstance(result, dict):
                    row[name] = {k: result[k] for k in ("p50_ms", "p95_ms", "requests_per_second")}
            rows.append(row)
            log.info("web sweep: %s", row)
            platform.stop_web()
        return rows
    finally:
        platform.close()


def _inference_runtime(platform: Platform, client, runtime: str, n_latency: int, n_burst: int):
    sampler = MemorySampler()
    sampler.start()
    try:
        process = platform.start_worker(0, runtime)
        sampler.watch(process.pid, "worker")
        _wait_case(client, client.create_case([IMAGES[0]])["id"])  # warm every path once
        time.sleep(1.0)
        result: dict[str, Any] = {
            "upload_to_prediction": upload_latency(client, n_latency),
            "burst": burst_throughput(platform, client, n_burst),
        }
    finally:
        sampler.stopped.set()
        platform.stop_workers()
    result["peak_rss_mb"] = {
        label: round(rss / 2**20, 1) for label, rss in sorted(sampler.peaks.items())
    }
    log_text = "".join(p.read_text(errors="replace") for p in platform.dir.glob("worker-*.log"))
    result["served_with_keras_warning"] = "serving it with Keras" in log_text
    log.info("e2e %s: %s", runtime, result)
    return result


def measure(n_latency: int = 12, n_burst: int = 40, read_seconds: float = 15.0) -> dict:
    platform = Platform()
    try:
        token = platform.setup()
        web = platform.start_web()
        client = api_client.Client(platform.url, token=token, timeout=60)
        results: dict = {
            "setup": {
                "database": platform.database,
                "broker": platform.broker.split("://", 1)[0],
                "web": web,
                "workers": "celery prefork, --concurrency 1, -Q inference, warm model; "
                "no explanation worker",
                "model": "the bundled default classifier (lung segmentation included)",
            }
        }
        for runtime in ("litert", "keras"):
            results[runtime] = _inference_runtime(platform, client, runtime, n_latency, n_burst)
        listing = client.json("GET", "api/v1/cases/")
        ids = [case["id"] for case in listing["results"]]
        results["read_api"] = read_load(platform.url.rstrip("/"), token, ids, read_seconds)
        return results
    finally:
        platform.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    if "--web-sweep" in sys.argv:
        print(json.dumps(web_sweep(), indent=2))
    else:
        print(json.dumps(measure(n_latency=4, n_burst=8, read_seconds=5), indent=2))
