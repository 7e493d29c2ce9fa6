"""End-to-end platform benchmark: a real web server and real workers, measured from outside.

The platform runs in a temporary directory of its own: a fresh database
(SQLite there, or ``BENCH_DATABASE_URL`` for a PostgreSQL database of the
bench's own), a ``redis-server`` on a free loopback port (the filesystem
broker when the binary is missing; it polls once a second, which the figures
then include), gunicorn on a free loopback port, and 1 then 2 Celery workers on
the ``inference`` and ``explain`` queues. Everything goes through the REST API
with token auth, as a client would, and everything is stopped at the end.

Measured:

* upload -> prediction latency: one image at a time (POST /api/v1/cases/, then
  GET /api/v1/cases/{id}/ every 25 ms until the prediction is done), waiting for
  the automatic Grad-CAM before the next upload, so each upload meets a warm,
  idle worker;
* throughput: a burst of single-image uploads from 4 client threads, from the
  first POST to the last prediction done (the Grad-CAMs share the workers);
* read API under 20 concurrent clients (threads, loopback, bounded in time and
  count): case list and case detail, p50/p95 and errors;
* peak resident memory of every worker process (main and pool child), sampled
  every 0.2 s while the workers run.
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

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="cxr-bench-"))
        self.processes: list[subprocess.Popen] = []
        self.workers: list[subprocess.Popen] = []
        self.redis: subprocess.Popen | None = None
        database = os.environ.get("BENCH_DATABASE_URL") or f"sqlite:///{self.dir / 'db.sqlite3'}"
        redis_server = shutil.which("redis-server")
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
            broker = "filesystem://"
        self.broker = broker
        self.database = database.split("://", 1)[0]
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "cxrplatform.settings",
            "DEBUG": "0",
            "SECRET_KEY": "bench-only-" + os.urandom(16).hex(),
            "SESSION_COOKIE_SECURE": "0",
            "CSRF_COOKIE_SECURE": "0",
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
            "from rest_framework.authtoken.models import Token\n"
            "from django.contrib.auth import get_user_model\n"
            "rows = create_demo_users()\n"
            "name = next(u for u, _, role in rows if role == 'clinician')\n"
            "user = get_user_model().objects.get(username=name)\n"
            "print('TOKEN', Token.objects.get_or_create(user=user)[0].key)\n",
        )
        return next(line.split()[1] for line in out.splitlines() if line.startswith("TOKEN"))

    def start_web(self) -> None:
        log_file = (self.dir / "gunicorn.log").open("w")
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "cxrplatform.wsgi:application",
             "--bind", f"127.0.0.1:{self.port}", "--workers", "2", "--threads", "4",
             "--worker-class", "gthread", "--timeout", "60"],
            cwd=ROOT, env=self.env, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        self.processes.append(process)
        _wait_port(self.port, 60, process, "gunicorn")

    def start_worker(self, index: int) -> subprocess.Popen:
        log_path = self.dir / f"worker-{index}.log"
        with log_path.open("w") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", "celery", "-A", "cxrplatform", "worker",
                 "-Q", "inference,explain", "--concurrency", "1", "--pool", "prefork",
                 "--loglevel", "INFO", "--hostname", f"bench{index}@%h",
                 "--without-gossip", "--without-mingle"],
                cwd=ROOT, env={**self.env, "CXR_WARM_MODEL": "1"}, stdout=log_file,
                stderr=subprocess.STDOUT, start_new_session=True,
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


def _wait_gradcam(client, case_id: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        case = client.json("GET", f"api/v1/cases/{case_id}/")
        explanations = case["images"][0]["explanations"]
        if explanations and all(e["status"] in FINISHED for e in explanations):
            return
        time.sleep(0.1)
    raise TimeoutError(f"case {case_id}: no Grad-CAM within {timeout} s")


def upload_latency(client, n: int) -> dict:
    samples, failed = [], 0
    for i in range(n):
        image = IMAGES[i % len(IMAGES)]
        start = time.perf_counter()
        case = client.create_case([image])
        done = _wait_case(client, case["id"])
        samples.append((time.perf_counter() - start) * 1000)
        failed += not _prediction_done(done)
        _wait_gradcam(client, case["id"])
    return {**summary(samples, "ms", digits=1), "failed": failed}


def throughput(client, n: int, clients: int = 4) -> dict:
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        cases = list(pool.map(lambda i: client.create_case([IMAGES[i % len(IMAGES)]]), range(n)))
    uploaded = time.perf_counter() - start
    results = [_wait_case(client, case["id"], timeout=300, interval=0.1) for case in cases]
    seconds = time.perf_counter() - start
    failed = sum(not _prediction_done(case) for case in results)
    return {
        "images": n,
        "seconds": round(seconds, 2),
        "upload_seconds": round(uploaded, 2),
        "images_per_minute": round(n / seconds * 60, 1),
        "failed": failed,
    }


def read_load(client, case_ids: list[int], users: int = 20, seconds: float = 20.0) -> dict:
    """``users`` threads issue GETs back to back for ``seconds`` (at most 200 each)."""
    paths = ["api/v1/cases/"] + [f"api/v1/cases/{pk}/" for pk in case_ids[:10]]
    latencies: list[float] = []
    by_path: dict[str, list[float]] = {"list": [], "detail": []}
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def user(index: int) -> None:
        own = api_client.Client(client.base_url, token=client.token, timeout=30)
        for i in range(200):
            if time.monotonic() >= stop_at:
                return
            path = paths[(index + i) % len(paths)]
            start = time.perf_counter()
            try:
                status, _, _ = own.request("GET", path)
                problem = None if status == 200 else f"HTTP {status}"
            except Exception as exc:  # every failure counts as an error, whatever it is
                problem = f"{type(exc).__name__}: {exc}"
            elapsed = (time.perf_counter() - start) * 1000
            with lock:
                latencies.append(elapsed)
                by_path["list" if path == paths[0] else "detail"].append(elapsed)
                if problem:
                    errors.append(problem)

    started = time.perf_counter()
    with ThreadPoolExecutor(users) as pool:
        list(pool.map(user, range(users)))
    wall = time.perf_counter() - started
    return {
        **summary(latencies, "ms", digits=1),
        "users": users,
        "seconds": round(wall, 1),
        "requests_per_second": round(len(latencies) / wall, 1),
        "errors": len(errors),
        "error_examples": sorted(set(errors))[:3],
        "paths": ["/api/v1/cases/", "/api/v1/cases/{id}/"],
        "by_path": {name: summary(v, "ms", digits=1) for name, v in by_path.items() if v},
        "load_generator": "Python threads (urllib, a new connection per request) on the same "
        "machine as the server",
    }


def measure(n_latency: int = 12, n_burst: int = 16) -> dict:
    platform = Platform()
    sampler = MemorySampler()
    sampler.start()
    try:
        token = platform.setup()
        platform.start_web()
        client = api_client.Client(platform.url, token=token, timeout=60)
        results: dict = {
            "setup": {
                "database": platform.database,
                "broker": platform.broker.split("://", 1)[0],
                "web": "gunicorn, 2 processes x 4 threads (gthread)",
                "workers": "celery prefork, --concurrency 1, -Q inference,explain, warm model",
                "model": "bundled cxr-compact",
            }
        }
        for n_workers in (1, 2):
            for index in range(len(platform.workers), n_workers):
                process = platform.start_worker(index)
                sampler.watch(process.pid, f"worker {index}")
            client.create_case([IMAGES[0]])  # a first task per worker process: warm paths
            time.sleep(3)
            results[f"workers_{n_workers}"] = {
                "upload_to_prediction": upload_latency(client, n_latency),
                "throughput": throughput(client, n_burst),
            }
            log.info("e2e with %d worker(s): %s", n_workers, results[f"workers_{n_workers}"])
        sampler.stopped.set()
        platform.stop_workers()
        listing = client.json("GET", "api/v1/cases/")
        ids = [case["id"] for case in listing["results"]]
        results["read_api"] = read_load(client, ids)
        results["worker_peak_rss_mb"] = {
            label: round(rss / 2**20, 1) for label, rss in sorted(sampler.peaks.items())
        }
        return results
    finally:
        sampler.stopped.set()
        platform.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    print(json.dumps(measure(n_latency=4, n_burst=6), indent=2))
