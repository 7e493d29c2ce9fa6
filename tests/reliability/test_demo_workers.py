"""``make demo``'s workers (Procfile.demo): a prediction does not wait for a training run.

Until now the demo ran one worker for every queue, so a prediction queued behind a
training run (10.7 s instead of 0.6 s). The real test starts the inference and the
training worker exactly as Procfile.demo lists them (their queues, their
CXR_WARM_MODEL), starts a training run and uploads an image: the prediction is done by
the inference worker while the run is still ``running`` on the training worker. The
run is held ``running`` by the test-only pause after its claim
(``CXR_TEST_PAUSE_AFTER_RUNNING_SECONDS``, so the outcome does not hang on how fast a
small fit is) and would then train for real. ``make bench`` measures the latency
(``bench.demo_workers``).
"""

from __future__ import annotations

import re
import signal

import pytest

from apps.cases import services
from apps.cases.models import Prediction
from apps.models.datasets import import_reference_dataset
from apps.models.models import TrainingRun
from apps.models.services import start_training_run
from bench.demo_workers import procfile_workers
from cxrplatform.celery import QUEUES
from tests.conftest import IMAGES, upload_of
from tests.reliability.conftest import wait_for
from tests.workers import REPO_ROOT, start_worker, stop_worker, wait_for_log

# How a worker logs receiving each task: its own task, or the one job task shown with the
# job's kind (cxrplatform.jobs.run_job).
PREDICTION = re.compile(
    r"Task (apps\.cases\.tasks\.classify_image|cxrplatform\.jobs\.run_job:cases\.prediction)\["
)
TRAINING = re.compile(
    r"Task (apps\.models\.tasks\.train_model|cxrplatform\.jobs\.run_job:registry\.trainingrun)\["
)


def _name_of(queue: str) -> str:
    return next(name for name, (queues, _) in procfile_workers().items() if queue in queues)


def _worker_of(queue: str) -> tuple[list[str], str]:
    return procfile_workers()[_name_of(queue)]


def _warm(command: str) -> str:
    return "1" if "CXR_WARM_MODEL=1" in command else "0"


def test_the_demo_runs_one_worker_per_kind_of_work_and_beat_once():
    workers = procfile_workers()
    consumed = [queue for queues, _ in workers.values() for queue in queues]
    assert sorted(consumed) == sorted(QUEUES)  # every queue, each by one worker
    assert _worker_of("inference")[0] == ["inference"]
    training_queues, training_command = _worker_of("training")
    assert not {"inference", "explain", "segmentation"} & set(training_queues)
    # Only a worker that serves a model loads one at start.
    assert _warm(_worker_of("inference")[1]) == "1"
    assert _warm(training_command) == "0"
    lines = (REPO_ROOT / "Procfile.demo").read_text().splitlines()
    commands = [line.partition(":")[2] for line in lines if not line.startswith("#")]
    assert sum(" beat" in c or "--beat" in c for c in commands) == 1


@pytest.mark.worker
@pytest.mark.django_db(transaction=True)
def test_a_prediction_is_done_while_the_training_worker_runs_a_training(
    media_root, tmp_path, clinician, model_admin, production_model
):
    assert import_reference_dataset(IMAGES / "manifest.csv", "generic")["created"] == 18
    # One process per Procfile line that serves inference or training (one line for
    # both would be one worker, and the prediction would wait behind the training).
    workers, logs = {}, []
    for name in dict.fromkeys((_name_of("inference"), _name_of("training"))):
        queues, command = procfile_workers()[name]
        log_path = tmp_path / f"{name}.log"
        env = {"CXR_WARM_MODEL": _warm(command)}
        if "training" in queues:
            env["CXR_TEST_PAUSE_AFTER_RUNNING_SECONDS"] = "90"
        workers[name] = start_worker(
            log_path=log_path,
            media_root=media_root,
            queues=",".join(queues),
            hostname=f"{name}@%h",
            extra_env=env,
        )
        logs.append(log_path)
    inference, training = workers[_name_of("inference")], workers[_name_of("training")]
    inference_log = tmp_path / f"{_name_of('inference')}.log"
    training_log = tmp_path / f"{_name_of('training')}.log"
    try:
        wait_for_log(inference_log, "ready.", inference)
        wait_for_log(inference_log, "loading model version", inference)
        wait_for_log(training_log, "ready.", training)
        run = start_training_run(requested_by=model_admin, config={"epochs": 1})
        wait_for(
            lambda: TrainingRun.objects.filter(pk=run.pk, status="running").exists(),
            timeout=60,
            what="the training run running on the training worker",
            logs=tuple(logs),
        )

        case = services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
        prediction = wait_for(
            lambda: Prediction.objects.filter(
                image__case=case, status__in=["done", "failed"]
            ).first(),
            timeout=75,
            what="the prediction (the inference worker must not wait for the training)",
            logs=tuple(logs),
        )
        run.refresh_from_db()

        assert prediction.status == "done", prediction.error
        assert prediction.label in {"covid19", "pneumonia", "normal"}
        assert run.status == "running"  # still training when the prediction was done
        assert run.finished_at is None
        assert run.started_at < prediction.finished_at
        inference_text, training_text = inference_log.read_text(), training_log.read_text()
        assert PREDICTION.search(inference_text)
        assert TRAINING.search(training_text)
        assert not TRAINING.search(inference_text)
        assert not PREDICTION.search(training_text)
    finally:
        # Killed, not stopped: a warm shutdown would wait for the training to end.
        for process in workers.values():
            stop_worker(process, signal.SIGKILL if process is training else signal.SIGTERM)
