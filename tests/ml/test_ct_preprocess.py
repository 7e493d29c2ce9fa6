"""CT preprocessing (ml.ct.preprocess) and data splits (ml.ct.data): no TensorFlow."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ml.ct.data import (
    Augmentation,
    augment,
    build_arrays,
    medseg_samples,
    model_targets,
    read_gray,
    references,
    split_groups,
    zenodo_samples,
)
from ml.ct.preprocess import (
    CT_PREPROCESSING_VERSION,
    CTPreprocessing,
    frame_of,
    prepare_slice,
)
from tests.conftest import FIXTURES, REPO_ROOT

CT = FIXTURES / "ct"


def test_ct_package_preprocess_and_data_do_not_import_tensorflow():
    code = (
        "import sys, ml.ct, ml.ct.preprocess, ml.ct.data; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


@pytest.mark.parametrize("shape", [(158, 247), (300, 200), (256, 256), (510, 400), (40, 90)])
def test_prepare_slice_gives_the_model_square_and_frame_restores_the_size(shape):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, shape, dtype=np.uint8)
    x, frame = prepare_slice(gray)
    assert x.shape == (256, 256)
    assert x.dtype == np.float32
    assert x.min() >= 0.0
    assert x.max() <= 1.0
    assert (frame.height, frame.width) == shape
    for mask in (np.ones((256, 256), bool), np.ones((256, 256), np.float32)):
        back = frame.to_original(mask)
        assert back.shape == shape
        assert back.dtype == mask.dtype


def test_non_square_slices_are_padded_not_stretched():
    # A 100 x 200 slice: a bright square in its middle must stay a square in the input.
    gray = np.zeros((100, 200), np.uint8)
    gray[30:70, 80:120] = 255
    gray[0, 0] = 128  # not a two-valued image, so percentiles are not degenerate
    x, frame = prepare_slice(gray)
    assert frame.side == 200
    assert frame.top == 50
    assert frame.left == 0
    rows, cols = np.nonzero(x > 0.5)
    height, width = np.ptp(rows) + 1, np.ptp(cols) + 1
    assert abs(height - width) <= 1  # square stays square (stretching would double the height)
    assert abs(width - 40 * 256 / 200) <= 2
    # The padding (top and bottom quarters) is 0; the content box says where the slice is.
    assert x[:60].max() == 0.0
    assert x[-60:].max() == 0.0
    assert frame.content_box() == (64, 0, 192, 256)


def test_a_mask_goes_to_the_model_and_back_unchanged_in_place():
    mask = np.zeros((180, 300), bool)
    mask[40:120, 50:200] = True
    frame = frame_of(180, 300)
    there = frame.to_model(mask.astype(np.uint8)).astype(bool)
    back = frame.to_original(there)
    assert back.shape == mask.shape
    assert (back == mask).mean() > 0.99


def test_percentile_scaling_ignores_the_input_scale():
    gray = read_gray(CT / "medseg" / "images" / "slice-062.jpg")
    as_uint8, _ = prepare_slice(gray)
    as_unit, _ = prepare_slice(gray.astype(np.float32) / 255.0)
    as_hu, _ = prepare_slice(gray.astype(np.float32) * 8.0 - 1024.0)
    np.testing.assert_allclose(as_uint8, as_unit, atol=1e-5)
    np.testing.assert_allclose(as_uint8, as_hu, atol=1e-5)


def test_clahe_normalisation_is_recorded_and_changes_the_input():
    gray = read_gray(CT / "zenodo" / "images" / "0313.jpg")
    spec = CTPreprocessing(normalise="clahe")
    plain, _ = prepare_slice(gray)
    equalised, _ = prepare_slice(gray, spec)
    assert not np.allclose(plain, equalised)
    assert CTPreprocessing.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["version"] == CT_PREPROCESSING_VERSION


def test_a_blank_slice_gives_a_blank_input():
    x, _ = prepare_slice(np.full((64, 80), 37, np.uint8))
    assert x.max() == 0.0


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.zeros((64, 64, 3), np.uint8), "2-D grayscale"),
        (np.zeros((8, 300), np.uint8), "at least 16x16"),
        (np.zeros((4, 64, 64), np.uint8), "2-D grayscale"),
        (np.array([["a"] * 20] * 20), "numeric"),
    ],
)
def test_prepare_slice_refuses_what_is_not_a_slice(array, message):
    with pytest.raises(ValueError, match=message):
        prepare_slice(array)


def test_an_unknown_preprocessing_version_is_refused():
    with pytest.raises(ValueError, match="version 2"):
        CTPreprocessing.from_dict({"version": 2})


def test_zenodo_split_keeps_each_volume_group_in_one_split():
    samples = zenodo_samples(CT / "zenodo", seed=0)
    by_group: dict[str, set[str]] = {}
    for s in samples:
        by_group.setdefault(s.group, set()).add(s.split)
    assert all(len(splits) == 1 for splits in by_group.values())
    assert {next(iter(v)) for v in by_group.values()} == {"train", "val", "test"}


def test_split_groups_fills_test_and_validation_to_their_share():
    sizes = {f"v{i:02d}": n for i, n in enumerate([80, 60, 59, 57, 58, 35, 47, 91, 56, 83])}
    assignment = split_groups(sizes, seed=3, test_fraction=0.2, val_fraction=0.15)
    total = sum(sizes.values())
    test = sum(n for g, n in sizes.items() if assignment[g] == "test")
    val = sum(n for g, n in sizes.items() if assignment[g] == "val")
    assert test >= 0.2 * total
    assert val >= 0.15 * total
    assert any(split == "train" for split in assignment.values())
    assert split_groups(sizes, seed=3) == assignment  # seeded
    with pytest.raises(ValueError, match="at least 3 volume groups"):
        split_groups({"v01": 5, "v02": 5}, seed=0)


def test_medseg_keeps_its_test_split_and_carves_validation_from_train():
    samples = medseg_samples(CT / "medseg", seed=0)
    assert [s.split for s in samples].count("test") == 3
    assert [s.split for s in samples].count("val") == 1
    ref = references(samples[0])
    assert ref.lungs is None
    assert ref.ggo is not None
    assert ref.consolidation is not None
    np.testing.assert_array_equal(ref.infection, ref.ggo | ref.consolidation)


def test_arrays_mark_which_labels_each_slice_has():
    samples = zenodo_samples(CT / "zenodo")[:2] + medseg_samples(CT / "medseg")[:2]
    arrays = build_arrays(samples, CTPreprocessing())
    assert arrays.has_lungs.tolist() == [True, True, False, False]
    assert arrays.has_type.tolist() == [False, False, True, True]
    targets = model_targets(arrays)
    assert targets["lungs"].shape == (4, 256, 256, 2)
    assert targets["lesion_type"].shape == (4, 256, 256, 4)
    assert targets["lungs"][2:, ..., 1].max() == 0  # MedSeg: lungs not labelled
    assert targets["lesion_type"][:2, ..., 3].max() == 0  # zenodo: type not labelled
    assert targets["infection"][..., 1].min() == 1  # infection labelled everywhere
    # One-hot type and infection agree on MedSeg slices.
    infected = targets["lesion_type"][2:, ..., 1:3].sum(-1)
    np.testing.assert_array_equal(infected, targets["infection"][2:, ..., 0])


def test_augmentation_moves_image_and_labels_together():
    rng = np.random.default_rng(0)
    x = np.zeros((64, 64), np.float32)
    x[10:30, 5:20] = 1.0
    labels = np.zeros((64, 64, 3), np.uint8)
    labels[10:30, 5:20] = [1, 1, 2]
    for _ in range(10):
        image, moved = augment(x, labels, rng, Augmentation(contrast=0.0, gamma=0.0, noise=0.0))
        assert set(np.unique(moved[..., 2]).tolist()) <= {0, 2}  # labels stay labels
        bright = image > 0.5
        assert (bright == (moved[..., 0] == 1)).mean() > 0.97
