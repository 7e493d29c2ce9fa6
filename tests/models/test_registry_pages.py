import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.cases import services as case_services
from apps.cases.access import image_ref
from apps.cases.models import CaseImage, Prediction
from apps.models.models import ModelVersion, TrainingRun
from cxrplatform.jobs import run_job_now
from tests.conftest import IMAGES, upload_of
from tests.models.test_registry import make_variant


@pytest.fixture
def predicted(clinician, production_model, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False):
        case = case_services.create_case(
            owner=clinician, files=[upload_of("2168a917.jpg")], patient_ref="SECRET-REF-42"
        )
        prediction = Prediction.objects.get(image__case=case)
        run_job_now(Prediction, prediction.pk)
    return prediction.image


@pytest.mark.parametrize(
    ("who", "expected"), [("annotator", 200), ("clinician", 403), ("model_admin", 403)]
)
def test_labelling_queue_is_for_annotators(
    client, who, expected, clinician, annotator, model_admin
):
    client.force_login(
        {"annotator": annotator, "clinician": clinician, "model_admin": model_admin}[who]
    )
    assert client.get(reverse("cases:label-queue")).status_code == expected


def test_annotator_confirms_a_label_from_the_queue_without_seeing_patient_identifiers(
    login, annotator, predicted
):
    client = login(annotator)
    page = client.get(reverse("cases:label-queue")).content.decode()
    assert f'data-image="{image_ref(predicted)}"' in page
    assert "SECRET-REF-42" not in page
    assert reverse("cases:reader-image-file", args=[image_ref(predicted)]) in page
    label = predicted.predictions.get().label
    response = client.post(
        reverse("cases:label", args=[image_ref(predicted)]), {"label": label, "note": "agree"}
    )
    assert response.status_code == 302
    predicted.refresh_from_db()
    assert predicted.confirmed_label == label
    assert AuditEvent.objects.filter(action="label.create", actor=annotator).count() == 1
    page = client.get(reverse("cases:label-queue")).content.decode()
    assert "Nothing to label" in page


@pytest.mark.parametrize(
    ("who", "expected"), [("model_admin", 200), ("clinician", 403), ("annotator", 403)]
)
def test_registry_is_for_model_admins(client, who, expected, clinician, annotator, model_admin):
    client.force_login(
        {"annotator": annotator, "clinician": clinician, "model_admin": model_admin}[who]
    )
    assert client.get(reverse("registry:index")).status_code == expected
    assert client.post(reverse("registry:rollback")).status_code in {expected, 302}


def test_model_admin_compares_promotes_and_rolls_back_in_the_ui(
    login, model_admin, production_model, tmp_path
):
    from apps.models.services import register_artifact

    candidate = register_artifact(artifact_path=make_variant(tmp_path / "c.keras", b"c"))
    ModelVersion.objects.filter(pk=production_model.pk).update(metrics={"macro_f1": 0.7})
    ModelVersion.objects.filter(pk=candidate.pk).update(metrics={"macro_f1": 0.5})
    client = login(model_admin)
    index = client.get(reverse("registry:index")).content.decode()
    assert f'data-version="{candidate.pk}" data-status="candidate"' in index
    confirm = client.get(reverse("registry:promote", args=[candidate.pk])).content.decode()
    assert "macro-F1" in confirm
    # Each measured on its own images: the lower macro-F1 is shown, never called worse.
    assert "data-not-paired" in confirm
    assert 'class="num worse"' not in confirm
    response = client.post(reverse("registry:promote", args=[candidate.pk]))
    assert response.status_code == 302
    assert ModelVersion.objects.get(status="production") == candidate
    client.post(reverse("registry:rollback"))
    assert ModelVersion.objects.get(status="production") == production_model
    assert list(
        AuditEvent.objects.filter(actor=model_admin, action__startswith="model.")
        .order_by("pk")
        .values_list("action", flat=True)
    ) == ["model.promote", "model.promote", "model.rollback"]


def test_model_admin_starts_a_training_run_and_sees_its_progress(
    login, model_admin, production_model, django_capture_on_commit_callbacks
):
    from apps.models.datasets import import_reference_dataset

    import_reference_dataset(IMAGES / "manifest.csv", "generic")
    client = login(model_admin)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(reverse("registry:start-training"))
    assert response.status_code == 302
    assert len(callbacks) == 1
    run = TrainingRun.objects.get()
    assert run.requested_by == model_admin
    TrainingRun.objects.filter(pk=run.pk).update(
        status="running", progress={"epoch": 2, "epochs": 4, "batch": 1, "batches": 2}
    )
    page = client.get(reverse("registry:index")).content.decode()
    assert 'value="37"' in page  # (1 epoch done * 2 + 1 batch) / (4 * 2) batches = 37 %
    # The run's row is live: the page re-fetches it until the run has finished.
    assert f'data-live="run-{run.pk}" data-live-state="running:37:2:1" data-live-pending' in page
    assert CaseImage.objects.count() == 0


def _evaluated_metrics() -> dict:
    """A real ml.models.evaluation result (with curves) for 30 images, as stored."""
    import numpy as np

    from ml.data.labels import CLASSES
    from ml.models.evaluation import evaluate_predictions

    rng = np.random.default_rng(0)
    truth = [CLASSES[i % 3] for i in range(30)]
    probs = rng.dirichlet([1, 1, 1], size=30)
    for row, label in zip(probs, truth, strict=True):
        row[CLASSES.index(label)] += 1.0
    probs = probs / probs.sum(axis=1, keepdims=True)
    return evaluate_predictions(truth, probs, CLASSES, n_bootstrap=50).to_json()


@pytest.mark.parametrize("kind", ["confusion-matrix", "roc", "calibration"])
@pytest.mark.slow
def test_version_plots_are_svg_drawn_from_stored_metrics(
    login, model_admin, clinician, production_model, kind
):
    ModelVersion.objects.filter(pk=production_model.pk).update(metrics=_evaluated_metrics())
    url = reverse("registry:plot", args=[production_model.pk, kind])
    response = login(model_admin).get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    assert response.content.lstrip().startswith(b"<?xml")
    assert b"<svg" in response.content
    assert login(clinician).get(url).status_code == 403


def test_version_plots_without_curves_are_404_and_the_page_says_why(
    login, model_admin, production_model
):
    ModelVersion.objects.filter(pk=production_model.pk).update(metrics={"macro_f1": 0.7})
    client = login(model_admin)
    assert (
        client.get(reverse("registry:plot", args=[production_model.pk, "roc"])).status_code == 404
    )
    assert (
        client.get(reverse("registry:plot", args=[production_model.pk, "pie"])).status_code == 404
    )
    page = client.get(reverse("registry:version", args=[production_model.pk])).content.decode()
    assert "ROC and calibration curves were not stored" in page
    assert "No training animation was recorded" in page


def test_version_page_shows_tables_plots_and_the_training_animation(
    login, model_admin, production_model
):
    from django.core.files.base import ContentFile

    metrics = _evaluated_metrics()
    version = ModelVersion.objects.get(pk=production_model.pk)
    version.metrics = metrics
    version.training_animation.save("anim.gif", ContentFile(b"GIF89a-test"), save=True)
    client = login(model_admin)
    page = client.get(reverse("registry:version", args=[version.pk])).content.decode()
    for kind in ("confusion-matrix", "roc", "calibration"):
        assert reverse("registry:plot", args=[version.pk, kind]) in page
    diagonal = [row[i] for i, row in enumerate(metrics["confusion_matrix"]["matrix"])]
    for value in diagonal:
        assert f'<td class="num diagonal">{value}</td>' in page
    url = reverse("registry:training-animation", args=[version.pk])
    assert url in page
    response = client.get(url)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/gif"
    assert b"".join(response.streaming_content) == b"GIF89a-test"


def test_compare_page_shows_two_versions_and_differences(
    login, model_admin, annotator, production_model, tmp_path
):
    from apps.models.services import register_artifact

    candidate = register_artifact(artifact_path=make_variant(tmp_path / "c.keras", b"c"))
    ModelVersion.objects.filter(pk=production_model.pk).update(
        metrics={"macro_f1": 0.70, "ece": 0.10}
    )
    ModelVersion.objects.filter(pk=candidate.pk).update(metrics={"macro_f1": 0.65, "ece": 0.05})
    url = reverse("registry:compare")
    client = login(model_admin)
    page = client.get(url, {"a": production_model.pk, "b": candidate.pk}).content.decode()
    # B - A is shown (macro-F1 and ECE both fell by 0.05), but the two were measured on
    # different images: neither difference is called better or worse.
    assert page.count('<td class="num">-0.050</td>') == 2
    assert "Measured on different images" in page
    assert 'class="num worse"' not in page
    assert 'class="num better"' not in page
    assert reverse("registry:promote", args=[candidate.pk]) in page
    # Without parameters it compares production with another version.
    page = client.get(url).content.decode()
    assert f'<option value="{production_model.pk}" selected>' in page
    assert login(annotator).get(url).status_code == 403


def test_version_page_says_how_the_version_was_built(login, model_admin):
    from tests.factories import ModelVersionFactory

    version = ModelVersionFactory(
        card={
            "name": "lungs",
            "classes": ["covid19", "pneumonia", "normal"],
            "architecture": "lung_cnn",
            "preprocessing": {
                "version": 2,
                "input_size": 160,
                "mask_outside": True,
                "mask_dilation": 0.01,
                "segmenter": {"version": "lung-unet@254299e2a32c"},
            },
            "hyperparameters": {"width": 16, "acquisition_augment": True, "lung_penalty": 0.0},
            "operating_point": {
                "offsets": {"covid19": 0.0, "pneumonia": -0.75, "normal": -0.5},
                "val_macro_f1_before": 0.722,
                "val_macro_f1_after": 0.759,
            },
            "training": {"epochs_run": 46, "seconds": 1230.1},
        }
    )
    old = ModelVersionFactory()  # a v1 card without these keys
    client = login(model_admin)
    page = client.get(reverse("registry:version", args=[version.pk])).content.decode()
    assert '<th scope="row">architecture</th><td>lung_cnn, width 16</td>' in page
    assert "v2, 160 px, lung frame + CLAHE, zero outside the lungs (dilated 0.01)" in page
    assert "lungs by lung-unet@254299e2a32c" in page
    assert "<td>acquisition augmentation</td>" in page
    assert (
        "logit offsets covid19 +0, pneumonia -0.75, normal -0.5 chosen on validation"
        " (macro-F1 0.722 -&gt; 0.759)" in page
    )
    assert "46 epochs, 1230.1 s" in page
    old_page = client.get(reverse("registry:version", args=[old.pk])).content.decode()
    assert "v1, 64 px, whole image letterboxed" in old_page
    assert "operating point" not in old_page


def test_version_page_names_the_pretrained_backbone_and_what_was_fine_tuned(login, model_admin):
    from tests.factories import ModelVersionFactory

    version = ModelVersionFactory(
        card={
            "name": "lite",
            "classes": ["covid19", "pneumonia", "normal"],
            "architecture": "efficientnet_lite0",
            "hyperparameters": {"width": 16, "train_from_block": 8},
        }
    )
    page = login(model_admin).get(reverse("registry:version", args=[version.pk])).content
    assert (
        '<th scope="row">architecture</th><td>efficientnet_lite0, ImageNet weights, '
        "blocks 8-15 and head fine-tuned</td>"
    ) in page.decode()
