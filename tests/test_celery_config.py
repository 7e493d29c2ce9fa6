from django.conf import settings

from apps.cases.tasks import classify_image, sweep_stuck_predictions
from cxrplatform.celery import QUEUES, app


def test_classification_runs_on_the_inference_queue_with_late_acks():
    assert app.amqp.router.route({}, classify_image.name)["queue"].name == "inference"
    assert app.amqp.router.route({}, sweep_stuck_predictions.name)["queue"].name == "default"


def test_explanations_and_training_run_on_their_own_queues():
    from apps.explain.tasks import explain_image
    from apps.models.tasks import retrain_if_enough_labels, train_model

    route = app.amqp.router.route
    assert route({}, explain_image.name)["queue"].name == "explain"
    assert route({}, train_model.name)["queue"].name == "training"
    assert route({}, retrain_if_enough_labels.name)["queue"].name == "default"
    assert train_model.time_limit == settings.CXR_TASK_HARD_LIMITS["training"]
    assert "retrain-when-enough-labels" in app.conf.beat_schedule
    assert classify_image.acks_late is True
    assert classify_image.reject_on_worker_lost is True
    hard = settings.CXR_TASK_HARD_LIMITS["inference"]
    assert classify_image.time_limit == hard
    assert classify_image.soft_time_limit == int(hard * 0.9)


def test_broker_visibility_timeout_exceeds_every_hard_limit():
    timeout = app.conf.broker_transport_options["visibility_timeout"]
    assert timeout > max(settings.CXR_TASK_HARD_LIMITS.values())


def test_each_queue_has_its_own_routing_key_so_a_task_reaches_one_queue():
    keys = {q.name: q.routing_key for q in app.conf.task_queues}
    assert keys == {name: name for name in QUEUES}
    route = app.amqp.router.route({}, classify_image.name)
    assert route["queue"].routing_key == "inference"


def test_all_four_queues_are_declared_and_beat_runs_the_sweeper():
    assert (
        {q.name for q in app.conf.task_queues}
        == set(QUEUES)
        == {"inference", "explain", "training", "default"}
    )
    schedule = app.conf.beat_schedule["sweep-stuck-predictions"]
    assert schedule["task"] == sweep_stuck_predictions.name
