"""The learning loop end to end on a small real model and real fixture images."""

import threading

import pytest
from django.db import connection
from PIL import GifImagePlugin, Image

from apps.accounts.models import AuditEvent
from apps.cases import labelling
from apps.cases import services as case_services
from apps.cases.models import Prediction
from apps.models import services
from apps.models.datasets import create_snapshot, import_reference_dataset
from apps.models.models import ModelVersion, ReferenceImage, TrainingRun
from apps.models.services import auto_promotion_refusals
from apps.models.tasks import retrain_if_enough_labels
from apps.sites.drift import reference_for
from cxrplatform.jobs import run_job_now
from ml.models.metrics import ClassMetrics, EvaluationResult
from tests.conftest import IMAGES, upload_of
from tests.factories import UserFactory
from tests.models.test_snapshots import variant_png


@pytest.fixture
def seeded(db, production_model):
    result = import_reference_dataset(IMAGES / "manifest.csv", "generic")
    assert result["created"] == 18
    return production_model


def _predict(owner, name, capture):
    """A clinical upload of a new picture made from the fixture ``name`` (the fixture
    itself is a reference image, and a snapshot holds each picture once)."""
    content, _, _ = variant_png(name)
    upload = upload_of(f"{name}.png", content=content, content_type="image/png")
    with capture(execute=False):
        case = case_services.create_case(owner=owner, files=[upload])
    prediction = Prediction.objects.get(image__case=case)
    with capture(execute=False):
        run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    return prediction


def test_import_is_idempotent_and_keeps_labels_and_patients(seeded):
    again = import_reference_dataset(IMAGES / "manifest.csv", "generic")
    assert again == {
        "created": 0,
        "already_present": 18,
        "unreadable": 0,
        "synthetic_refused": 0,
        "excluded_by_mapping": 0,
    }
    image = ReferenceImage.objects.get(original_name="2168a917.jpg")
    assert (image.label, image.patient, image.source) == ("covid19", "cc-221", "covid-chestxray")


def test_snapshots_keep_the_test_split_and_add_confirmed_labels_to_train(
    seeded, clinician, annotator, django_capture_on_commit_callbacks
):
    first = create_snapshot()
    test_items = set(first.items.filter(split="test").values_list("reference_image_id", "label"))
    assert test_items
    prediction = _predict(clinician, "2168a917.jpg", django_capture_on_commit_callbacks)
    labelling.submit_label(image=prediction.image, annotator=annotator, label="covid19")
    second = create_snapshot()
    assert second.parent == first
    assert (
        set(second.items.filter(split="test").values_list("reference_image_id", "label"))
        == test_items
    )
    clinical = second.items.get(case_image__isnull=False)
    assert (clinical.case_image_id, clinical.label, clinical.split) == (
        prediction.image_id,
        "covid19",
        "train",
    )
    assert second.content_hash != first.content_hash
    assert second.counts["clinical"] == 1


def test_label_needs_the_configured_agreement_and_disagreements_are_listed(
    seeded, clinician, settings, django_capture_on_commit_callbacks
):
    settings.CXR_LABEL_AGREEMENT = 2
    first, second, third = (UserFactory(roles=["annotator"]) for _ in range(3))
    image = _predict(clinician, "5f619d7e.jpg", django_capture_on_commit_callbacks).image
    labelling.submit_label(image=image, annotator=first, label="pneumonia")
    image.refresh_from_db()
    assert image.confirmed_label == ""
    labelling.submit_label(image=image, annotator=second, label="covid19")
    assert list(labelling.disagreements()) == [image]
    # the disputed image comes first in a third annotator's queue
    assert labelling.labelling_queue(annotator=third)[0] == image
    labelling.submit_label(image=image, annotator=second, label="pneumonia", note="on review")
    image.refresh_from_db()
    assert image.confirmed_label == "pneumonia"
    assert list(labelling.disagreements()) == []
    assert labelling.labelling_queue(annotator=third) == []
    changes = AuditEvent.objects.filter(action="label.change")
    assert changes.count() == 1
    assert changes.get().before["label"] == "covid19"
    assert changes.get().after["label"] == "pneumonia"


def test_unusable_verdict_takes_the_image_out_of_the_queue_and_the_training_set(
    seeded, clinician, annotator, django_capture_on_commit_callbacks
):
    image = _predict(clinician, "4d98e1de.jpg", django_capture_on_commit_callbacks).image
    labelling.submit_label(image=image, annotator=annotator, label="unusable", note="rotated")
    image.refresh_from_db()
    assert image.status == "unusable"
    snapshot = create_snapshot()
    assert not snapshot.items.filter(case_image=image).exists()


@pytest.fixture
def any_lung_mass(settings):
    """A one-epoch retraining of the tiny model's recipe (width 8) need not reach its
    Grad-CAM mass in the lungs; the loop's test is about the loop, the gate has its own."""
    settings.CXR_GATE_LUNG_MASS_TOLERANCE = 1.0


@pytest.mark.slow
def test_the_whole_loop(
    seeded,
    settings,
    any_lung_mass,
    clinician,
    annotator,
    model_admin,
    django_capture_on_commit_callbacks,
):
    settings.CXR_RETRAIN_MIN_NEW_LABELS = 2
    settings.CXR_TRAINING_EPOCHS = 1
    other_annotator = UserFactory(roles=["annotator"])
    first = _predict(clinician, "2168a917.jpg", django_capture_on_commit_callbacks)
    second = _predict(clinician, "IM-0117-0001.jpeg", django_capture_on_commit_callbacks)
    assert first.model_version == seeded

    labelling.submit_label(image=first.image, annotator=annotator, label="covid19")
    assert retrain_if_enough_labels.run() is None  # one new label, threshold is two
    labelling.submit_label(image=second.image, annotator=other_annotator, label="normal")

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        run_id = retrain_if_enough_labels.run()
    assert run_id is not None
    assert len(callbacks) == 1  # the training task, queued after commit
    run = TrainingRun.objects.get(pk=run_id)
    assert run.trigger == "schedule"
    assert run.snapshot.counts["clinical"] == 2

    run_job_now(TrainingRun, run.pk)
    run.refresh_from_db()
    assert run.status == "done", run.error
    assert run.progress["epoch"] == 1
    assert "epoch 1/1" in run.log
    candidate = _assert_candidate(run, seeded)
    # candidate and production measured on the same test images
    evidence = services.promotion_evidence(candidate)
    assert evidence.same_split
    assert evidence.candidate is not None
    assert evidence.production is not None
    assert evidence.candidate.n == evidence.production.n == run.comparison["test_images"]
    _assert_paired_on_too_few_images(run, evidence)
    # Its drift reference, made on the same test images, is stored with it.
    reference = reference_for(candidate)
    assert reference is not None
    assert reference.n == run.comparison["test_images"]
    assert reference.model_sha256 == candidate.sha256

    services.promote(version=candidate, actor=model_admin)
    third = _predict(clinician, "00001280_004.jpg", django_capture_on_commit_callbacks)
    assert third.model_version == candidate  # served without a worker restart

    restored = services.rollback(actor=model_admin)
    assert restored == seeded
    fourth = _predict(clinician, "c0f74558.jpg", django_capture_on_commit_callbacks)
    assert fourth.model_version == seeded

    actions: list[tuple[str, int | None]] = list(
        AuditEvent.objects.order_by("pk").values_list("action", "actor")
    )
    assert ("label.create", annotator.pk) in actions
    assert ("training.start", None) in actions
    assert ("model.promote", model_admin.pk) in actions
    assert ("model.rollback", model_admin.pk) in actions
    promote_event = (
        AuditEvent.objects.filter(action="model.promote", actor=model_admin).order_by("pk").first()
    )
    assert promote_event is not None
    assert promote_event.before["production"]["version"] == seeded.pk
    assert promote_event.after["production"]["version"] == candidate.pk


def _assert_candidate(run: TrainingRun, production: ModelVersion) -> ModelVersion:
    """The run's candidate: trained from production, on the run's snapshot, evaluated with
    the report's curves, and its training animation moved from the run's folder into
    storage."""
    candidate = run.model_version
    assert candidate is not None
    assert candidate.status == "candidate"
    assert candidate.parent == production
    assert candidate.snapshot == run.snapshot
    assert candidate.evaluation is not None
    assert 0.0 <= candidate.evaluation.macro_f1 <= 1.0
    assert candidate.evaluation.curves is not None
    assert "roc" in candidate.evaluation.curves  # the report's curves, for the plots
    assert candidate.training_animation.name
    assert candidate.training_animation.name.endswith(".gradcam.gif")
    with Image.open(candidate.training_animation.path) as animation:
        assert animation.format == "GIF"
        assert isinstance(animation, GifImagePlugin.GifImageFile)
        assert animation.n_frames == 1  # one epoch
    return candidate


def _assert_paired_on_too_few_images(run, evidence):
    """Paired, image by image: too few images (3) for a verdict, and the gate says so."""
    assert evidence.paired.n == run.comparison["test_images"] == 3
    assert {f.verdict for f in evidence.paired.figures} == {"too_few"}
    assert run.comparison["gate"]["passed"] is False
    assert run.comparison["gate"]["reasons"][0].startswith("Only 3 test images")
    assert run.percent == 100
    assert run.progress_text == "ran all 1 epochs (best 1)"


def test_a_second_run_is_refused_while_one_is_active(seeded, model_admin):
    services.start_training_run(requested_by=model_admin)
    with pytest.raises(services.RegistryError, match="still pending"):
        services.start_training_run(requested_by=model_admin)


def _result(macro_f1, per_class):
    rows = {
        name: ClassMetrics(precision=p, recall=r, f1=0.8, support=10)
        for name, (p, r) in per_class.items()
    }
    return EvaluationResult(macro_f1=macro_f1, per_class=rows).to_json()


def test_gate_promotes_only_when_no_tracked_metric_is_worse():
    production = _result(0.8, {"covid19": (0.8, 0.8), "normal": (0.8, 0.8)})
    better = _result(0.85, {"covid19": (0.8, 0.8), "normal": (0.8, 0.9)})
    worse_recall = _result(0.9, {"covid19": (0.8, 0.7), "normal": (0.8, 0.8)})
    assert auto_promotion_refusals({"candidate": better, "production": production}) == []
    refusals = auto_promotion_refusals({"candidate": worse_recall, "production": production})
    assert refusals == ["covid19 recall 0.700 is below production's 0.800."]
    assert auto_promotion_refusals({"candidate": better, "production": None}) == [
        "Candidate and production were not both measured on the same images."
    ]


@pytest.mark.django_db(transaction=True)
@pytest.mark.slow
def test_two_concurrent_promotions_leave_exactly_one_production_version(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("row locks and concurrent transactions need PostgreSQL (CI runs it)")
    from django.conf import settings as django_settings

    from tests.models.test_registry import make_variant

    base = services.register_artifact(
        artifact_path=django_settings.CXR_BUNDLED_MODEL, make_production=True
    )
    a = services.register_artifact(artifact_path=make_variant(tmp_path / "a.keras", b"a"))
    b = services.register_artifact(artifact_path=make_variant(tmp_path / "b.keras", b"b"))
    barrier = threading.Barrier(2)
    outcomes = []

    def promote(version):
        from django.db import connections

        try:
            barrier.wait()
            services.promote(version=version)
            outcomes.append("promoted")
        except services.ConcurrentChangeError:  # a 409 with a reason, never an IntegrityError
            outcomes.append("refused")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=promote, args=(v,)) for v in (a, b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert ModelVersion.objects.filter(status="production").count() == 1
    assert sorted(outcomes) in (["promoted", "promoted"], ["promoted", "refused"])
    assert base.pk not in ModelVersion.objects.filter(status="production").values_list(
        "pk", flat=True
    )


@pytest.mark.slow
def test_a_run_retrains_the_way_production_was_trained(db, settings, model_admin):
    """Production is the bundled lung CNN (v2, masked, lung_cnn): the platform's run trains
    a lung_cnn on v2 lung-masked crops too, not the default compact CNN."""
    from pathlib import Path

    bundled = Path(settings.BASE_DIR) / "ml" / "bundled" / "cxr-lungs" / "cxr-lungs.keras"
    production = services.register_artifact(artifact_path=bundled, make_production=True)
    import_reference_dataset(IMAGES / "manifest.csv", "generic")
    settings.CXR_TRAINING_EPOCHS = 1
    run = services.start_training_run(requested_by=model_admin, config={"min_epochs": 0})
    assert run.config["architecture"] == "lung_cnn"
    assert run.config["preprocessing"] == 2
    assert run.config["mask_outside"] is True
    assert run.config["input_size"] == production.card["preprocessing"]["input_size"]
    assert run.config["epochs"] == 1  # the platform's run length, not the recipe's
    start = AuditEvent.objects.get(action="training.start")
    assert start.after["config"]["architecture"] == "lung_cnn"

    run_job_now(TrainingRun, run.pk)
    run.refresh_from_db()
    assert run.status == "done", run.error
    assert run.model_version is not None
    card = run.model_version.card
    assert card["architecture"] == "lung_cnn"
    assert card["preprocessing"]["version"] == 2
    assert card["preprocessing"]["mask_outside"] is True
