"""``python -m ml``: the data-science CLI. No database, no web app.

python -m ml data DIR...                         what the loaders keep and exclude
python -m ml train --data DIR... --out DIR       train, evaluate on the test split
python -m ml evaluate --model M --data DIR...    re-evaluate a model (its own test split)
python -m ml predict --model M IMAGE... [--json] classify images
python -m ml explain --model M --method gradcam IMAGE... --out DIR   heatmaps + overlays
python -m ml sanity --model M --method gradcam IMAGE... [--json]     randomisation check
python -m ml ood-fit --data DIR... [--out ml/bundled/ood-gate.npz]  fit the input gate
python -m ml ood-eval --data DIR... [--gate G] [--json]             measure it
python -m ml view-fit --data DIR... --laterals DIR [--out O]    fit the frontal/lateral check
python -m ml view-eval --data DIR... --laterals DIR [--check C] [--json]  measure it
python -m ml study --data DIR... --out DIR [--quick]              split/size/parameter study
python -m ml heatmap-study --data DIR... --out DIR               heatmaps vs lungs, faithfulness
python -m ml lungs train|evaluate|predict ...                    lung segmentation U-Net
python -m ml ct train|evaluate|predict ...                       CT lesion segmentation U-Net
python -m ml generate train|sample|evaluate ...                  synthetic X-ray generator (GAN)
python -m ml ct-modality-fit|ct-modality-eval --ct DIR --data DIR...  CT-vs-X-ray upload check
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

log = logging.getLogger("ml")


def _add_data_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", nargs="+", type=Path, required=True, help="dataset folders")
    parser.add_argument(
        "--layout",
        default="auto",
        choices=["auto", "covid-chestxray", "pediatric", "nih", "generic"],
        help="dataset layout (default: detect from each folder)",
    )


def cmd_data(args: argparse.Namespace) -> int:
    from ml.data.loaders import load_many

    dataset = load_many(args.dirs, args.layout)
    print(json.dumps(dataset.summary(), indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    """Train on the data folders. Where the data give each image a split (a platform
    export's ``labels.csv``), that split is used; otherwise one is computed by patient."""
    from ml.data.loaders import given_splits, load_many
    from ml.models.training import TrainConfig, train

    overrides = {
        f.name: getattr(args, f.name)
        for f in fields(TrainConfig)
        if getattr(args, f.name, None) is not None
    }
    config = TrainConfig(**overrides)
    dataset = load_many(args.data, args.layout)
    if args.limit:
        import numpy as np

        rng = np.random.default_rng(config.seed)
        size = min(args.limit, len(dataset.records))
        keep = rng.choice(len(dataset.records), size=size, replace=False)
        dataset.records = [dataset.records[i] for i in sorted(keep)]
    splits = given_splits(dataset.records)
    if splits is not None:
        log.info("using the split given with the data (%d images)", len(splits))
    result = train(
        dataset,
        args.out,
        config,
        progress=not args.quiet,
        name=args.name,
        cache=getattr(args, "cache", None),
        splits=splits,
    )
    m = result.metrics
    covid = m.per_class["covid19"]
    print(f"model:    {result.artifact}")
    print(f"report:   {result.report_dir / 'report.md'}")
    ci = f" (95% CI {m.macro_f1_ci[0]:.3f}-{m.macro_f1_ci[1]:.3f})" if m.macro_f1_ci else ""
    print(f"macro-F1: {m.macro_f1:.3f}{ci}")
    print(f"COVID-19: precision {covid.precision:.3f}, recall {covid.recall:.3f}")
    if m.shortcuts is not None:
        for check in m.shortcuts.checks():
            print(f"shortcut: {check}")
    print(
        f"training: {result.card['training']['seconds']} s, "
        f"{result.card['training']['seconds_per_epoch']} s/epoch"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ml.data.loaders import load_many
    from ml.data.splits import read_splits_csv, saved_split_names, split_records
    from ml.models.artifacts import read_card
    from ml.models.evaluation import write_report
    from ml.serving.classifier import Classifier

    card = read_card(args.model)
    classifier = Classifier.load(args.model, expected_sha256=card.get("sha256"), card=card)
    dataset = load_many(args.data, args.layout)
    records = dataset.records
    if args.split != "all":
        split = card.get("data", {}).get("split")
        if split is None:
            print("The model card records no split; use --split all.", file=sys.stderr)
            return 2
        if dataset.content_hash() != card["data"].get("content_hash"):
            log.warning(
                "these data differ from the model's training data (content hash); "
                "the recomputed %s split is not the one the model was evaluated on",
                args.split,
            )
        saved = Path(args.model).parent / "splits.csv"
        if saved.is_file():  # the split the model was trained on, written beside it
            names = saved_split_names(records, read_splits_csv(saved))
        else:
            names = split_records(
                records,
                val_fraction=split["val_fraction"],
                test_fraction=split["test_fraction"],
                seed=split["seed"],
                level=split["level"],
            )
        records = [r for r, name in zip(records, names, strict=True) if name == args.split]
    from ml.models.training import evaluate_records

    result, probs = evaluate_records(
        classifier, records, n_bootstrap=args.bootstrap, progress=not args.quiet
    )
    y_true = [r.label for r in records]
    paths = write_report(
        result,
        y_true,
        probs,
        classifier.classes,
        args.out,
        title=f"{Path(args.model).stem}: {args.split} split",
    )
    ci = result.macro_f1_ci
    ci_text = f" (95% CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    print(f"n={result.n} macro-F1 {result.macro_f1:.3f}{ci_text}")
    if result.shortcuts is not None:
        for check in result.shortcuts.checks():
            print(f"shortcut: {check}")
    print(f"report: {paths['markdown']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from ml.data.preprocess import open_image
    from ml.serving.classifier import Classifier

    classifier = Classifier.load(args.model)
    status = 0
    rows: list[dict[str, Any]] = []
    for path in args.images:
        try:
            result = classifier.predict(open_image(path))
        except (OSError, ValueError) as exc:
            rows.append({"image": str(path), "error": f"{type(exc).__name__}: {exc}"})
            status = 1
            continue
        rows.append(
            {"image": str(path), "label": result.label, "probabilities": result.probabilities}
        )
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if "error" in row:
                print(f"{row['image']}: ERROR {row['error']}")
            else:
                probs = "  ".join(f"{k} {v:.3f}" for k, v in row["probabilities"].items())
                print(f"{row['image']}: {row['label']}  ({probs})")
    return status


def _print_ood(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for split in ("train", "val", "test"):
        ok, n = result[f"chest_{split}_accepted"]
        print(f"chest X-rays accepted ({split} split): {ok}/{n} ({100 * ok / n:.1f}%)")
    refused, n = result["non_chest_refused"]
    print(f"non-chest images refused by the pixel gate: {refused}/{n} ({100 * refused / n:.1f}%)")
    refused, n = result["non_chest_refused_as_uploaded"]
    print(
        f"non-chest images refused as uploaded (DICOM header rule + pixel gate): "
        f"{refused}/{n} ({100 * refused / n:.1f}%)"
    )
    for row in result["non_chest"]:
        if not row["refused"]:
            caught = f" (refused by its header: {row['header_refusal']})" * bool(
                row["header_refusal"]
            )
            print(f"  pixel gate accepted: {row['image']} score {row['score']}{caught}")


def cmd_ood_fit(args: argparse.Namespace) -> int:
    from ml.serving.ood import evaluate, fit_from_shared_data

    gate, chest = fit_from_shared_data(args.data, args.splits, progress=not args.quiet)
    result = evaluate(gate, chest)
    gate.card["measured"] = {k: v for k, v in result.items() if k != "non_chest"}
    gate.save(args.out)
    print(f"gate: {args.out} (threshold {gate.threshold:.3f}, colour {gate.max_colourful:.4f})")
    _print_ood(result, as_json=False)
    return 0


def cmd_ood_eval(args: argparse.Namespace) -> int:
    from ml.serving.ood import OodGate, chest_xray_paths, evaluate, features_of_paths

    gate = OodGate.load(args.gate)
    paths = chest_xray_paths(args.data, args.splits)
    chest = {split: features_of_paths(p, progress=not args.quiet) for split, p in paths.items()}
    _print_ood(evaluate(gate, chest), as_json=args.json)
    return 0


def _print_view(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        if isinstance(value, list) and len(value) == 2 and all(isinstance(v, int) for v in value):
            ok, n = value
            print(f"{key.replace('_', ' ')}: {ok}/{n} ({100 * ok / max(n, 1):.1f}%)")
    if result.get("lateral_held_out_missed"):
        print(f"held-out lateral views accepted: {', '.join(result['lateral_held_out_missed'])}")


def _view_gate(path: Path | None) -> Any:
    from ml.serving.ood import OodGate

    return None if path is None or str(path).lower() == "none" else OodGate.load(path)


def cmd_view_fit(args: argparse.Namespace) -> int:
    from ml.serving.viewcheck import evaluate, fit_from_shared_data

    check, frontal, fitting, held_out = fit_from_shared_data(
        args.data, args.splits, args.laterals, seed=args.seed, progress=not args.quiet
    )
    result = evaluate(
        check,
        frontal,
        fitting,
        held_out,
        extra_frontal=args.extra_frontal,
        gate=_view_gate(args.gate),
        progress=not args.quiet,
    )
    check.card["measured"] = result
    check.save(args.out)
    fitted = check.card["fitted_on"]
    print(
        f"view check: {args.out} (threshold {check.threshold:.3f}); lateral views: "
        f"{fitted['lateral_fit_images']} used to fit ({fitted['lateral_fit_patients']} patients), "
        f"{fitted['lateral_held_out_images']} held out ({fitted['lateral_held_out_patients']} "
        "patients)"
    )
    _print_view(result, as_json=False)
    return 0


def cmd_view_eval(args: argparse.Namespace) -> int:
    from ml.serving.viewcheck import ViewCheck, evaluate, frontal_paths, held_out_split

    check = ViewCheck.load(args.check)
    fitting, held_out = held_out_split(check, args.laterals)
    result = evaluate(
        check,
        frontal_paths(args.data, args.splits),
        fitting,
        held_out,
        extra_frontal=args.extra_frontal,
        gate=_view_gate(args.gate),
        progress=not args.quiet,
    )
    _print_view(result, as_json=args.json)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from ml.data.preprocess import open_image, preprocess
    from ml.explain.api import deletion_insertion, explain, heatmap_to_npy, render_overlay
    from ml.serving.classifier import Classifier

    classifier = Classifier.load(args.model)
    target = None
    if args.target is not None:
        if args.target not in classifier.classes:
            print(f"error: --target must be one of {classifier.classes}", file=sys.stderr)
            return 2
        target = classifier.classes.index(args.target)
    args.out.mkdir(parents=True, exist_ok=True)
    status = 0
    for path in args.images:
        try:
            x = preprocess(open_image(path), classifier.spec)
        except (OSError, ValueError) as exc:
            print(f"{path}: ERROR {type(exc).__name__}: {exc}")
            status = 1
            continue
        heatmap = explain(
            classifier.model, x, args.method, target_class=target, classes=classifier.classes
        )
        scores = deletion_insertion(classifier.model, x, heatmap.values, heatmap.target_class)
        stem = Path(path).stem
        npy = args.out / f"{stem}.{args.method}.npy"
        png = args.out / f"{stem}.{args.method}.png"
        npy.write_bytes(heatmap_to_npy(heatmap.values))
        title = f"{stem}: {args.method} for {heatmap.target_label}"
        png.write_bytes(render_overlay(x, heatmap.values, title=title))
        print(
            f"{path}: {args.method} target {heatmap.target_label} "
            f"deletion AUC {scores['deletion_auc']:.3f} insertion AUC "
            f"{scores['insertion_auc']:.3f} {heatmap.seconds:.3f} s -> {npy.name}, {png.name}"
        )
    return status


def cmd_sanity(args: argparse.Namespace) -> int:
    from ml.data.preprocess import open_image, preprocess
    from ml.explain.api import randomisation_check
    from ml.serving.classifier import Classifier

    classifier = Classifier.load(args.model)
    images = [preprocess(open_image(path), classifier.spec) for path in args.images]
    results = [
        randomisation_check(classifier.model, images, method, seed=args.seed, mode=args.mode)
        for method in args.method or ["gradcam"]
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    for result in results:
        print(
            f"{result['method']}: trained vs fully randomised model over "
            f"{result['n_images']} images: Spearman {result['spearman_mean']:.3f}, "
            f"SSIM {result['ssim_mean']:.3f} (low = the map depends on the weights)"
        )
        for stage in result["stages"]:
            print(
                f"  randomised down to {stage['top_layer_randomised_down_to']:<20} "
                f"Spearman {stage['spearman_mean']:.3f}  SSIM {stage['ssim_mean']:.3f}"
            )
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    from ml.data.loaders import load_many
    from ml.research.study import (
        default_plan,
        quick_plan,
        run_study,
        shortcut_plan,
        write_report,
    )

    if args.quick:
        plan = quick_plan()
    elif args.plan == "shortcut":
        plan = shortcut_plan(args.seeds, max_epochs=args.max_epochs)
    else:
        plan = default_plan(args.seeds, max_epochs=args.max_epochs)
    if args.report_only:
        runs = json.loads((args.out / "runs.json").read_text())["runs"]
    else:
        dataset = load_many(args.data, args.layout)
        runs = run_study(
            dataset, args.out, plan, cache=args.cache, progress=not args.quiet, only=args.factor
        )
    if args.factor:
        plan.factors = {k: v for k, v in plan.factors.items() if k in args.factor}
    report = write_report(runs, plan, args.out, title=args.title)
    print(f"{len(runs)} runs; report: {report}")
    return 0


def cmd_heatmap_study(args: argparse.Namespace) -> int:
    from ml.research.heatmaps import run_heatmap_study

    report = run_heatmap_study(
        args.data,
        args.out,
        model_path=args.model,
        splits_csv=args.splits,
        per_source=args.per_source,
        sanity_images=args.sanity_images,
        methods=args.method,
        progress=not args.quiet,
    )
    print(f"report: {report}")
    return 0


def cmd_lung_check(args: argparse.Namespace) -> int:
    from ml.research.heatmaps import lung_quality

    r = lung_quality(args.covid, args.out)
    print(
        f"{r['n']} images with a lungVAE mask: Dice {r['dice']['mean']:.3f} ± "
        f"{r['dice']['sd']:.3f} (median {r['dice']['median']:.3f}); prior fallback used "
        f"{r['prior_used']}x; prior alone {r['dice_prior_only']['mean']:.3f}; "
        f"Dice < 0.5: {r['dice_below_0_5']}"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ml.models.architectures import ARCHITECTURES

    parser = argparse.ArgumentParser(prog="python -m ml", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="load datasets and report kept/excluded counts")
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--layout", default="auto")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a model and evaluate it on the test split")
    _add_data_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--name", default="model")
    p.add_argument("--architecture", choices=ARCHITECTURES)
    p.add_argument("--input-size", dest="input_size", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--learning-rate", dest="learning_rate", type=float)
    p.add_argument("--width", type=int)
    p.add_argument(
        "--train-from-block",
        dest="train_from_block",
        type=int,
        help="efficientnet_lite0: keep the ImageNet weights of the layers before this block "
        "(default 0: fine-tune all)",
    )
    p.add_argument("--no-augment", dest="augment", action="store_const", const=False)
    p.add_argument(
        "--no-gradcam-animation",
        dest="gradcam_animation",
        action="store_const",
        const=False,
        help="do not write NAME.gradcam.gif (Grad-CAM of 3 validation images per epoch)",
    )
    p.add_argument("--patience", type=int)
    p.add_argument(
        "--min-epochs",
        dest="min_epochs",
        type=int,
        help="no early stop (and no best weights kept) before this epoch",
    )
    p.add_argument(
        "--preprocessing",
        type=int,
        choices=[1, 2],
        help="1: whole image letterboxed; 2: lung-field crop + CLAHE (needs the lung model)",
    )
    p.add_argument(
        "--mask-outside",
        dest="mask_outside",
        action="store_const",
        const=True,
        help="v2: set everything outside the dilated lung mask to 0",
    )
    p.add_argument(
        "--mask-dilation",
        dest="mask_dilation",
        type=float,
        help="v2 with --mask-outside: how far the kept lung mask grows, share of the frame "
        "side (default 0.04)",
    )
    p.add_argument(
        "--balanced-sampling",
        dest="balanced_sampling",
        action="store_const",
        const=True,
        help="sample batches evenly over source x class (instead of class weights)",
    )
    p.add_argument(
        "--acquisition-augment",
        dest="acquisition_augment",
        action="store_const",
        const=True,
        help="crops, gamma, blur/sharpen, noise, JPEG, down-up sampling against source cues",
    )
    p.add_argument(
        "--lung-penalty",
        dest="lung_penalty",
        type=float,
        help="lambda of the input-gradient-outside-the-lungs penalty (Ross et al. 2017)",
    )
    p.add_argument(
        "--penalty-on",
        dest="penalty_on",
        choices=["gradient", "gradcam"],
        help="what the lung penalty measures: input gradients (default) or Grad-CAM",
    )
    p.add_argument(
        "--operating-point",
        dest="operating_point",
        choices=["argmax", "val-macro-f1", "val-specificity"],
        help="per-class logit offsets chosen on the validation split and written into the "
        "model: val-macro-f1 (best macro-F1) or val-specificity (normals called normal and "
        "non-COVID-19 kept out of COVID-19 at --normal-specificity / --covid19-specificity, "
        "then the best macro-F1); default argmax: none",
    )
    p.add_argument("--normal-specificity", dest="normal_specificity", type=float)
    p.add_argument("--covid19-specificity", dest="covid19_specificity", type=float)
    p.add_argument(
        "--held-out-normals",
        dest="held_out_normals",
        nargs="+",
        metavar="SOURCE",
        help="for each source, one more training without its normals, reporting how many of "
        "them it calls normal (auto: every adult source with normals)",
    )
    p.add_argument(
        "--no-shortcut-tests",
        dest="shortcut_tests",
        action="store_const",
        const=False,
        help="skip lungs-blanked / within-source / Grad-CAM-mass tests",
    )
    p.add_argument("--cache", type=Path, default=None, help="cache preprocessed arrays here")
    p.add_argument(
        "--report-split",
        dest="report_split",
        choices=["test", "val"],
        help="val: score the validation split (choosing settings); test: the default",
    )
    p.add_argument("--split-level", dest="split_level", choices=["patient", "image"])
    p.add_argument("--val-fraction", dest="val_fraction", type=float)
    p.add_argument("--test-fraction", dest="test_fraction", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--bootstrap", dest="n_bootstrap", type=int)
    p.add_argument("--limit", type=int, help="train on a random subset of this many images")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="evaluate a model on its test split (or all data)")
    p.add_argument("--model", type=Path, required=True)
    _add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--out", type=Path, default=Path("evaluation"))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="classify images")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)

    from ml.explain.methods import METHODS

    p = sub.add_parser("explain", help="heatmap explanations with faithfulness scores")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--method", choices=METHODS, default="gradcam")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for .npy maps and .png")
    p.add_argument("--target", help="class to explain (default: the predicted class)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("sanity", help="model-randomisation sanity check of a method")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument(
        "--method", choices=METHODS, action="append", help="repeat for several (default gradcam)"
    )
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--mode", choices=["cascading", "full"], default="cascading")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_sanity)

    bundled = Path(__file__).resolve().parent / "bundled"

    p = sub.add_parser("study", help="vary split, data size and hyper-parameters over seeds")
    _add_data_args(p)
    p.add_argument("--out", type=Path, required=True, help="runs.json, report.md, plots")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--max-epochs", dest="max_epochs", type=int, default=12)
    p.add_argument(
        "--factor",
        action="append",
        choices=[
            "train_fraction",
            "data_fraction",
            "learning_rate",
            "augment",
            "input_size",
            "split_level",
        ],
        help="only this factor (repeat); default all",
    )
    p.add_argument("--cache", type=Path, default=Path("var/study-cache"))
    p.add_argument("--quick", action="store_true", help="tiny grid: 32/48 px, 1 epoch, 1 seed")
    p.add_argument(
        "--plan",
        choices=["training", "shortcut"],
        default="training",
        help="training: split/size/parameters (v1); shortcut: the anti-shortcut factors",
    )
    p.add_argument("--title", default="Training study")
    p.add_argument(
        "--report-only", action="store_true", help="rewrite the report from runs.json, no training"
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("heatmap-study", help="heatmap faithfulness, sanity and lung-mass study")
    _add_data_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", type=Path, default=bundled / "cxr-compact.keras")
    p.add_argument("--splits", type=Path, default=bundled / "splits.csv")
    p.add_argument("--per-source", dest="per_source", type=int, default=30)
    p.add_argument("--sanity-images", dest="sanity_images", type=int, default=6)
    p.add_argument("--method", choices=METHODS, action="append", help="default: all")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_heatmap_study)

    p = sub.add_parser("lung-check", help="lung-field heuristic vs the lungVAE masks (Dice)")
    p.add_argument("--covid", type=Path, required=True, help="the covid-chestxray folder")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_lung_check)

    from ml.lungs.cli import add_lungs_parser
    from ml.serving.runtime import add_lite_parser

    add_lungs_parser(sub)
    add_lite_parser(sub)

    from ml.ct.cli import add_ct_parser

    add_ct_parser(sub)

    from ml.generate.cli import add_generate_parser

    add_generate_parser(sub)

    from ml.ct.modality import add_modality_parser

    add_modality_parser(sub, bundled)

    for name, func, text in (
        ("ood-fit", cmd_ood_fit, "fit the out-of-distribution input gate on chest X-rays"),
        ("ood-eval", cmd_ood_eval, "chest X-rays accepted per split, non-chest images refused"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--data", nargs="+", type=Path, required=True, help="dataset folders")
        p.add_argument(
            "--splits",
            type=Path,
            default=bundled / "splits.csv",
            help="patient-level split to use (default: the bundled model's)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "ood-fit":
            p.add_argument("--out", type=Path, default=bundled / "ood-gate.npz")
        else:
            p.add_argument("--gate", type=Path, default=bundled / "ood-gate.npz")
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)

    for name, func, text in (
        ("view-fit", cmd_view_fit, "fit the frontal-vs-lateral view check (upload refusal)"),
        ("view-eval", cmd_view_eval, "frontal views accepted, held-out lateral views refused"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--data", nargs="+", type=Path, required=True, help="frontal data folders")
        p.add_argument("--laterals", type=Path, required=True, help="the lateral-views folder")
        p.add_argument("--splits", type=Path, default=bundled / "splits.csv")
        p.add_argument(
            "--extra-frontal",
            dest="extra_frontal",
            nargs="*",
            type=Path,
            default=[],
            help="frontal folders never used to fit, measured as well (e.g. adult-pneumonia)",
        )
        p.add_argument(
            "--gate",
            type=Path,
            default=bundled / "ood-gate.npz",
            help="OOD gate that runs first at upload, for the as-uploaded figures ('none': off)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "view-fit":
            p.add_argument("--out", type=Path, default=bundled / "view-check.npz")
            p.add_argument("--seed", type=int, default=0, help="seed of the lateral patient split")
        else:
            p.add_argument("--check", type=Path, default=bundled / "view-check.npz")
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
        return code
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
