"""Honest explanation pictures: occlusion marks nothing the model was not shown (the blank
outside the lungs is "not seen by the model") and the overlay download is the picture the
page shows (the whole image, the heatmap where it lies) under a name that says what it is."""

from __future__ import annotations

import io

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from apps.explain.jobs import seen_only
from ml.explain.render import render_overlay
from tests.factories import CaseImageFactory, ExplanationFactory


def _visible(size: int = 32) -> np.ndarray:
    visible = np.zeros((size, size), dtype=bool)
    visible[8:24, 4:28] = True
    return visible


def test_occlusion_marks_nothing_outside_what_the_model_sees():
    values = np.ones((32, 32), dtype=np.float32)
    visible = _visible()
    kept, not_seen = seen_only(values, visible, "occlusion")
    assert not_seen is not None
    assert np.array_equal(not_seen, ~visible)
    assert kept[~visible].max() == 0.0
    assert kept[visible].min() == 1.0
    # Other methods' maps, and a model that sees everything, are left as they are.
    assert seen_only(values, visible, "gradcam")[1] is None
    assert seen_only(values, None, "occlusion")[1] is None
    assert seen_only(values, np.ones((32, 32), dtype=bool), "occlusion")[1] is None


def test_the_overlay_greys_out_what_the_model_was_not_shown():
    gray = np.full((64, 64), 0.5, dtype=np.float32)
    heat = np.ones((64, 64), dtype=np.float32)
    visible = _visible(64)
    plain = Image.open(io.BytesIO(render_overlay(gray, heat))).convert("RGB")
    marked = Image.open(io.BytesIO(render_overlay(gray, heat, not_seen=~visible))).convert("RGB")
    assert plain.size == marked.size
    assert np.asarray(plain).astype(int).sum() != np.asarray(marked).astype(int).sum()


@pytest.mark.django_db
def test_overlay_download_is_the_whole_image_with_a_readable_name(client, clinician, media_root):
    image = CaseImageFactory(case__owner=clinician)
    explanation = ExplanationFactory(image=image, target_label="covid19")
    client.force_login(clinician)
    response = client.get(reverse("explain:overlay-download", args=[explanation.pk]))
    assert response.status_code == 200
    name = f"case-{image.case_id}-image-1-gradcam-covid19.png"
    assert response["Content-Disposition"] == f'attachment; filename="{name}"'
    picture = Image.open(io.BytesIO(response.content))
    # Drawn at the uploaded image's own size (the stored map is 64 x 64): bigger than it.
    assert max(picture.size) >= max(image.width, image.height)


@pytest.mark.django_db
def test_another_clinician_cannot_download_the_overlay(client, other_clinician, clinician):
    explanation = ExplanationFactory(image__case__owner=clinician)
    client.force_login(other_clinician)
    assert client.get(reverse("explain:overlay-download", args=[explanation.pk])).status_code == 404
