"""The out-of-distribution gate (ml.serving.ood) measured on real images."""

from pathlib import Path

import numpy as np
import pytest

from ml.data.preprocess import to_unit_gray
from ml.serving.ood import OodGate, chest_xray_paths, features_of_paths, packaged_non_chest_images

GATE = Path(__file__).resolve().parents[2] / "ml" / "bundled" / "ood-gate.npz"


def test_bundled_gate_card_records_its_threshold_and_measured_figures():
    gate = OodGate.load(GATE)
    assert gate.card["threshold"] == pytest.approx(gate.threshold)
    assert gate.card["fitted_on"] == {
        "train_images": 1002,
        "val_images": 200,
        "splits_csv": "splits.csv",
        "data": ["covid-chestxray", "pediatric-pneumonia", "adult-normal"],
    }
    assert gate.card["measured"]["chest_test_accepted"] == [201, 201]


def test_blank_noise_and_nan_images_are_refused():
    gate = OodGate.load(GATE)
    rng = np.random.default_rng(0)
    assert gate.verdict(np.full((300, 300), 0.4, np.float32)) == "blank"
    assert gate.verdict(rng.random((300, 300)).astype(np.float32)) == "appearance"
    assert gate.verdict_from(float("nan"), 0.0, 0.2) == "appearance"


@pytest.mark.shared_data
@pytest.mark.slow
def test_gate_accepts_at_least_99_percent_of_test_split_chest_xrays(shared_datasets):
    gate = OodGate.load(GATE)
    dirs = [shared_datasets / n for n in ("covid-chestxray", "pediatric-pneumonia", "adult-normal")]
    paths = chest_xray_paths(dirs, GATE.parent / "splits.csv")["test"]
    assert len(paths) == 201
    feats, colour = features_of_paths(paths)
    accepted = gate.accepted(feats, colour)
    refused = [str(p) for p, ok in zip(paths, accepted, strict=True) if not ok]
    assert accepted.mean() >= 0.99, refused


@pytest.mark.slow
def test_gate_refuses_at_least_94_percent_of_packaged_non_chest_images():
    """Measured 35/37 (94.6%): the target of 95% is missed by one image (see README)."""
    from ml.serving.ood import colourful_fraction

    gate = OodGate.load(GATE)
    images = packaged_non_chest_images()
    refused = [n for n, im in images if gate.verdict(to_unit_gray(im), colourful_fraction(im))]
    assert len(refused) / len(images) >= 0.94


@pytest.mark.slow
def test_at_least_95_percent_of_packaged_non_chest_images_are_refused_as_uploaded():
    """As uploaded: a DICOM's header (Modality, Body Part, View Position) is read before
    the pixel gate. Measured 36/37 (97.3%); the one miss is scikit-image's photographed
    page. The pixel gate alone refuses 35/37 (the other pass is pydicom's CT slice)."""
    from ml.serving.ood import colourful_fraction, dicom_header_verdicts

    gate = OodGate.load(GATE)
    images = packaged_non_chest_images()
    headers = dicom_header_verdicts()
    assert "pydicom:CT_small.dcm (CT)" in headers
    refused = [
        name
        for name, image in images
        if name in headers or gate.verdict(to_unit_gray(image), colourful_fraction(image))
    ]
    assert len(images) == 37
    assert len(refused) / len(images) >= 0.95
