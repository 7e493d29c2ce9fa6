"""CTSegmenter (ml.ct.segmenter) with the tiny real CT model trained on the fixtures."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow")

from ml.ct.data import read_gray
from ml.ct.segmenter import MASK_KINDS, NO_LUNGS, CTSegmenter
from ml.models.artifacts import ArtifactIntegrityError, card_path
from tests.conftest import FIXTURES

CT = FIXTURES / "ct"
SLICES = [
    CT / "zenodo" / "images" / "0313.jpg",  # 256 x 256
    CT / "medseg" / "images" / "slice-062.jpg",  # 158 x 247 (wider than tall)
    CT / "medseg" / "images" / "slice-052.jpg",  # 277 x 153
]


@pytest.fixture(scope="module")
def segmenter(ct_tiny_model) -> CTSegmenter:
    return CTSegmenter.load(ct_tiny_model)


def test_the_tiny_model_is_trained_and_carded(ct_tiny_model):
    card = json.loads(card_path(ct_tiny_model).read_text())
    assert card["name"] == "ct-tiny"
    assert card["training_data"]["slices"] == 16
    assert card["training"]["epochs_run"] == 6
    assert card["preprocessing"]["size"] == 256
    assert card["outputs"]["heads"] == ["lungs", "infection", "lesion_type"]
    # A real trained model: the loss went down over its epochs.
    history = card["training"]["history"]
    assert history[-1]["loss"] < history[0]["loss"]


@pytest.mark.parametrize("path", SLICES, ids=lambda p: p.name)
@pytest.mark.slow
def test_segment_returns_consistent_masks_at_the_original_size(segmenter, path):
    gray = read_gray(path)
    result = segmenter.segment(gray)
    for name in ("lungs", "ggo", "consolidation", "infection"):
        mask = getattr(result, name)
        assert mask.shape == gray.shape, name
        assert mask.dtype == bool, name
    assert result.infection_probability.shape == gray.shape
    assert result.infection_probability.dtype == np.float32
    assert 0.0 <= result.infection_probability.min() <= result.infection_probability.max() <= 1.0
    np.testing.assert_array_equal(result.infection, result.ggo | result.consolidation)
    assert not (result.ggo & result.consolidation).any()
    assert result.lung_area == int(result.lungs.sum())
    assert result.infection_area == int(result.infection.sum())
    assert result.ggo_area + result.consolidation_area == result.infection_area
    if result.lungs_found:
        assert result.message == ""
        inside = (result.infection & result.lungs).sum()
        assert result.percent_affected == pytest.approx(100 * inside / result.lung_area, abs=0.01)
        assert result.percent_ggo + result.percent_consolidation == pytest.approx(
            result.percent_affected, abs=0.02
        )
    else:
        assert result.message == NO_LUNGS
        assert result.percent_affected is None
        assert result.percent_ggo is None
    assert result.version == segmenter.version
    assert segmenter.version.startswith("ct-tiny@")


@pytest.mark.slow
def test_the_fixture_zenodo_slice_has_lungs_found_with_a_percentage(segmenter):
    result = segmenter.segment(read_gray(SLICES[0]))
    assert result.lungs_found
    assert 0.0 <= result.percent_affected <= 100.0


@pytest.mark.parametrize("kind", MASK_KINDS)
def test_mask_png_is_an_8_bit_mask_of_the_original_size(segmenter, kind):
    gray = read_gray(SLICES[1])
    result = segmenter.segment(gray)
    image = Image.open(io.BytesIO(result.mask_png(kind)))
    assert image.mode == "L"
    assert image.size == (gray.shape[1], gray.shape[0])
    values = set(np.unique(np.asarray(image)).tolist())
    assert values <= {0, 255}
    if kind != "lung_outline":
        assert (np.asarray(image) == 255).sum() == getattr(result, kind).sum()
    with pytest.raises(ValueError, match="Unknown mask kind"):
        result.mask_png("heart")


def test_lung_outline_is_the_boundary_of_the_lung_mask(segmenter):
    from ml.ct.segmenter import outline

    disc = np.hypot(*np.mgrid[-20:21, -20:21]) <= 15
    ring = outline(disc)
    assert ring.any()
    assert not (ring & ~disc).any()
    assert ring.sum() < disc.sum() / 3  # a thin line, not the filled mask
    result = segmenter.segment(read_gray(SLICES[0]))
    drawn = np.asarray(Image.open(io.BytesIO(result.mask_png("lung_outline")))) > 0
    np.testing.assert_array_equal(drawn, outline(result.lungs))


def test_segment_batch_matches_segment(segmenter):
    grays = [read_gray(p) for p in SLICES]
    batch = segmenter.segment_batch(grays)
    assert len(batch) == len(grays)
    for gray, result in zip(grays, batch, strict=True):
        single = segmenter.segment(gray)
        np.testing.assert_array_equal(single.infection, result.infection)
        np.testing.assert_array_equal(single.lungs, result.lungs)
    assert segmenter.segment_batch([]) == []


def test_a_blank_slice_has_no_lungs_and_says_so(segmenter):
    result = segmenter.segment(np.full((200, 300), 90, np.uint8))
    assert not result.lungs_found
    assert result.message == NO_LUNGS
    assert result.lung_area == 0
    assert result.infection_area == 0
    assert result.percent_affected is None


@pytest.mark.slow
def test_the_lung_area_bar_on_the_card_decides_lungs_found(ct_tiny_model):
    strict = CTSegmenter.load(ct_tiny_model)
    gray = read_gray(SLICES[0])
    assert strict.segment(gray).lungs_found
    strict.post = type(strict.post)(**{**strict.post.__dict__, "min_lung_fraction": 0.99})
    result = strict.segment(gray)
    assert not result.lungs_found
    assert result.message == NO_LUNGS


def test_segment_refuses_what_is_not_a_slice(segmenter):
    with pytest.raises(ValueError, match="2-D grayscale"):
        segmenter.segment(np.zeros((64, 64, 3), np.uint8))


@pytest.mark.slow
def test_infection_gradcam_is_a_normalised_map_of_the_slice_size(segmenter):
    for path in SLICES[:2]:
        gray = read_gray(path)
        cam = segmenter.infection_gradcam(gray)
        assert cam.shape == gray.shape
        assert cam.dtype == np.float32
        assert cam.min() >= 0.0
        assert cam.max() == pytest.approx(1.0)
        assert cam.std() > 0.01  # not constant


def test_load_refuses_a_different_artifact(ct_tiny_model, tmp_path):
    with pytest.raises(ArtifactIntegrityError):
        CTSegmenter.load(ct_tiny_model, expected_sha256="0" * 64)
    with pytest.raises(FileNotFoundError):
        CTSegmenter.load(tmp_path / "missing.keras")
