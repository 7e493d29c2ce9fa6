"""Training and the ``python -m ml`` CLI on the committed fixture images."""

import json
import runpy
import sys
from typing import Any

import pytest

from ml.data.labels import CLASSES
from ml.data.loaders import load_generic
from ml.models.artifacts import read_card, sha256_file
from ml.models.training import TrainConfig, train
from ml.serving.classifier import Classifier
from tests.conftest import IMAGES, REPO_ROOT, ml_cli

MANIFEST = IMAGES / "manifest.csv"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    config = TrainConfig(epochs=1, input_size=64, width=8, batch_size=8, n_bootstrap=20)
    progress: list[dict[str, Any]] = []
    result = train(load_generic(MANIFEST), out, config, progress=False, hook=progress.append)
    return result, progress


@pytest.mark.slow
def test_one_epoch_run_writes_a_loadable_model_and_a_complete_card(trained):
    result, _ = trained
    card = read_card(result.artifact)
    assert card["sha256"] == sha256_file(result.artifact)
    assert card["classes"] == list(CLASSES)
    assert card["preprocessing"]["input_size"] == 64
    assert card["data"]["images"] == 18
    assert card["data"]["content_hash"] == load_generic(MANIFEST).content_hash()
    assert sum(card["data"]["split"]["counts"].values()) == 18
    assert card["hyperparameters"]["epochs"] == 1
    assert card["training"]["epochs_run"] == 1
    assert 0.0 <= card["metrics"]["macro_f1"] <= 1.0
    classifier = Classifier.load(result.artifact, expected_sha256=card["sha256"])
    assert classifier.model.output_shape == (None, 3)


@pytest.mark.slow
def test_training_writes_the_evaluation_report_and_the_split_file(trained):
    result, _ = trained
    for name in ("metrics.json", "report.md", "confusion_matrix.png", "roc.png", "calibration.png"):
        assert (result.report_dir / name).stat().st_size > 0
    metrics = json.loads((result.report_dir / "metrics.json").read_text())
    assert metrics["n"] == result.card["data"]["split"]["counts"]["test"]
    rows = (result.artifact.parent / "splits.csv").read_text().splitlines()
    assert rows[0] == "key,patient,label,source,split"
    assert len(rows) == 19


@pytest.mark.slow
def test_same_seed_gives_the_same_weights(trained, tmp_path):
    import numpy as np

    result, _ = trained
    config = TrainConfig(**result.card["hyperparameters"])
    again = train(load_generic(MANIFEST), tmp_path, config, progress=False)
    first = Classifier.load(result.artifact).model.get_weights()
    second = Classifier.load(again.artifact).model.get_weights()
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    assert again.metrics.macro_f1 == result.metrics.macro_f1


@pytest.mark.slow
def test_training_reports_progress_per_batch_and_epoch(trained):
    _, progress = trained
    assert progress[0] == {"epoch": 1, "epochs": 1, "batch": 1, "batches": 2}
    assert "val_loss" in progress[-1]["logs"]


def _cli(*args):
    return ml_cli(*args)


@pytest.mark.slow
def test_cli_predict_json_gives_probabilities_that_sum_to_one(trained):
    result, _ = trained
    images = [str(IMAGES / "2168a917.jpg"), str(IMAGES / "IM-0117-0001.jpeg")]
    run = _cli("classifier", "predict", "--model", str(result.artifact), "--json", *images)
    assert run.returncode == 0, run.stderr
    rows = json.loads(run.stdout)
    assert [row["image"] for row in rows] == images
    for row in rows:
        assert set(row["probabilities"]) == set(CLASSES)
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == max(row["probabilities"], key=row["probabilities"].get)


@pytest.mark.slow
def test_cli_predict_reports_unreadable_images_and_exits_non_zero(trained, tmp_path):
    result, _ = trained
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    run = _cli(
        "classifier",
        "predict",
        "--model",
        str(result.artifact),
        str(bad),
        str(IMAGES / "2168a917.jpg"),
    )
    assert run.returncode == 1
    assert "bad.png: ERROR UnidentifiedImageError" in run.stdout
    assert "2168a917.jpg: " in run.stdout


@pytest.mark.slow
def test_cli_evaluate_recomputes_the_models_test_split(trained, tmp_path):
    result, _ = trained
    out = tmp_path / "eval"
    run = _cli(
        "classifier",
        "evaluate",
        "--model",
        str(result.artifact),
        "--data",
        str(MANIFEST),
        "--out",
        str(out),
        "--bootstrap",
        "20",
        "--quiet",
    )
    assert run.returncode == 0, run.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == result.card["data"]["split"]["counts"]["test"]
    assert metrics["macro_f1"] == pytest.approx(result.metrics.macro_f1, abs=1e-6)


def test_cli_data_prints_kept_and_excluded_counts():
    run = _cli(
        "data", "summary", str(REPO_ROOT / "tests" / "fixtures" / "layouts" / "covid-chestxray")
    )
    assert run.returncode == 0, run.stderr
    summary = json.loads(run.stdout)
    assert summary["images"] == 7
    assert summary["excluded"]["modality CT (not X-ray)"] == 1


def test_cli_refuses_missing_data_folder_with_a_message(tmp_path):
    run = _cli("data", "summary", str(tmp_path / "nowhere"))
    assert run.returncode == 2
    assert "error:" in run.stderr


def test_every_command_is_a_task_and_a_verb():
    from ml.cli import OLD_SPELLINGS, build_parser

    parser = build_parser()
    verbs = {
        "data": ["summary"],
        "classifier": ["train", "evaluate", "predict", "explain", "sanity"],
        "lungs": ["train", "evaluate", "predict"],
        "ct": ["train", "evaluate", "predict"],
        "generate": ["train", "sample", "evaluate"],
        "ood": ["fit", "evaluate"],
        "view": ["fit", "evaluate"],
        "ct-modality": ["fit", "evaluate"],
        "lite": ["convert"],
        "study": ["run", "heatmaps", "lung-check"],
    }
    for task, names in verbs.items():
        for verb in names:
            with pytest.raises(SystemExit) as exited:  # --help exits 0 for a known verb
                parser.parse_args([task, verb, "--help"])
            assert exited.value.code == 0, (task, verb)
    assert {tuple(new) for new in OLD_SPELLINGS.values()} <= {
        (task, verb) for task, names in verbs.items() for verb in names
    }


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (["train", "--data", "D"], ["classifier", "train", "--data", "D"]),
        (["-v", "ood-fit", "--data", "D"], ["-v", "ood", "fit", "--data", "D"]),
        (["ood-eval", "--json"], ["ood", "evaluate", "--json"]),
        (["view-eval", "--json"], ["view", "evaluate", "--json"]),
        (["ct-modality-fit", "--ct", "C"], ["ct-modality", "fit", "--ct", "C"]),
        (["heatmap-study", "--data", "D"], ["study", "heatmaps", "--data", "D"]),
        (["lung-check", "--covid", "C"], ["study", "lung-check", "--covid", "C"]),
        (["lite-convert", "m.keras"], ["lite", "convert", "m.keras"]),
        (["study", "--quick", "--data", "D"], ["study", "run", "--quick", "--data", "D"]),
        (["data", "DIR"], ["data", "summary", "DIR"]),
    ],
)
def test_old_spellings_become_the_task_and_verb_with_a_note(old, new):
    from ml.cli import translate_old_spelling

    argv, note = translate_old_spelling(old)
    assert argv == new
    assert note is not None
    word = next(a for a in old if not a.startswith("-"))
    task_and_verb = " ".join(new[old.index(word) : old.index(word) + 2])
    assert note == (
        f"note: 'python -m ml {word}' is deprecated and goes in the next release; "
        f"use 'python -m ml {task_and_verb}'."
    )


@pytest.mark.parametrize(
    "argv",
    [["classifier", "train"], ["study", "run", "--quick"], ["data", "summary", "D"], ["-h"], []],
)
def test_current_spellings_pass_unchanged_and_without_a_note(argv):
    from ml.cli import translate_old_spelling

    assert translate_old_spelling(argv) == (argv, None)


def test_an_old_spelling_still_runs_and_prints_one_deprecation_line():
    folder = str(REPO_ROOT / "tests" / "fixtures" / "layouts" / "covid-chestxray")
    old, new = _cli("data", folder), _cli("data", "summary", folder)
    assert old.returncode == new.returncode == 0, old.stderr
    assert json.loads(old.stdout) == json.loads(new.stdout)
    assert new.stderr == ""
    notes = old.stderr.splitlines()
    assert len(notes) == 1
    assert "'python -m ml data' is deprecated" in notes[0]
    assert "'python -m ml data summary'" in notes[0]


def test_python_dash_m_ml_runs_the_cli_and_exits_with_its_status(tmp_path, monkeypatch, capsys):
    """``ml/__main__.py`` (what ``python -m ml`` runs) passes the arguments to the CLI and
    exits with its status; the other CLI tests call ``ml.cli.main`` directly."""
    monkeypatch.setattr(sys, "argv", ["ml", "data", "summary", str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit) as exited:
        runpy.run_module("ml", run_name="__main__")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    assert "nowhere" in err


def test_imagenet_backbone_without_local_weights_is_a_clear_error(monkeypatch, tmp_path):
    from ml.models.architectures import build_backbone

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="never downloads weights"):
        build_backbone("densenet121", input_size=64)


@pytest.mark.slow
def test_efficientnet_backbone_builds_on_the_one_channel_input():
    from ml.models.architectures import build_backbone

    model = build_backbone("efficientnetb0", input_size=64, weights=None)
    assert model.input_shape == (None, 64, 64, 1)
    assert model.output_shape == (None, 3)


@pytest.mark.slow
def test_training_and_serving_feed_the_model_identical_arrays(trained):
    """Training (load_arrays) and serving (Classifier.predict) preprocess alike:
    the served probabilities equal the model's output on the training array."""
    import numpy as np

    from ml.data.preprocess import open_image
    from ml.models.training import load_arrays

    result, _ = trained
    classifier = Classifier.load(result.artifact)
    records = load_generic(MANIFEST).records[:4]
    arrays = load_arrays(records, classifier.spec, progress=False)
    for record, array in zip(records, arrays, strict=True):
        served = classifier.predict(open_image(record.path)).probabilities
        trained_probs = classifier.predict_array(array[np.newaxis])[0]
        assert np.allclose([served[c] for c in CLASSES], trained_probs, atol=1e-6)
