"""python -m ml study run --quick and study heatmaps on fixture images and the tiny model
(run in this process through ``ml.cli.main``)."""

import json

import pytest
from PIL import Image

from ml.research.study import default_plan
from tests.conftest import FIXTURES, IMAGES, fixture_manifest, ml_cli


def test_default_plan_shares_the_baseline_and_covers_every_factor():
    plan = default_plan()
    configs = plan.configs()
    # baseline + 2 train fractions + 2 data sizes + 1 lr + 1 aug + 1 size + 1 split level
    assert len(configs) == 9
    assert configs[0] == plan.baseline
    assert {c.input_size for c in configs} == {64, 128}
    assert {c.split_level for c in configs} == {"patient", "image"}


@pytest.mark.slow
def test_quick_study_writes_runs_report_and_plots(tmp_path):
    out = tmp_path / "study"
    done = ml_cli(
        "study",
        "run",
        "--quick",
        "--data",
        IMAGES / "manifest.csv",
        "--layout",
        "generic",
        "--out",
        out,
        "--cache",
        tmp_path / "cache",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads((out / "runs.json").read_text())["runs"]
    assert len(runs) == 8  # 8 distinct configurations x 1 seed
    for row in runs:
        assert 0.0 <= row["macro_f1"] <= 1.0
        assert row["counts"]["test"] > 0
        assert row["epochs_run"] == 1
        assert set(row["per_class"]) == {"covid19", "pneumonia", "normal"}
    assert {r["config"]["split_level"] for r in runs} == {"patient", "image"}
    summary = json.loads((out / "summary.json").read_text())
    assert [e["label"] for e in summary["data_fraction"]] == ["25%", "50%", "100%"]
    report = (out / "report.md").read_text()
    assert "| split_level | image |" in report
    assert "mean ± sd" in report
    for name in ("study-macro-f1.png", "study-per-class.png"):
        assert Image.open(out / name).size[0] > 300
    # Resumable: a second call trains nothing new.
    again = ml_cli(
        "study",
        "run",
        "--quick",
        "--data",
        IMAGES / "manifest.csv",
        "--layout",
        "generic",
        "--out",
        out,
        "--cache",
        tmp_path / "cache",
        "--quiet",
    )
    assert again.returncode == 0
    assert "8 runs" in again.stdout


@pytest.mark.slow
def test_heatmap_study_on_the_tiny_model(tmp_path):
    splits = tmp_path / "splits.csv"
    rows = fixture_manifest()
    splits.write_text(
        "key,patient,label,source,split\n"
        + "".join(
            f"{r['source']}/{r['path']},{r['patient']},{r['label']},{r['source']},test\n"
            for r in rows
        )
    )
    out = tmp_path / "heatmaps"
    done = ml_cli(
        "study",
        "heatmaps",
        "--data",
        IMAGES / "manifest.csv",
        "--out",
        out,
        "--model",
        FIXTURES / "models" / "cxr-tiny.keras",
        "--splits",
        splits,
        "--per-source",
        "1",
        "--sanity-images",
        "1",
        "--method",
        "gradcam",
        "--method",
        "occlusion",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "heatmaps.json").read_text())
    assert len(result["images"]) == 3  # one per source
    assert set(result["summary"]["outside_lungs"]) == {
        "adult-normal",
        "covid-chestxray",
        "pediatric-pneumonia",
    }
    for image in result["images"]:
        for name in ("gradcam", "occlusion", "random-pixel", "random-smooth"):
            scores = image["methods"][name]
            assert 0.0 <= scores["deletion_auc"] <= 1.0
            assert 0.0 <= scores["outside_lungs"] <= 1.0
    assert [s["method"] for s in result["sanity"]] == ["gradcam", "occlusion"]
    text = (out / "heatmap-study.md").read_text()
    assert "Heatmap mass outside the lung fields" in text
    for name in (
        "lungs.png",
        "heatmap-faithfulness.png",
        "heatmap-outside-lungs.png",
        "heatmap-sanity.png",
        "heatmap-examples.png",
    ):
        assert Image.open(out / name).size[0] > 100
