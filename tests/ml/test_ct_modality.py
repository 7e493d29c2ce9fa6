"""The CT-vs-X-ray modality check (ml.ct.modality), measured on real images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ml.ct.modality import (
    CT_LOOKS_LIKE_XRAY,
    NOT_A_CT_SLICE,
    XRAY_LOOKS_LIKE_CT,
    ModalityCheck,
    _threshold,
    dihedral,
    features,
    gray_of_path,
    wilson_interval,
)
from ml.serving.ood import OodGate
from tests.conftest import IMAGES, fixture_manifest
from tests.ct_uploads import CT_FIXTURES, abdomen_like_slice

CHECK = Path(__file__).resolve().parents[2] / "ml" / "bundled" / "ct-modality.npz"
XRAY_GATE = CHECK.parent / "ood-gate.npz"
CT_SLICES = sorted((CT_FIXTURES / "zenodo" / "images").glob("*.jpg")) + sorted(
    (CT_FIXTURES / "medseg" / "images").glob("*.jpg")
)
XRAY_DATA = ("covid-chestxray", "pediatric-pneumonia", "adult-normal")


@pytest.fixture(scope="module")
def check() -> ModalityCheck:
    return ModalityCheck.load(CHECK)


def test_the_bundled_card_records_its_split_threshold_and_held_out_figures(check):
    card = check.card
    assert card["threshold"] == pytest.approx(check.threshold)
    fitted = card["fitted_on"]
    groups = fitted["zenodo_volume_groups"]
    assert not set(groups["train"]) & (set(groups["val"]) | set(groups["test"]))
    assert fitted["xray_train_images"] == 1002
    held_out = card["held_out"]
    assert held_out["xray_test"]["total"] == 201
    assert held_out["xray_test"]["accepted"] / 201 >= 0.99
    assert held_out["ct_held_out"]["total"] == 283  # zenodo test groups + MedSeg test
    assert held_out["ct_held_out"]["accepted"] / 283 >= 0.98
    assert check.gate is not None
    assert card["gate"]["threshold"] == pytest.approx(check.gate.threshold)


def test_every_ct_fixture_slice_is_a_ct_slice_and_no_xray_fixture_is(check):
    for path in CT_SLICES:
        gray = gray_of_path(path)
        assert check.looks_like_ct_slice(gray), path.name
        assert check.problem(gray, "ct") is None, path.name
    for row in fixture_manifest():
        gray = gray_of_path(IMAGES / row["path"])
        assert not check.looks_like_ct_slice(gray), row["path"]
        assert check.problem(gray, "xray") is None, row["path"]
    for path in sorted((IMAGES / "lateral").glob("*.jpg")):
        assert not check.looks_like_ct_slice(gray_of_path(path)), path.name


def test_wrong_marks_get_the_messages_that_say_what_to_do(check):
    ct = gray_of_path(CT_SLICES[0])
    xray = gray_of_path(IMAGES / "2168a917.jpg")
    gate = OodGate.load(XRAY_GATE)
    assert check.problem(ct, "xray") == XRAY_LOOKS_LIKE_CT
    assert check.problem(xray, "ct", xray_gate=gate) == CT_LOOKS_LIKE_XRAY
    assert check.problem(xray, "ct") == CT_LOOKS_LIKE_XRAY  # without the gate: the score
    noise = np.random.default_rng(0).random((200, 200)).astype(np.float32)
    assert check.problem(noise, "ct", xray_gate=gate) == NOT_A_CT_SLICE
    # A colour photograph is never a CT slice (the appearance model's colour limit).
    assert not check.looks_like_ct_slice(ct, colourful=0.5)


def test_rotations_and_mirrors_of_a_slice_are_slices_too(check):
    gray = gray_of_path(CT_SLICES[-1])
    assert all(check.looks_like_ct_slice(np.ascontiguousarray(view)) for view in dihedral(gray))


def test_an_abdomen_like_slice_is_still_a_ct_slice(check):
    """No lungs is the segmenter's flag, not a modality refusal."""
    assert check.looks_like_ct_slice(abdomen_like_slice() / 255.0)


def test_blank_and_nan_images_get_finite_features_and_are_no_ct_slices(check):
    for gray in (np.zeros((100, 120), np.float32), np.full((80, 80), np.nan, np.float32)):
        assert np.all(np.isfinite(features(gray)))
        assert np.isfinite(check.score(gray))
    assert not check.looks_like_ct_slice(np.zeros((100, 120), np.float32))


def test_save_and_load_keep_the_scores_and_the_appearance_model(check, tmp_path):
    check.save(tmp_path / "copy.npz")
    again = ModalityCheck.load(tmp_path / "copy.npz")
    gray = gray_of_path(CT_SLICES[0])
    assert again.score(gray) == pytest.approx(check.score(gray))
    assert again.gate is not None
    assert again.gate.score(gray) == pytest.approx(check.gate.score(gray))
    assert again.card == json.loads(CHECK.with_suffix(".json").read_text())


def test_a_check_for_other_features_is_refused_with_a_clear_error(check, tmp_path):
    short = ModalityCheck(check.mean[:10], check.scale[:10], check.weights[:10], 0.0, 0.0, {})
    short.save(tmp_path / "old.npz")
    with pytest.raises(ValueError, match="refit with python -m ml ct-modality fit"):
        ModalityCheck.load(tmp_path / "old.npz")


def test_the_threshold_sits_in_the_widest_gap_with_fewest_errors():
    assert _threshold(np.array([3.0, 4.0]), np.array([-1.0, 0.0])) == (1.5, 0, 3.0)
    # One CT outlier among the X-rays: one error whatever the threshold; widest gap.
    assert _threshold(np.array([-3.0, 4.0, 5.0]), np.array([-1.0, 0.0, 1.0])) == (2.5, 1, 3.0)


def test_wilson_intervals_bracket_the_rate():
    low, high = wilson_interval(201, 201)
    assert high == pytest.approx(1.0)
    assert low == pytest.approx(0.9812, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(47, 48)
    assert low < 47 / 48 < high


def test_the_web_process_can_use_the_check_without_scikit_learn_or_tensorflow():
    import subprocess

    code = (
        "import sys; from pathlib import Path; import numpy as np;"
        "from ml.ct.modality import ModalityCheck;"
        f"c = ModalityCheck.load(Path({str(CHECK)!r}));"
        "c.looks_like_ct_slice(np.random.rand(80, 90));"
        "bad = [m for m in ('sklearn', 'tensorflow', 'keras', 'django') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.shared_data
@pytest.mark.slow
def test_ct_modality_eval_measures_the_shipped_check_on_the_held_out_images(shared_datasets, check):
    from tests.conftest import ml_cli

    result = ml_cli(
        "ct-modality",
        "evaluate",
        "--ct",
        shared_datasets / "ct-covid-seg",
        "--data",
        *[shared_datasets / name for name in XRAY_DATA],
        "--json",
        "--quiet",
    )
    assert result.returncode == 0, result.stderr
    measured = json.loads(result.stdout)
    for key in ("ct_zenodo_test", "ct_medseg_test", "xray_test", "non_chest_packaged"):
        assert measured[key]["accepted"] == check.card["measured"][key]["accepted"], key
    assert measured["held_out"] == check.card["held_out"]
