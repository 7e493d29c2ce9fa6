"""The generator's report (``report.md``) from ``results.json`` and the generator's card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml.data.labels import CLASS_DISPLAY, CLASSES

CONDITIONS = ("real", "real+synthetic", "synthetic")
CONDITION_NAMES = {
    "real": "real",
    "real+synthetic": "real + synthetic",
    "synthetic": "synthetic only (TSTR)",
}


def _ci(entry: dict[str, Any] | None, digits: int = 3) -> str:
    if not entry:
        return "n/a (too few images)"
    low, high = entry["ci95"]
    return f"{entry['value']:.{digits}f} ({low:.{digits}f}-{high:.{digits}f})"


def _share(entry: dict[str, Any]) -> str:
    low, high = entry["ci95"]
    return f"{entry['share']:.2f} ({low:.2f}-{high:.2f})"


def _maybe(value: float | None, ci: list[float] | None = None) -> str:
    if value is None:
        return "n/a"
    if ci:
        return f"{value:.3f} ({ci[0]:.3f}-{ci[1]:.3f})"
    return f"{value:.3f}"


def _distribution_table(dist: dict[str, Any]) -> list[str]:
    lines = [
        "| class | set vs test | n (set / test) | Frechet distance | KID | precision | recall |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in (*CLASSES, "all"):
        row = dist[name]
        label = CLASS_DISPLAY.get(name, "all classes")
        for candidate, what in (("generated", "**generated**"), ("train", "real train (baseline)")):
            r = row[candidate]
            lines.append(
                f"| {label} | {what} | {r['n']} / {row['n_test']} | {_ci(r.get('frechet'), 2)} | "
                f"{_ci(r.get('kid'), 3)} | {_ci(r.get('precision'), 2)} | "
                f"{_ci(r.get('recall'), 2)} |"
            )
    return lines


def _usefulness(use: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    runs = use["runs"]
    lines = [
        "| training data | n train | seed | test macro-F1 (95% CI) | NIH pneumonia ROC-AUC | "
        "covid-chestxray COVID-19 ROC-AUC | lungs blanked acc. | min Grad-CAM mass in lungs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    summary: dict[str, Any] = {}
    for condition in CONDITIONS:
        rows = [r for r in runs if r["condition"] == condition]
        for r in rows:
            s = r["shortcuts"] or {}
            nih = s.get("nih_pneumonia_auroc") or {}
            cov = s.get("covid_chestxray_covid19_auroc") or {}
            masses = [
                m.get("mean")
                for m in (s.get("gradcam_mass_in_lungs") or {}).values()
                if m.get("mean") is not None
            ]
            lines.append(
                f"| {CONDITION_NAMES[condition]} | {r['n_train']} | {r['seed']} | "
                f"{_maybe(r['macro_f1'], r['macro_f1_ci'])} | "
                f"{_maybe(nih.get('auroc'), nih.get('ci'))} | "
                f"{_maybe(cov.get('auroc'), cov.get('ci'))} | "
                f"{_maybe(s.get('lungs_blanked_accuracy'), s.get('lungs_blanked_accuracy_ci'))} | "
                f"{_maybe(min(masses) if masses else None)} |"
            )
        f1 = np.array([r["macro_f1"] for r in rows])
        summary[condition] = {
            "mean": float(f1.mean()) if len(f1) else None,
            "sd": float(f1.std(ddof=1)) if len(f1) > 1 else None,
            "min": float(f1.min()) if len(f1) else None,
            "max": float(f1.max()) if len(f1) else None,
        }
    return lines, summary


def _nice(training: dict[str, Any]) -> str:
    return f" at niceness {training['niceness']}" if "niceness" in training else ""


def _duplicates(rows: list[dict[str, Any]] | None) -> list[str]:
    if rows is None:
        return []
    if not rows:
        return ["No test image is the same picture as a training image.", ""]
    lines = [
        f"**The real-vs-real reference found {len(rows)} test image(s) that are the same "
        "picture as a training image** (pixel ratio < 0.1) under another patient id - a leak "
        "in the classifier's split, not something the generator did; they pull the "
        "test images' minimum ratio to 0 (the threshold uses the 1st percentile instead):",
        "",
        "| test image (patient) | training image (patient) | pixel ratio |",
        "|---|---|---|",
    ]
    lines += [
        f"| `{r['test']}` ({r['test_patient']}) | `{r['train']}` ({r['train_patient']}) | "
        f"{r['pixel_ratio']:.3f} |"
        for r in rows
    ]
    return [*lines, ""]


def write_report(results: dict[str, Any], card: dict[str, Any], out_dir: Path) -> Path:
    dist = results["distribution"]
    mem = results["memorisation"]
    c2st = results["two_sample_test"]
    fid = results["class_fidelity"]
    training = card.get("training", {})
    selection = card.get("selection", {})
    feats = results["features"]
    lines = [
        "# Synthetic chest X-ray generator: measured",
        "",
        "A class-conditional GAN trained on the **train split** of the classifier "
        "`cxr-lungs` (patient-level, `ml/bundled/cxr-lungs/splits.csv`), on the classifier's "
        "own preprocessing (lung-frame crop, CLAHE, everything outside the lungs set to 0) at "
        f"{results['generator']['image_size']} px. Checkpoint chosen on the **val** split "
        f"(epoch {selection.get('chosen_epoch')} of {training.get('epochs_run')}); everything "
        "below is on the **test** split, measured once. The images are SYNTHETIC; none is a "
        "patient's radiograph. Demo data and a demo model: nothing here supports a clinical "
        "claim.",
        "",
        "![samples](samples.png)",
        "",
        "Fixed-noise samples over training: "
        f"[`generator.fixed-noise.gif`](../{card.get('animation')}).",
        "",
        "## How it was made",
        "",
        f"* Architecture: {card.get('architecture')}. Why: {card.get('why')}",
        f"* Resolution: {results['generator']['image_size']} px, not 128: one generator + "
        "discriminator step costs about four times as much at 128 px; on two shared CPU cores "
        "that leaves about a quarter of the ~2,000 steps that fit in the budget, too few for a "
        "GAN to get past blurry shapes. The classifier's 160 px inputs are area-downsampled; "
        "for the classifier's features both real and generated images are upsampled back to "
        "160 px the same way.",
        f"* Training: {training.get('epochs_run')} epochs x {training.get('steps_per_epoch')} "
        f"steps, batch {training.get('batch_size')}, {training.get('seconds')} s of training "
        f"({training.get('seconds_per_epoch')} s/epoch) on {training.get('cpus')} CPU cores "
        f"shared with other jobs{_nice(training)} (load average over 1, 5, 15 min "
        f"{training.get('load_average_start_this_run')} at the start, "
        f"{training.get('load_average_end')} at the end). Command: "
        f"`{training.get('command') or 'make train-generator'}`.",
        f"* Chosen on val: {selection.get('rule')}.",
        "",
        "## 1. Distribution: generated vs held-out real, next to real vs real",
        "",
        f"Features: the pooled lung features (`{feats['layer']}`, {feats['dimensions']} values) "
        f"of the project's classifier `{feats['classifier']}` (sha256 "
        f"{feats['sha256'][:12]}). **Why not Inception:** FID/KID are defined on ImageNet "
        "Inception-v3 features, and those weights cannot be downloaded here (the platform "
        "never downloads at run time); an ImageNet network has also never seen a lung-framed, "
        "CLAHE-equalised, masked radiograph. With 128 features and 61-100 test images per "
        "class, the Frechet distance is strongly biased by the sample sizes, so it is only "
        "readable next to the **baseline row**: the real train split against the same test "
        "split, with as many images per class as the generated set. The generated set is "
        "compared with the *test* split: a generator that copied its training images would "
        "score like the baseline, not better.",
        "",
        *_distribution_table(dist),
        "",
        "Intervals: Frechet distance and KID, 95% percentile bootstrap over both sets "
        f"({results['config']['n_boot']} resamples); precision/recall (Kynkaanniemi et al. "
        "2019, k = 3), mean and 2.5-97.5 percentiles over "
        f"{results['config']['pr_repeats']} draws of 80% of the smaller set from each. "
        "Precision: share of one set inside the real test images' k-NN manifold (fidelity); "
        "recall: share of the test images inside that set's manifold (diversity).",
        "",
        "Does the classifier see the asked-for class? Share of images `cxr-lungs` assigns to "
        "the class they were generated as (real test images: to their true class), Wilson "
        "95% intervals:",
        "",
        "| class | generated | real test |",
        "|---|---|---|",
        *[
            f"| {CLASS_DISPLAY.get(c, 'all classes')} | {_share(fid['generated'][c])} | "
            f"{_share(fid['test'][c])} |"
            for c in (*CLASSES, "all")
        ],
        "",
        "## 2. Memorisation: does it copy training patients?",
        "",
        "For every generated image, the nearest training image - in pixel space (Euclidean "
        "distance of the 64 x 64 images, the smallest over moves of the generated image by up "
        "to 2 pixels each way, so that a copy moved by a pixel still counts as one) and in "
        "the feature space above - divided by the *typical* train-to-test distance (the "
        "median, over test images, of their own nearest-training distance). **Near copy:** "
        "a ratio below the 1st percentile of the test images' ratios, i.e. closer to a "
        "training image than 99% of real images of *other patients* are (the patient-level "
        "split guarantees they are other patients). Positive controls, 200 known copies of "
        "training images (*noisy copy*: noise in the lungs; *moved copy*: moved by 2 pixels "
        "and 5% darker), show whether the rule catches copies.",
        "",
        "| space | typical train-test distance | near-copy threshold (ratio) | generated: min / "
        "5th pct / median ratio | test: min / median ratio | near copies (95% CI of the share) | "
        "below the closest real pair | controls caught (noisy / moved) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for space in ("pixel", "feature"):
        m = mem[space]
        g, t = m["generated_ratio"], m["test_ratio"]
        low, high = m["near_copies_ci95"]
        controls = " / ".join(
            f"{c['caught']} of {c['n']}"
            for c in (m["controls"][k] for k in ("noisy copy", "moved copy"))
        )
        lines.append(
            f"| {space} | {m['typical_train_to_test']:.3f} | {m['threshold_ratio']:.3f} | "
            f"{g['min']:.3f} / {g['p05']:.3f} / {g['median']:.3f} | {t['min']:.3f} / "
            f"{t['median']:.3f} | {m['near_copies']} of {g['n']} ({low:.3f}-{high:.3f}) | "
            f"{m['below_test_minimum']} | {controls} |"
        )
    near = sum(mem[s]["near_copies"] for s in ("pixel", "feature"))
    lines += [
        "",
        (
            "**Result: no generated image is a near copy of a training image** in either space."
            if near == 0
            else f"**Result: {mem['pixel']['near_copies']} (pixel) and "
            f"{mem['feature']['near_copies']} (feature) generated images fall under the "
            "near-copy threshold**; they are the first pairs shown below - look at them."
        ),
        "",
        *_duplicates(mem.get("cross_split_duplicates")),
        "![ratios](memorisation-ratios.png)",
        "",
        "Closest generated-train pairs (top: generated, bottom: its nearest training image):",
        "",
        "![pixel](closest-pixel.png)",
        "",
        "![feature](closest-feature.png)",
        "",
        "For reference, the closest real test-train pairs (different patients):",
        "",
        "![test pixel](closest-test-pixel.png)",
        "",
        "![test feature](closest-test-feature.png)",
        "",
        "## 3. Classifier two-sample test",
        "",
        f"A small CNN ({c2st['model']}, {c2st['epochs']} epochs) trained on half of "
        f"{c2st['n_fit'] + c2st['n_test']} images (real: {c2st['real']}; as many generated, "
        f"same class mix) to tell generated from real; accuracy on the other half "
        f"({c2st['n_test']} images): **{c2st['accuracy']:.3f}** (Wilson 95% "
        f"{c2st['ci95'][0]:.3f}-{c2st['ci95'][1]:.3f}). 0.5 would mean it cannot tell them "
        "apart.",
        "",
    ]
    if "usefulness" in results:
        use = results["usefulness"]
        table, summary = _usefulness(use)
        lines += [
            "## 4. Usefulness: real / real + synthetic / synthetic only",
            "",
            f"The classifier's architecture trained at {results['generator']['image_size']} px "
            f"with a **short fixed budget** ({use['budget']}), 3 seeds; the synthetic set has "
            f"{use['synthetic_per_class']} images per class (a new draw per seed). Validation "
            "and test are the real val/test splits. These are short runs of a small model, "
            "far below the bundled classifier's budget: read the differences between rows, "
            "not the absolute values.",
            "",
            *table,
            "",
            "| training data | test macro-F1, mean (sd) over seeds | range |",
            "|---|---|---|",
        ]
        for condition in CONDITIONS:
            s = summary[condition]
            sd = f"{s['sd']:.3f}" if s["sd"] is not None else "n/a"
            lines.append(
                f"| {CONDITION_NAMES[condition]} | {s['mean']:.3f} ({sd}) | "
                f"{s['min']:.3f}-{s['max']:.3f} |"
            )
        lines += [
            "",
            "Paired difference to training on real data only (same test images, 1,000 "
            "bootstrap resamples):",
            "",
            "| training data | seed | macro-F1 difference (95% CI) |",
            "|---|---|---|",
            *[
                f"| {CONDITION_NAMES[d['condition']]} | {d['seed']} | "
                f"{d['value']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}) |"
                for d in use["differences_to_real"]
            ],
            "",
        ]
        plus = [d for d in use["differences_to_real"] if d["condition"] == "real+synthetic"]
        helped = all(d["ci95"][0] > 0 for d in plus)
        hurt = all(d["ci95"][1] < 0 for d in plus)
        verdict = (
            "**Synthetic data helped**: adding it raised test macro-F1 in every seed, with "
            "every paired interval above 0."
            if helped
            else "**Synthetic data hurt**: adding it lowered test macro-F1 in every seed."
            if hurt
            else "**Synthetic data did not measurably help**: the paired differences of real + "
            "synthetic vs real straddle 0 (see the table)."
        )
        lines += [verdict, ""]
    notes = Path(out_dir) / "notes.md"
    if notes.is_file():  # a person's reading of the figures, kept across re-runs
        lines += [
            "## Reading (written by a person after looking at the figures; `notes.md`)",
            "",
            notes.read_text().strip(),
            "",
        ]
    lines += [
        "## Reproduce",
        "",
        "```",
        "make train-generator     # trains (resumes from var/cache/gan/), bundles the chosen one",
        "make evaluate-generator   # this report",
        "```",
        "",
        f"Evaluation command: `{results.get('command') or 'make evaluate-generator'}`; "
        f"{results['seconds_total']} s on {results['cpus']} cores (load average "
        f"{results['load_average']['start']} at the start, {results['load_average']['end']} "
        "at the end). All numbers: `results.json`.",
        "",
    ]
    path = Path(out_dir) / "report.md"
    path.write_text("\n".join(lines))
    return path
