"""JSON logs with request id, user id (never patient data), job id and
task id, carried from the web process to the worker. The whole path through a real
worker: tests/ops/test_worker_ops.py."""

from __future__ import annotations

import io
import json
import logging

import pytest

from cxrplatform import logcontext
from cxrplatform.jobs import registered_task


@pytest.fixture
def json_lines():
    """A JSON handler (the CXR_LOG_FORMAT=json one) on the root logger."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logcontext.ContextFilter())
    handler.setFormatter(logcontext.json_formatter())
    root = logging.getLogger()
    root.addHandler(handler)

    def lines() -> list[dict]:
        return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]

    try:
        yield lines
    finally:
        root.removeHandler(handler)


@pytest.mark.django_db
def test_a_request_logs_its_request_id_and_user_id_as_json(client, clinician, json_lines):
    client.force_login(clinician)
    response = client.get("/cases/987654/", HTTP_X_REQUEST_ID="req-test-123")
    assert response.status_code == 404  # django.request logs a warning for it
    assert response["X-Request-ID"] == "req-test-123"
    lines = [line for line in json_lines() if line["logger"] == "django.request"]
    assert lines, json_lines()
    line = lines[-1]
    assert line["level"] == "WARNING"
    assert line["request_id"] == "req-test-123"
    assert line["user_id"] == str(clinician.pk)
    assert line["task_id"] == ""
    assert {"time", "message", "job_id"} <= set(line)
    assert clinician.username not in json.dumps(line)  # an id, never a name


@pytest.mark.django_db
def test_an_unusable_request_id_is_replaced(client):
    response = client.get("/healthz", HTTP_X_REQUEST_ID="not ok; <script>")
    given = response["X-Request-ID"]
    assert given != "not ok; <script>"
    assert len(given) == 32
    int(given, 16)
    assert client.get("/healthz")["X-Request-ID"] != given  # one per request


def test_the_request_id_and_user_id_travel_in_the_task_message_headers():
    tokens = (logcontext.request_id_var.set("req-abc"), logcontext.user_id_var.set("42"))
    try:
        headers: dict = {}
        logcontext.add_context_headers(headers=headers)
    finally:
        logcontext.request_id_var.reset(tokens[0])
        logcontext.user_id_var.reset(tokens[1])
    assert headers == {"cxr_request_id": "req-abc", "cxr_user_id": "42"}
    empty: dict = {}
    logcontext.add_context_headers(headers=empty)  # no request: nothing is added
    assert empty == {}


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("cxrplatform.jobs.run_job", {"job": "cases.prediction", "pk": 7}),
        # A message queued under the kind's own task name before run_job (an alias now).
        ("apps.cases.tasks.classify_image", {"prediction_id": 7}),
    ],
)
def test_a_task_run_logs_the_task_id_job_id_and_the_senders_request(json_lines, name, kwargs):
    task = registered_task(name)
    task.push_request(id="task-1", cxr_request_id="req-abc", cxr_user_id="42")
    try:
        logcontext.task_started(task_id="task-1", task=task, kwargs=kwargs)
        logging.getLogger("apps.cases.inference").warning("inside the task")
        logcontext.task_finished(task_id="task-1", task=task, state="SUCCESS")
    finally:
        task.pop_request()
    lines = json_lines()
    inside = next(line for line in lines if line["message"] == "inside the task")
    assert inside["request_id"] == "req-abc"
    assert inside["user_id"] == "42"
    assert inside["task_id"] == "task-1"
    assert inside["job_id"] == "prediction:7"
    finished = next(line for line in lines if line["message"].startswith("task finished"))
    assert finished["task_state"] == "SUCCESS"
    assert finished["task_seconds"] >= 0
    # After the task its context is gone.
    assert logcontext.task_id_var.get() == ""
    assert logcontext.request_id_var.get() == ""
