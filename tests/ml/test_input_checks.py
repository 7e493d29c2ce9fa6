"""The input checks' one contract (ml.serving.checks): each loads from its file and
answers one verdict, and the bundled ones judge the fixtures as their own methods do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ml.ct.modality import gray_of_path
from ml.data.preprocess import open_image, to_unit_gray
from ml.serving.checks import INPUT_CHECKS, InputCheck, load_input_check
from tests.conftest import IMAGES
from tests.ct_uploads import CT_FIXTURES

BUNDLED = Path(__file__).resolve().parents[2] / "ml" / "bundled"
FILES = {
    "ood_gate": BUNDLED / "ood-gate.npz",
    "view_check": BUNDLED / "view-check.npz",
    "modality_check": BUNDLED / "ct-modality.npz",
}
FRONTAL = IMAGES / "2168a917.jpg"
LATERAL = sorted((IMAGES / "lateral").glob("*.jpg"))[0]
CT_SLICE = sorted((CT_FIXTURES / "zenodo" / "images").glob("*.jpg"))[0]


def _gray(path: Path) -> np.ndarray:
    with open_image(path) as image:
        return to_unit_gray(image)


def test_every_kind_loads_through_one_function_and_satisfies_the_protocol():
    assert set(INPUT_CHECKS) == set(FILES)
    for kind, path in FILES.items():
        check = load_input_check(kind, str(path))
        assert isinstance(check, InputCheck), kind
        assert load_input_check(kind, str(path)) is check  # read once per process
        assert check.verdict(_gray(FRONTAL)) is None, kind  # a frontal chest X-ray passes


def test_an_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="Unknown input check"):
        load_input_check("text_check", str(FILES["ood_gate"]))


def test_each_verdict_names_what_its_check_refuses():
    gate = load_input_check("ood_gate", str(FILES["ood_gate"]))
    assert gate.verdict(np.full((256, 256), 0.5, np.float32)) == "blank"
    assert gate.verdict(_gray(FRONTAL), colourful=1.0) == "colour"
    view = load_input_check("view_check", str(FILES["view_check"]))
    assert view.verdict(_gray(LATERAL)) == "lateral"
    modality = load_input_check("modality_check", str(FILES["modality_check"]))
    assert modality.verdict(gray_of_path(CT_SLICE)) == "ct slice"
    assert modality.verdict(_gray(LATERAL)) is None
