"""A classifier's operating point: shown on the version page, chosen by a model admin
from the card's curve (audited), and applied to the predictions made after the change."""

from __future__ import annotations

import numpy as np
import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.cases import services as case_services
from apps.cases.models import Prediction
from apps.models import services, serving
from apps.models.models import ModelVersion
from cxrplatform.jobs import run_job_now
from ml.serving.classifier import shift_probabilities
from tests.conftest import upload_of
from tests.factories import CLASSES, ModelVersionFactory, operating_point

GRID = (-30.0, -1.0, 0.0, 1.0, 30.0)


@pytest.fixture
def curved_model(production_model) -> ModelVersion:
    """The tiny production model, its card given a specificity point with a curve. The
    card's point is all zeros, which the tiny artifact does carry (no bias moved)."""
    card = {**production_model.card, "operating_point": operating_point(GRID, card_normal=0.0)}
    ModelVersion.objects.filter(pk=production_model.pk).update(card=card)
    production_model.refresh_from_db()
    return production_model


def _row(version: ModelVersion, normal: float) -> tuple[int, dict]:
    rows = version.card["operating_point"]["curve"]["rows"]
    index = next(i for i, r in enumerate(rows) if r["offsets"]["normal"] == normal)
    return index, rows[index]


def _predict(clinician, django_capture_on_commit_callbacks, name="2168a917.jpg") -> Prediction:
    with django_capture_on_commit_callbacks(execute=False):
        case = case_services.create_case(owner=clinician, files=[upload_of(name)])
        prediction = Prediction.objects.get(image__case=case)
        run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.status == "done", prediction.error
    return prediction


# --- the version page -------------------------------------------------------------------


def test_version_page_shows_the_point_its_plot_and_every_curve_row(
    login, model_admin, curved_model
):
    client = login(model_admin)
    page = client.get(reverse("registry:version", args=[curved_model.pk])).content.decode()
    assert 'id="operating-point"' in page
    assert "<code>val-specificity</code>" in page
    assert "normals called normal ≥ 0.500" in page  # the target
    plot = reverse("registry:plot", args=[curved_model.pk, "operating-point"])
    assert plot in page
    for i in range(len(GRID)):
        assert f'<tr data-row="{i}"' in page
    card_index, _ = _row(curved_model, 0.0)
    assert f'<tr data-row="{card_index}" data-card data-active>' in page
    assert f'id="op-row-{card_index}" checked' in page

    response = client.get(plot)
    assert response.status_code == 200
    assert response["Content-Type"] == "image/svg+xml"
    svg = response.content.decode()
    assert svg.lstrip().startswith("<?xml")
    assert "<svg" in svg
    assert "AUROC 0.880" in svg
    assert "card's point" in svg


def test_an_older_card_shows_what_it_has_and_no_curve(login, model_admin):
    card = {
        "name": "old",
        "classes": list(CLASSES),
        "preprocessing": {"input_size": 64},
        "operating_point": {
            "method": "val-macro-f1",
            "offsets": {"covid19": 0.0, "pneumonia": -0.25, "normal": 0.5},
            "val_macro_f1_before": 0.71,
            "val_macro_f1_after": 0.74,
            "grid": [-1.0, 0.0, 1.0],
        },
    }
    version = ModelVersionFactory(name="old", card=card)
    client = login(model_admin)
    page = client.get(reverse("registry:version", args=[version.pk])).content.decode()
    assert "<code>val-macro-f1</code>" in page
    assert "pneumonia -0.25, normal +0.5" in page
    assert "0.710 at the argmax, 0.740 at the card's point" in page
    assert "recorded no operating curve" in page
    assert "operating-point-form" not in page
    plot = reverse("registry:plot", args=[version.pk, "operating-point"])
    assert client.get(plot).status_code == 404
    response = client.post(reverse("registry:operating-point", args=[version.pk]), {"row": "0"})
    assert response.status_code == 409
    version.refresh_from_db()
    assert version.operating_point is None


# --- choosing a point -------------------------------------------------------------------


def test_model_admin_chooses_another_row_and_the_audit_log_has_it(login, model_admin, curved_model):
    client = login(model_admin)
    index, row = _row(curved_model, 1.0)
    url = reverse("registry:operating-point", args=[curved_model.pk])
    confirm = client.get(url, {"row": index})
    assert confirm.status_code == 200
    text = confirm.content.decode()
    assert "covid19 +0, pneumonia +0, normal +1" in text  # the proposed offsets
    assert f'name="row" value="{index}"' in text
    assert not AuditEvent.objects.filter(action="model.operating_point").exists()

    response = client.post(url, {"row": index, "reason": "site asked for fewer false alarms"})
    assert response.status_code == 302
    assert response["Location"].endswith(
        reverse("registry:version", args=[curved_model.pk]) + "#operating-point"
    )
    curved_model.refresh_from_db()
    assert curved_model.operating_point["offsets"] == row["offsets"]
    assert curved_model.operating_point["normal_specificity"] == row["normal_specificity"]
    assert curved_model.active_offsets == {"covid19": 0.0, "pneumonia": 0.0, "normal": 1.0}
    event = AuditEvent.objects.get(action="model.operating_point")
    assert event.actor == model_admin
    assert event.target_id == str(curved_model.pk)
    assert event.before["operating_point"] == {
        "source": "card",
        "offsets": {"covid19": 0.0, "pneumonia": 0.0, "normal": 0.0},
    }
    assert event.after["operating_point"]["source"] == "chosen"
    assert event.after["operating_point"]["offsets"]["normal"] == 1.0
    assert event.after["reason"] == "site asked for fewer false alarms"

    page = client.get(reverse("registry:version", args=[curved_model.pk])).content.decode()
    assert f'<tr data-row="{index}" data-active>' in page
    assert "chosen by a model admin instead of the card" in page
    assert "serving now (chosen by a model admin)" in (
        client.get(
            reverse("registry:plot", args=[curved_model.pk, "operating-point"])
        ).content.decode()
    )

    # Back to the card's point: null again, audited too.
    assert client.get(url, {"reset": "1"}).status_code == 200
    assert client.post(url, {"reset": "1"}).status_code == 302
    curved_model.refresh_from_db()
    assert curved_model.operating_point is None
    assert list(
        AuditEvent.objects.filter(action="model.operating_point")
        .order_by("pk")
        .values_list("after__operating_point__source", flat=True)
    ) == ["chosen", "card"]


def test_choosing_the_cards_own_row_is_a_reset(model_admin, curved_model):
    _, row = _row(curved_model, 1.0)
    services.set_operating_point(version=curved_model, actor=model_admin, offsets=row["offsets"])
    _, card_row = _row(curved_model, 0.0)
    version = services.set_operating_point(
        version=curved_model, actor=model_admin, offsets=card_row["offsets"]
    )
    assert version.operating_point is None


@pytest.mark.parametrize("who", ["clinician", "annotator", "anonymous"])
def test_only_model_admins_may_change_the_point(client, who, clinician, annotator, curved_model):
    user = {"clinician": clinician, "annotator": annotator}.get(who)
    if user is not None:
        client.force_login(user)
    index, _ = _row(curved_model, 30.0)
    url = reverse("registry:operating-point", args=[curved_model.pk])
    for response in (client.get(url, {"row": index}), client.post(url, {"row": index})):
        if user is None:
            assert response.status_code == 302
            assert response["Location"].startswith(reverse("login"))
        else:
            assert response.status_code == 403
    curved_model.refresh_from_db()
    assert curved_model.operating_point is None
    assert not AuditEvent.objects.filter(action="model.operating_point").exists()


def test_offsets_that_are_not_a_curve_row_are_refused_and_nothing_changes(
    login, model_admin, curved_model
):
    client = login(model_admin)
    url = reverse("registry:operating-point", args=[curved_model.pk])
    for bad in ("99", "-1", "two", ""):
        response = client.post(url, {"row": bad})
        assert response.status_code == 400, bad
        assert "data-operating-point-error" in response.content.decode()

    not_a_row = {"covid19": 0.0, "pneumonia": 0.0, "normal": 0.5}
    with pytest.raises(services.OperatingPointError, match="not one of the points measured"):
        services.set_operating_point(version=curved_model, actor=model_admin, offsets=not_a_row)
    with pytest.raises(services.OperatingPointError, match="one offset for each class"):
        services.set_operating_point(
            version=curved_model, actor=model_admin, offsets={"normal": 1.0}
        )
    with pytest.raises(services.OperatingPointError, match="either"):
        services.set_operating_point(version=curved_model, actor=model_admin)
    curved_model.refresh_from_db()
    assert curved_model.operating_point is None
    assert not AuditEvent.objects.filter(action="model.operating_point").exists()


# --- serving ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_prediction_after_the_change_is_made_at_the_new_point(
    model_admin, clinician, curved_model, django_capture_on_commit_callbacks
):
    before = _predict(clinician, django_capture_on_commit_callbacks)
    assert before.model_version == curved_model
    loaded = serving.classifier_for(curved_model, runtime="litert")
    assert loaded.offsets == {}
    # The row that pushes the decision away from (or onto) "normal", whatever it was.
    normal = -30.0 if before.label == "normal" else 30.0
    _, row = _row(curved_model, normal)
    services.set_operating_point(version=curved_model, actor=model_admin, offsets=row["offsets"])

    after = _predict(clinician, django_capture_on_commit_callbacks)
    delta = np.array([0.0, 0.0, normal])  # the card's point is all zeros
    probs = np.array([[before.probabilities[c] for c in CLASSES]])
    expected = shift_probabilities(probs, delta)[0]
    for i, name in enumerate(CLASSES):
        assert after.probabilities[name] == pytest.approx(expected[i], abs=1e-5)
    assert after.label == CLASSES[int(np.argmax(expected))]
    assert after.label != before.label
    assert (after.label == "normal") == (normal > 0)
    # The worker's loaded model was reused, not loaded again: the same runner.
    curved_model.refresh_from_db()
    served = serving.classifier_for(curved_model, runtime="litert")
    assert served.offsets["normal"] == normal
    assert served._run is loaded._run

    # Back at the card's point, predictions are the model's own again.
    services.set_operating_point(version=curved_model, actor=model_admin, reset=True)
    again = _predict(clinician, django_capture_on_commit_callbacks)
    assert again.label == before.label
    for name in CLASSES:
        assert again.probabilities[name] == pytest.approx(before.probabilities[name], abs=1e-6)


def test_the_offsets_applied_are_the_change_from_the_cards_point(model_admin):
    """A card whose point moved the bias (normal +1) chosen at normal -1: the artifact
    already carries +1, so serving adds -2."""
    card = {
        "classes": list(CLASSES),
        "preprocessing": {"input_size": 64},
        "operating_point": operating_point((-1.0, 0.0, 1.0), card_normal=1.0),
    }
    version = ModelVersionFactory(card=card)
    assert serving.serving_offsets(version) is None
    _, row = _row(version, -1.0)
    version = services.set_operating_point(
        version=version, actor=model_admin, offsets=row["offsets"]
    )
    assert serving.serving_offsets(version) == {"covid19": 0.0, "pneumonia": 0.0, "normal": -2.0}
    # The same as ml's offset_change, which the inference worker does not import.
    from ml.models.operating_point import OperatingPoint, offset_change

    assert version.card_point is not None
    assert version.operating_point is not None
    change = offset_change(
        OperatingPoint.from_dict(version.card_point),
        OperatingPoint.from_dict(version.operating_point),
    )
    assert serving.serving_offsets(version) == change.offsets


@pytest.mark.slow
def test_the_explanation_explains_the_class_served_at_the_chosen_point(
    model_admin, clinician, curved_model, django_capture_on_commit_callbacks
):
    from apps.explain.models import Explanation

    first = _predict(clinician, django_capture_on_commit_callbacks)
    normal = -30.0 if first.label == "normal" else 30.0
    _, row = _row(curved_model, normal)
    services.set_operating_point(version=curved_model, actor=model_admin, offsets=row["offsets"])
    prediction = _predict(clinician, django_capture_on_commit_callbacks)
    assert prediction.label != first.label
    explanation = Explanation.objects.get(image=prediction.image)
    run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    assert explanation.status == "done", explanation.error
    assert explanation.target_label == prediction.label


@pytest.mark.slow
def test_a_curve_written_by_ml_is_shown_and_any_of_its_rows_can_be_chosen(login, model_admin):
    from ml.models.operating_point import choose_specificity_offsets, operating_curve

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 30)
    probs = rng.dirichlet([1, 1, 1], size=len(y))
    probs[np.arange(len(y)), y] += 0.6
    probs /= probs.sum(axis=1, keepdims=True)
    point = choose_specificity_offsets(probs, y, CLASSES)
    card_point = {**point.to_dict(), "curve": operating_curve(probs, y, CLASSES, point)}
    version = ModelVersionFactory(
        card={
            "classes": list(CLASSES),
            "preprocessing": {"input_size": 64},
            "operating_point": card_point,
        }
    )
    rows = card_point["curve"]["rows"]
    client = login(model_admin)
    page = client.get(reverse("registry:version", args=[version.pk])).content.decode()
    assert page.count("<tr data-row=") == len(rows) > 10
    index = next(i for i, r in enumerate(rows) if not r["chosen"])
    url = reverse("registry:operating-point", args=[version.pk])
    assert client.post(url, {"row": index}).status_code == 302
    version.refresh_from_db()
    assert version.active_offsets == rows[index]["offsets"]
    assert serving.serving_offsets(version) == {
        c: rows[index]["offsets"][c] - point.offsets[c] for c in CLASSES
    }
