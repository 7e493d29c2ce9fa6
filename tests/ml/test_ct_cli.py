"""``python -m ml ct train|evaluate|predict`` on the committed fixtures (tests/fixtures/ct)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tensorflow")

from tests.conftest import FIXTURES, ml_cli

pytestmark = pytest.mark.slow

CT = FIXTURES / "ct"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("ct-train")
    result = ml_cli(
        "ct", "train", "--zenodo", CT / "zenodo", "--medseg", CT / "medseg", "--out", out,
        "--epochs", 1, "--width", 4, "--bootstrap", 50, "--cache", out / "cache", "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return out, result


def test_train_writes_the_model_card_and_report(trained):
    out, result = trained
    for name in ("ct-seg.keras", "ct-seg.card.json", "report/report.md", "report/metrics.json",
                 "report/sheet-zenodo.png", "report/sheet-medseg.png"):  # fmt: skip
        assert (out / name).is_file(), name
    assert list((out / "cache").glob("ct-*.npz"))  # the preprocessed arrays were cached
    card = json.loads((out / "ct-seg.card.json").read_text())
    split = card["data"]["split"]["zenodo"]
    groups = [g for s in ("train", "val", "test") for g in split[s]["volume_groups"]]
    assert sorted(groups) == ["v03", "v09", "v16"]  # each group in exactly one split
    assert card["postprocessing"]["infection_threshold"] in (0.3, 0.4, 0.5, 0.6, 0.7)
    assert card["training"]["epochs_run"] == 1
    metrics = card["metrics"]
    assert set(metrics["per_set"]) == {"zenodo", "medseg"}
    lungs = metrics["per_set"]["zenodo"]["lungs"]["dice"]
    assert 0.0 <= lungs["mean"] <= 1.0
    assert set(metrics["targets"]) == {"zenodo_lung_dice", "medseg_infection_dice"}
    report = (out / "report" / "report.md").read_text()
    assert "zenodo_lung_dice >= 0.95" in report
    assert "Contact sheets" in report
    assert "target zenodo_lung_dice >= 0.95" in result.stdout
    sheet = Image.open(out / "report" / "sheet-medseg.png")
    assert sheet.size[0] > 200


def test_evaluate_rewrites_the_report_with_the_cross_set_figure(trained, tmp_path):
    out, _ = trained
    result = ml_cli(
        "ct", "evaluate", "--model", out / "ct-seg.keras", "--zenodo", CT / "zenodo",
        "--medseg", CT / "medseg", "--out", tmp_path / "eval", "--bootstrap", 50,
        "--cross-model", out / "ct-seg.keras",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["metrics"]
    cross = metrics["cross_set"]["medseg_test_infection"]
    assert cross["slices"] == 3
    assert "Cross-set" in (tmp_path / "eval" / "report.md").read_text()
    per_slice = json.loads((tmp_path / "eval" / "per-slice.json").read_text())
    assert len(per_slice["zenodo"]) == 3
    assert len(per_slice["medseg"]) == 3


def test_predict_writes_masks_and_prints_the_percentage(trained, tmp_path):
    out, _ = trained
    image = CT / "medseg" / "images" / "slice-062.jpg"
    result = ml_cli(
        "ct", "predict", "--model", out / "ct-seg.keras", image, "--out", tmp_path, "--json"
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[0]["image"] == str(image)
    assert {"percent_affected", "lungs_found", "message", "version"} <= set(rows[0])
    for kind in ("lungs", "infection", "ggo", "consolidation", "lung_outline"):
        mask = Image.open(io.BytesIO((tmp_path / f"slice-062.{kind}.png").read_bytes()))
        assert mask.size == (247, 158)
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}
    text = ml_cli("ct", "predict", "--model", out / "ct-seg.keras", image)
    assert text.returncode == 0
    assert "slice-062.jpg: " in text.stdout
    assert ("of the lung affected" in text.stdout) or ("no lung tissue found" in text.stdout)


def test_predict_and_train_refuse_bad_input_with_a_message(trained, tmp_path):
    out, _ = trained
    missing = ml_cli("ct", "predict", "--model", out / "ct-seg.keras", tmp_path / "nope.png")
    assert missing.returncode == 2
    assert "not found" in missing.stderr
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    bad = ml_cli(
        "ct", "predict", "--model", out / "ct-seg.keras", not_image, "--out", tmp_path / "o"
    )
    assert bad.returncode == 2
    assert "not an image" in bad.stderr
    assert not list((tmp_path / "o").glob("*.png"))
    no_data = ml_cli(
        "ct", "train", "--zenodo", tmp_path, "--medseg", tmp_path, "--out", tmp_path / "m"
    )
    assert no_data.returncode == 2
    assert "slices.csv" in no_data.stderr
    assert not (tmp_path / "m").exists()
