"""The lung segmentation model (ml/lungs): masks helpers, the bundled U-Net, training CLI."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageOps

from ml.lungs import masks
from tests.conftest import IMAGES, REPO_ROOT, fixture_manifest

FRONTAL_FIXTURES = [row["path"] for row in fixture_manifest()]


# --- masks.py (no TensorFlow) -------------------------------------------------------


def _two_lungs(shape=(100, 100)) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[20:80, 15:45] = True
    mask[20:75, 55:85] = True
    return mask


@pytest.mark.slow
def test_lungs_package_and_masks_do_not_import_tensorflow():
    code = (
        "import sys, ml.lungs, ml.lungs.masks; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT)


def test_mass_in_mask_is_the_share_of_positive_mass_inside():
    heatmap = np.zeros((4, 4))
    heatmap[0, 0] = 3.0  # inside
    heatmap[3, 3] = 1.0  # outside
    heatmap[2, 2] = -5.0  # negative values carry no mass
    heatmap[1, 1] = np.nan  # NaN counts as 0
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True
    assert masks.mass_in_mask(heatmap, mask) == pytest.approx(0.75)


def test_mass_in_mask_resizes_the_mask_to_the_heatmap_nearest():
    heatmap = np.ones((8, 8))
    mask = np.zeros((100, 100), dtype=bool)
    mask[:, :50] = True  # left half, at a finer resolution than the map
    assert masks.mass_in_mask(heatmap, mask) == pytest.approx(0.5)


def test_mass_in_mask_of_an_all_zero_map_is_zero():
    assert masks.mass_in_mask(np.zeros((5, 5)), np.ones((5, 5), bool)) == 0.0
    assert masks.mass_in_mask(np.full((5, 5), np.nan), np.ones((5, 5), bool)) == 0.0


def test_postprocess_keeps_the_two_largest_components_and_fills_holes():
    prob = _two_lungs().astype(np.float32) * 0.9
    prob[40:45, 25:30] = 0.1  # a hole inside the left lung
    prob[2:5, 2:5] = 0.95  # a small island
    prob[90:95, 90:98] = 0.8  # another one
    mask = masks.postprocess(prob)
    assert len(masks.components(mask)) == 2
    assert mask[42, 27]  # hole filled
    assert not mask[3, 3]
    assert not mask[92, 95]
    assert mask.sum() == _two_lungs().sum()


def test_postprocess_of_an_empty_map_is_empty():
    assert not masks.postprocess(np.zeros((16, 16))).any()


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda m: m, ""),
        (lambda m: np.zeros_like(m), "area too small"),
        (lambda m: np.ones_like(m), "area too large"),
        (lambda m: m & (np.arange(100)[None, :] < 50), "one region"),
        (
            lambda m: m & ~((np.arange(100)[None, :] > 50) & (np.arange(100)[:, None] > 30)),
            "left and right very different",
        ),
        (lambda m: m.T, "not side by side"),
    ],
)
def test_plausibility_says_why_a_mask_is_not_a_pair_of_lungs(build, reason):
    found, why = masks.plausibility(build(_two_lungs()))
    assert (found, why) == (reason == "", reason)


def test_lung_bbox_is_exclusive_and_margin_is_clipped():
    mask = _two_lungs()
    assert masks.lung_bbox(mask) == (20, 15, 80, 85)
    assert masks.lung_bbox(mask, margin=0.5) == (0, 0, 100, 100)
    assert masks.lung_bbox(np.zeros((5, 5), bool)) is None


def test_letterbox_matches_the_classifier_preprocessing():
    from ml.data.preprocess import PreprocessSpec, open_image, preprocess, to_unit_gray

    image = open_image(IMAGES / "person1003_virus_1685.jpeg")  # landscape: bars top/bottom
    x, box = masks.letterbox(to_unit_gray(image), 128)
    np.testing.assert_array_equal(x, preprocess(image, PreprocessSpec(input_size=128))[..., 0])
    top, left, bottom, right = box.content_box()
    assert (left, right) == (0, 128)
    assert 0 < top < bottom < 128
    assert masks.unletterbox(x, box).shape == (image.height, image.width)


# --- the bundled model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def segmenter():
    from ml.lungs.segmenter import LungSegmenter

    return LungSegmenter.load()


def _open(name: str) -> Image.Image:
    from ml.data.preprocess import open_image

    return open_image(IMAGES / name)


@pytest.mark.slow
def test_bundled_card_records_the_artifact_and_held_out_dice(segmenter):
    from ml.lungs.segmenter import BUNDLED_LUNG_MODEL
    from ml.models.artifacts import read_card, sha256_file

    card = read_card(BUNDLED_LUNG_MODEL)
    assert card["sha256"] == sha256_file(BUNDLED_LUNG_MODEL)
    assert segmenter.version == f"lung-unet@{card['sha256'][:12]}"
    covid = card["metrics"]["per_source"]["covid-chestxray"]
    low, high = covid["dice"]["ci95"]
    assert low <= covid["dice"]["mean"] <= high
    assert covid["dice"]["mean"] > covid["heuristic"]["dice"]["mean"]
    report = BUNDLED_LUNG_MODEL.parent / card["report"]["dir"]
    assert (report / "report.md").is_file()
    for sheet in card["report"]["contact_sheets"].values():
        assert Image.open(report / sheet).size[0] > 0


def test_load_refuses_an_artifact_with_another_sha256():
    from ml.lungs.segmenter import LungSegmenter
    from ml.models.artifacts import ArtifactIntegrityError

    with pytest.raises(ArtifactIntegrityError):
        LungSegmenter.load(expected_sha256="0" * 64)


@pytest.mark.parametrize("name", FRONTAL_FIXTURES)
def test_lungs_are_found_on_real_frontal_films(segmenter, name):
    image = _open(name)
    result = segmenter.segment(image)
    assert result.found, result.message
    assert result.message == ""
    assert result.mask.shape == (image.height, image.width)
    assert result.mask.dtype == bool
    # 5f619d7e.jpg is collimated to the chest: its lungs cover 53 % of the film.
    assert 0.08 < result.area_fraction < masks.MAX_AREA
    top, left, bottom, right = result.bbox
    assert 0 <= top < bottom <= image.height
    assert 0 <= left < right <= image.width
    assert len(masks.components(result.mask)) == 2


def test_segment_is_deterministic_and_matches_segment_gray(segmenter):
    from ml.data.preprocess import to_unit_gray

    image = _open("2168a917.jpg")
    first = segmenter.segment(image)
    again = segmenter.segment(image)
    second = segmenter.segment_gray(to_unit_gray(image))
    for other in (again, second):
        np.testing.assert_array_equal(first.mask, other.mask)
        assert (other.bbox, other.area_fraction, other.found, other.message) == (
            first.bbox,
            first.area_fraction,
            first.found,
            first.message,
        )
        assert other.version == first.version
    assert first.found
    assert first.mask.any()
    assert first.version.startswith("lung-unet@")


def test_probability_gives_one_map_per_letterboxed_input(segmenter):
    batch = np.random.default_rng(0).random((3, segmenter.size, segmenter.size, 1))
    prob = segmenter.probability(batch.astype(np.float32))
    assert prob.shape == (3, segmenter.size, segmenter.size)
    assert prob.min() >= 0.0
    assert prob.max() <= 1.0
    with pytest.raises(ValueError, match="batch of shape"):
        segmenter.probability(np.zeros((1, 64, 64, 1), np.float32))


def test_outline_and_mask_pngs_have_the_image_size(segmenter):
    image = _open("00001280_004.jpg")
    result = segmenter.segment(image)
    outline = Image.open(io.BytesIO(result.outline_png()))
    assert outline.mode == "RGBA"
    assert outline.size == image.size
    alpha = np.asarray(outline)[..., 3]
    drawn = alpha > 0
    assert drawn.any()
    assert (drawn <= result.mask).all()
    assert drawn.sum() < 0.1 * result.mask.sum()  # a thin line, not a filled region
    mask = Image.open(io.BytesIO(result.mask_png()))
    assert mask.mode == "L"
    assert mask.size == image.size
    np.testing.assert_array_equal(np.asarray(mask) == 255, result.mask)


# --- bad input: an answer, not a crash ------------------------------------------------


def _assert_not_found(result, reason: str | None = None):
    from ml.lungs.segmenter import LUNGS_NOT_FOUND

    assert not result.found
    assert result.bbox is None
    assert result.message.startswith(LUNGS_NOT_FOUND + " (")
    if reason is not None:
        assert result.message.endswith(f"({reason})")


@pytest.mark.parametrize("value", [0, 128, 255])
def test_blank_image_is_not_a_chest(segmenter, value):
    result = segmenter.segment(Image.new("L", (300, 200), value))
    _assert_not_found(result, "blank image")
    assert result.mask.shape == (200, 300)
    assert not result.mask.any()


BAD_INPUT = {
    "turned 90 degrees": lambda im: im.rotate(90, expand=True),
    "turned 270 degrees": lambda im: im.rotate(270, expand=True),
    "inverted": lambda im: ImageOps.invert(im.convert("L")),
    "upside down": lambda im: im.rotate(180),
    "left half only": lambda im: im.crop((0, 0, im.width // 2, im.height)),
    # Mild changes: still a frontal chest film with both lungs in view.
    "tilted 10 degrees": lambda im: im.rotate(10),
    "10 % cropped off each side": lambda im: im.crop(
        (im.width // 10, im.height // 10, im.width - im.width // 10, im.height - im.height // 10)
    ),
    "top half only": lambda im: im.crop((0, 0, im.width, im.height // 2)),
}


@pytest.fixture(scope="module")
def bad_input_outcomes(segmenter) -> dict[str, list]:
    """Every fixture film made unfit in each way: the LungResults, per kind."""
    films = [_open(name) for name in FRONTAL_FIXTURES]
    return {
        kind: [segmenter.segment(transform(film)) for film in films]
        for kind, transform in BAD_INPUT.items()
    }


# What the bundled model does with the 18 fixture films made unfit (measured, not hoped
# for; ml/bundled/lungs-report/report.md has the same on 110 held-out and unmasked films).
# It was trained on upright films only: turned films and films with one lung are refused
# by the plausibility check (the lungs are stacked, one region, or very different), but
# an inverted film is refused only sometimes (10 of these 18, 26 of 110 in the report: the
# U-Net outlines dark regions of the inverted film, often as two plausible fields), and an
# upside-down film shows two plausible lung-shaped fields and is accepted. A model trained with such
# films as negatives (`lungs train --negatives 0.15`) refused all of them in a trial run.
@pytest.mark.parametrize(
    ("kind", "least_refused"),
    [
        ("turned 90 degrees", 17),
        ("turned 270 degrees", 18),
        ("left half only", 18),
        ("inverted", 10),
    ],
)
@pytest.mark.slow
def test_films_that_are_not_upright_frontal_chests_are_refused(
    bad_input_outcomes, kind, least_refused
):
    refused = [r for r in bad_input_outcomes[kind] if not r.found]
    for result in refused:
        _assert_not_found(result)
    assert len(refused) >= least_refused, [r.message for r in bad_input_outcomes[kind]]


@pytest.mark.slow
def test_upside_down_films_are_not_recognised_by_the_bundled_model(bad_input_outcomes):
    # A known limitation (see above): the lung fields of a film turned by 180 degrees
    # are two side-by-side regions of plausible size, so the checks accept them.
    assert all(r.found for r in bad_input_outcomes["upside down"])


@pytest.mark.parametrize(
    "kind", ["tilted 10 degrees", "10 % cropped off each side", "top half only"]
)
@pytest.mark.slow
def test_mildly_tilted_or_cropped_films_still_show_both_lungs(bad_input_outcomes, kind):
    # A film cropped to its top half still shows two lung fields side by side: the
    # segmenter finds them (correctly: it is a frontal chest film, only partial).
    assert all(r.found for r in bad_input_outcomes[kind])


def test_noise_and_odd_shapes_do_not_crash(segmenter):
    rng = np.random.default_rng(0)
    noise = rng.random((257, 91)).astype(np.float32)
    result = segmenter.segment_gray(noise)
    assert result.mask.shape == (257, 91)
    _assert_not_found(result)
    with pytest.raises(ValueError, match="2-D grayscale"):
        segmenter.segment_gray(np.zeros((4, 4), np.float32))


# --- training through the CLI ---------------------------------------------------------


def _tiny_covid_layout(root):
    """A covid-chestxray layout of 8 fixture films with ellipse 'lung masks'."""
    from ml.lungs.heuristic import prior_mask

    names = [row["path"] for row in fixture_manifest()][:8]
    (root / "images").mkdir(parents=True)
    mask_dir = root / "annotations" / "lungVAE-masks"
    mask_dir.mkdir(parents=True)
    with (root / "metadata.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patientid", "finding", "view", "modality", "folder", "filename"])
        for i, name in enumerate(names):
            image = Image.open(IMAGES / name).convert("L")
            image.save(root / "images" / name)
            ellipses = prior_mask((image.height, image.width), (0, image.height, 0, image.width))
            Image.fromarray(ellipses.astype(np.uint8) * 255).save(
                mask_dir / f"{name.rsplit('.', 1)[0]}_mask.png"
            )
            writer.writerow([str(100 + i), "COVID-19", "PA", "X-ray", "images", name])


@pytest.mark.slow
def test_lungs_train_cli_writes_a_loadable_model_card_and_report(tmp_path, capsys):
    from ml.cli import main
    from ml.lungs.segmenter import LungSegmenter
    from ml.models.artifacts import read_card

    covid = tmp_path / "covid"
    _tiny_covid_layout(covid)
    out = tmp_path / "out"
    code = main(
        [
            "lungs", "train", "--covid", str(covid), "--out", str(out), "--splits", "none",
            "--cache", str(tmp_path / "cache"), "--epochs", "1", "--input-size", "32",
            "--width", "4", "--repeats", "1", "--bootstrap", "20", "--quiet",
        ]
    )  # fmt: skip
    assert code == 0
    artifact = out / "lung-unet.keras"
    card = read_card(artifact)
    assert card["preprocessing"]["input_size"] == 32
    assert card["training"]["epochs_run"] == 1
    split = card["data"]["split"]
    assert sum(split["counts"].values()) == 8
    assert split["counts"]["test"] >= 1
    covid_metrics = card["metrics"]["per_source"]["covid-chestxray"]
    assert 0.0 <= covid_metrics["dice"]["mean"] <= 1.0
    report = out / "lungs-report"
    assert "Held-out patients" in (report / "report.md").read_text()
    assert Image.open(report / "sheet-covid-chestxray.png").size[0] > 0
    assert json.loads((report / "per-image.json").read_text())
    assert list((tmp_path / "cache").glob("lungs-*.npz"))
    image = _open("2168a917.jpg")
    result = LungSegmenter.load(artifact).segment(image)
    assert result.mask.shape == (image.height, image.width)
    assert "Dice" in capsys.readouterr().out


# --- against the shared data ------------------------------------------------------------


@pytest.mark.shared_data
@pytest.mark.slow  # the lung model on the shared data's held-out masks
def test_held_out_covid_masks_reach_dice_0_85(shared_datasets, segmenter):
    from ml.data.preprocess import open_image, to_unit_gray
    from ml.lungs.data import masked_images, reference_mask
    from ml.lungs.segmenter import BUNDLED_LUNG_MODEL

    items = masked_images(
        shared_datasets / "covid-chestxray",
        splits_csv=BUNDLED_LUNG_MODEL.parent / "splits.csv",
    )
    held_out = [i for i in items if i.split == "test"][:6]
    assert len(held_out) == 6
    scores = []
    for item in held_out:
        gray = to_unit_gray(open_image(item.image))
        scores.append(
            masks.dice(segmenter.segment_gray(gray).mask, reference_mask(item, gray.shape))
        )
    assert np.mean(scores) >= 0.85, scores
