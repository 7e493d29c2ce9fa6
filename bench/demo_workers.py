"""Prediction latency while a training run trains: ``make demo``'s workers vs one worker.

When one demo worker served every queue, a prediction took 10.7 s instead of 0.6 s
while a 10-second training ran; it waited in the queue behind the training.
``Procfile.demo`` now starts one worker per kind of work. This benchmark runs the
platform the way the demo does (SQLite, Celery's filesystem broker; gunicorn in front,
as in ``bench.e2e``) and starts the workers with the very command lines of
``Procfile.demo`` (its ``celery worker`` lines; no beat). Then, through the REST API:

* upload -> prediction latency with every worker idle (after each prediction, its
  Grad-CAM is waited for, untimed, so the next upload meets idle workers);
* a training run is started (``POST /api/v1/training-runs/``: the production model's
  recipe on the 18 fixture reference images, ``CXR_TRAINING_EPOCHS`` epochs) and, while
  it is ``running``, one upload after another is timed the same way; each sample says
  whether the run was still running when the prediction was done;
* the same with the previous demo's single worker (``-Q`` every queue): idle, then
  uploads during a training run, each of which waits for the run to end.

Figures, not a timed test: ``tests/reliability/test_demo_workers.py`` asserts the
outcome (a prediction is done while a run is still running). The filesystem broker
polls its folder once a second, which every latency here includes.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.e2e import IMAGES, Platform, _wait_case, api_client
from bench.stats import summary

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PROCFILE = ROOT / "Procfile.demo"
# Procfile.demo as it was: one worker for every queue (beat left out here).
SINGLE_WORKER = (
    "CXR_WARM_MODEL=1 .venv/bin/celery -A cxrplatform worker "
    "-Q inference,segmentation,explain,training,default --concurrency 1 "
    "--hostname single@%h --loglevel INFO"
)


def procfile_workers(path: Path = PROCFILE) -> dict[str, tuple[list[str], str]]:
    """``name -> (queues, command)`` for each ``celery ... worker`` line of a Procfile."""
    workers = {}
    for line in path.read_text().splitlines():
        name, sep, command = line.partition(":")
        if not sep or line.startswith("#") or not name.strip().isidentifier():
            continue
        words = shlex.split(command)
        if "worker" not in words or "celery" not in " ".join(words):
            continue
        queues = words[words.index("-Q") + 1].split(",") if "-Q" in words else ["default"]
        workers[name.strip()] = (queues, command.strip())
    return workers


def _command(line: str) -> str:
    """A Procfile command run with this interpreter's virtual environment."""
    return line.replace(".venv/bin/", f"{Path(sys.executable).parent}/")


class Workers:
    """Worker processes started from Procfile command lines, in the platform's env."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.logs: dict[str, Path] = {}

    def start(self, name: str, command: str) -> None:
        log_path = self.platform.dir / f"demo-worker-{name}.log"
        with log_path.open("w") as log_file:
            process = subprocess.Popen(  # noqa: S602 - the Procfile's own command line
                _command(command),
                shell=True,
                executable="/bin/bash",
                cwd=ROOT,
                env=self.platform.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.platform.workers.append(process)
        self.logs[name] = log_path

    def wait_ready(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        for name, path in self.logs.items():
            while "ready." not in path.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not start:\n{path.read_text()[-3000:]}")
                time.sleep(0.2)
        # CXR_WARM_MODEL loads the models in the pool child after "ready.".
        for name, path in self.logs.items():
            warm = "inference" in name or "single" in name
            while warm and "loading model version" not in path.read_text(errors="replace"):
                if time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        time.sleep(2.0)

    def stop(self) -> None:
        self.platform.stop_workers()
        self.logs.clear()


def _upload(client, i: int, timeout: float) -> tuple[float, str]:
    """Upload -> prediction done (ms, its status); then its Grad-CAM, not timed, so the
    next upload meets workers that are idle but for the training."""
    start = time.perf_counter()
    case = client.create_case([IMAGES[i % len(IMAGES)]])
    done = _wait_case(client, case["id"], timeout=timeout)
    ms = (time.perf_counter() - start) * 1000
    api_client.wait_for_results(client, case["id"], timeout=timeout, interval=0.2)
    return ms, done["images"][0]["prediction"]["status"]


def _idle(client, n: int) -> dict[str, Any]:
    samples = [_upload(client, i, timeout=300) for i in range(n)]
    return {
        **summary([ms for ms, _ in samples], "ms", digits=1),
        "failed": sum(status != "done" for _, status in samples),
    }


def _run(admin, pk: int) -> dict:
    return admin.json("GET", f"api/v1/training-runs/{pk}/")


def _wait_status(admin, pk: int, wanted: set[str], timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = _run(admin, pk)
        if run["status"] in wanted:
            return run
        time.sleep(0.2)
    raise TimeoutError(f"training run {pk} not {wanted} within {timeout} s")


def _during_training(client, admin, max_uploads: int, timeout: float) -> dict[str, Any]:
    """Start a training run; time uploads while it is running; wait for its end."""
    started = time.monotonic()
    pk = admin.json("POST", "api/v1/training-runs/")["id"]
    _wait_status(admin, pk, {"running", "done", "failed"}, timeout=120)
    time.sleep(2.0)  # into the fit
    samples: list[dict[str, Any]] = []
    load = []
    while len(samples) < max_uploads and _run(admin, pk)["status"] == "running":
        # Whether the run was still running when the prediction was done (read before
        # the untimed wait for the Grad-CAM).
        start = time.perf_counter()
        case = client.create_case([IMAGES[len(samples) % len(IMAGES)]])
        done = _wait_case(client, case["id"], timeout=timeout)
        ms = (time.perf_counter() - start) * 1000
        status = _run(admin, pk)["status"]
        api_client.wait_for_results(client, case["id"], timeout=timeout, interval=0.2)
        samples.append(
            {
                "ms": round(ms, 1),
                "prediction": done["images"][0]["prediction"]["status"],
                "run_still_running": status == "running",
            }
        )
        load.append(round(os.getloadavg()[0], 2))
    run = _wait_status(admin, pk, {"done", "failed"}, timeout=timeout)
    while_running = [s["ms"] for s in samples if s["run_still_running"]]
    return {
        "samples": samples,
        "while_running": summary(while_running, "ms", digits=1) if while_running else None,
        "all": summary([s["ms"] for s in samples], "ms", digits=1) if samples else None,
        "training_run": {
            "status": run["status"],
            "error": run["error"][:300],
            "seconds": round(time.monotonic() - started, 1),
        },
        "load_1min_during": load,
    }


def measure(n_idle: int = 8, n_during: int = 10, single_during: int = 2) -> dict:
    """Both topologies, one after the other, on one platform (one database)."""
    platform = Platform(broker="filesystem://")
    # The demo's database: SQLite, whatever BENCH_DATABASE_URL says.
    platform.env["DATABASE_URL"] = f"sqlite:///{platform.dir / 'db.sqlite3'}"
    platform.database = "sqlite"
    workers = Workers(platform)
    try:
        token = platform.setup()
        platform.manage(
            "import_dataset", "tests/fixtures/images/manifest.csv", "--layout", "generic"
        )
        out = platform.manage(
            "shell",
            "-c",
            "from django.contrib.auth import get_user_model\n"
            "from knox.models import AuthToken\n"
            "user = get_user_model().objects.get(username='modeladmin')\n"
            "print('TOKEN', AuthToken.objects.create(user=user)[1])\n",
        )
        admin_token = next(line.split()[1] for line in out.splitlines() if line.startswith("TOKEN"))
        web = platform.start_web()
        client = api_client.Client(platform.url, token=token, timeout=60)
        admin = api_client.Client(platform.url, token=admin_token, timeout=60)
        demo = procfile_workers()
        results: dict[str, Any] = {
            "setup": {
                "database": platform.database,
                "broker": "filesystem",
                "web": web,
                "epochs": int(platform.env.get("CXR_TRAINING_EPOCHS", "60")),
                "data": "18 fixture reference images, the production model's recipe",
                "cpus": os.cpu_count(),
            },
            "procfile_demo": {name: queues for name, (queues, _) in demo.items()},
        }
        for name, (_, command) in demo.items():
            workers.start(name, command)
        workers.wait_ready()
        _upload(client, 0, timeout=300)  # every path warm once, Grad-CAM included
        separate: dict[str, Any] = {
            "load_before": [round(x, 2) for x in os.getloadavg()],
            "idle": _idle(client, n_idle),
        }
        separate["during_training"] = _during_training(client, admin, n_during, timeout=900)
        results["separate_workers"] = separate
        log.info("demo workers, separate: %s", separate)
        workers.stop()

        workers.start("single", SINGLE_WORKER)
        workers.wait_ready()
        _upload(client, 0, timeout=300)
        single: dict[str, Any] = {
            "load_before": [round(x, 2) for x in os.getloadavg()],
            "idle": _idle(client, max(2, n_idle // 2)),
        }
        single["during_training"] = _during_training(client, admin, single_during, timeout=900)
        results["single_worker"] = single
        log.info("demo workers, single: %s", single)
        return results
    finally:
        platform.close()


if __name__ == "__main__":
    import json

    logging.basicConfig(level=logging.INFO)
    print(json.dumps(measure(n_idle=4, n_during=6, single_during=1), indent=2))
