"""The frontal-vs-lateral view check (ml.serving.viewcheck), measured on real images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ml.data.preprocess import open_image, to_unit_gray
from ml.serving.viewcheck import (
    LateralView,
    ViewCheck,
    features,
    fit_from_shared_data,
    held_out_split,
    split_by_patient,
)
from tests.conftest import IMAGES, fixture_manifest

CHECK = Path(__file__).resolve().parents[2] / "ml" / "bundled" / "view-check.npz"
LATERAL_FIXTURES = sorted((IMAGES / "lateral").glob("*.jpg"))
FRONTAL_DATA = ("covid-chestxray", "pediatric-pneumonia", "adult-normal")


def _gray(path: Path) -> np.ndarray:
    with open_image(path) as image:
        return to_unit_gray(image)


def test_bundled_card_records_the_lateral_split_and_the_measured_figures():
    check = ViewCheck.load(CHECK)
    card = check.card
    assert card["threshold"] == pytest.approx(check.threshold)
    fitted = card["fitted_on"]
    # 42 real lateral views of 35 patients: half the patients to fit, half held out.
    assert fitted["lateral_views_total"] == 42
    assert fitted["lateral_patients_total"] == 35
    assert fitted["lateral_fit_images"] + fitted["lateral_held_out_images"] == 42
    assert fitted["lateral_fit_patients"] + fitted["lateral_held_out_patients"] == 35
    assert len(fitted["lateral_held_out_files"]) == fitted["lateral_held_out_images"]
    measured = card["measured"]
    accepted, total = measured["frontal_test_accepted"]
    assert total == 201
    assert accepted / total >= 0.99
    refused, held_out = measured["lateral_held_out_refused"]
    assert held_out == fitted["lateral_held_out_images"]
    assert refused / held_out >= 0.9


def test_the_committed_lateral_fixtures_were_held_out_and_are_refused():
    check = ViewCheck.load(CHECK)
    held_out = set(check.card["fitted_on"]["lateral_held_out_files"])
    assert len(LATERAL_FIXTURES) == 2
    for path in LATERAL_FIXTURES:
        assert path.name in held_out
        assert check.is_lateral(_gray(path)), path.name


def test_every_frontal_fixture_is_accepted():
    check = ViewCheck.load(CHECK)
    scores = {row["path"]: check.score(_gray(IMAGES / row["path"])) for row in fixture_manifest()}
    assert len(scores) == 18
    assert all(score <= check.threshold for score in scores.values()), scores


def test_mirrored_lateral_is_still_refused():
    """Patients face either way on a lateral film; the check was fitted on both."""
    check = ViewCheck.load(CHECK)
    for path in LATERAL_FIXTURES:
        assert check.is_lateral(_gray(path)[:, ::-1]), path.name


def test_blank_and_nan_images_get_a_finite_score():
    """Blank images are the OOD gate's to refuse (it runs first, "blank"); this check
    must still give a number, not NaN or an exception, for them."""
    check = ViewCheck.load(CHECK)
    assert np.isfinite(check.score(np.full((200, 300), 0.5, np.float32)))
    assert np.isfinite(check.score(np.full((64, 64), np.nan, np.float32)))


def test_split_by_patient_puts_no_patient_in_both_halves():
    views = [LateralView(Path(f"{i}.jpg"), f"p{i // 2}", "") for i in range(20)]
    fitting, held_out = split_by_patient(views, seed=3)
    assert {v.patient for v in fitting}.isdisjoint({v.patient for v in held_out})
    assert len(fitting) + len(held_out) == 20
    assert len({v.patient for v in fitting}) == 5
    assert split_by_patient(views, seed=3) == (fitting, held_out)


def test_save_and_load_keep_the_scores(tmp_path):
    check = ViewCheck.load(CHECK)
    check.save(tmp_path / "copy.npz")
    again = ViewCheck.load(tmp_path / "copy.npz")
    gray = _gray(LATERAL_FIXTURES[0])
    assert again.score(gray) == pytest.approx(check.score(gray))
    assert again.card == json.loads(CHECK.with_suffix(".json").read_text())


def test_a_check_for_other_features_is_refused_with_a_clear_error(tmp_path):
    check = ViewCheck.load(CHECK)
    short = ViewCheck(check.mean[:10], check.scale[:10], check.weights[:10], 0.0, 0.0, {})
    short.save(tmp_path / "old.npz")
    with pytest.raises(ValueError, match="refit with python -m ml view fit"):
        ViewCheck.load(tmp_path / "old.npz")


def test_features_do_not_depend_on_the_image_size_only_on_its_content():
    gray = _gray(IMAGES / "2168a917.jpg")
    from PIL import Image

    half = np.asarray(
        Image.fromarray(gray).resize((gray.shape[1] // 2, gray.shape[0] // 2)), np.float32
    )
    assert np.corrcoef(features(gray), features(half))[0, 1] > 0.99


def test_web_process_can_use_the_check_without_scikit_learn_or_tensorflow():
    import subprocess

    code = (
        "import sys; from pathlib import Path; import numpy as np;"
        "from ml.serving.viewcheck import ViewCheck;"
        f"c = ViewCheck.load(Path({str(CHECK)!r})); c.score(np.random.rand(80, 90));"
        "bad = [m for m in ('sklearn', 'tensorflow', 'keras', 'django') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- fitting and evaluation on the shared data ---------------------------------------------


@pytest.mark.shared_data
@pytest.mark.slow
def test_refitting_reproduces_the_bundled_check_and_its_figures(shared_datasets):
    from ml.serving.viewcheck import evaluate

    bundled = ViewCheck.load(CHECK)
    check, frontal, fitting, held_out = fit_from_shared_data(
        [shared_datasets / name for name in FRONTAL_DATA],
        CHECK.parent / "splits.csv",
        shared_datasets / "lateral-views",
        seed=bundled.card["fitted_on"]["lateral_split_seed"],
    )
    assert check.threshold == pytest.approx(bundled.threshold, abs=1e-4)
    assert (
        sorted(v.path.name for v in held_out) == bundled.card["fitted_on"]["lateral_held_out_files"]
    )
    assert {v.patient for v in fitting}.isdisjoint({v.patient for v in held_out})
    result = evaluate(check, frontal, fitting, held_out)
    for key in ("frontal_test_accepted", "lateral_held_out_refused", "lateral_fit_refused"):
        assert result[key] == bundled.card["measured"][key], key


@pytest.mark.shared_data
@pytest.mark.slow
def test_view_evaluate_measures_the_held_out_laterals_of_the_bundled_check(shared_datasets, capsys):
    from ml.cli import main

    code = main(
        [
            "view",
            "evaluate",
            "--data",
            *(str(shared_datasets / name) for name in FRONTAL_DATA),
            "--laterals",
            str(shared_datasets / "lateral-views"),
            "--quiet",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    refused, total = result["lateral_held_out_refused"]
    assert total == ViewCheck.load(CHECK).card["fitted_on"]["lateral_held_out_images"]
    assert refused / total >= 0.9
    accepted, total = result["frontal_test_accepted_as_uploaded"]
    assert (accepted, total) == tuple(
        ViewCheck.load(CHECK).card["measured"]["frontal_test_accepted_as_uploaded"]
    )


@pytest.mark.shared_data
def test_held_out_split_refuses_another_lateral_folder(shared_datasets, tmp_path):
    folder = tmp_path / "lateral-views"
    (folder / "images").mkdir(parents=True)
    rows = (shared_datasets / "lateral-views" / "labels.csv").read_text().splitlines()
    (folder / "labels.csv").write_text("\n".join(rows[:-3]) + "\n")
    for row in rows[1:-3]:
        name = row.split(",")[0]
        (folder / "images" / name).symlink_to(shared_datasets / "lateral-views" / "images" / name)
    with pytest.raises(ValueError, match="does not split into the held-out views"):
        held_out_split(ViewCheck.load(CHECK), folder)
