"""``python -m ml classifier train|evaluate|predict|explain|sanity``: the X-ray classifier.

python -m ml classifier train --data DIR... --out DIR       train, evaluate on the test split
python -m ml classifier evaluate --model M --data DIR...    re-evaluate (its own test split)
python -m ml classifier predict --model M IMAGE... [--json] classify images
python -m ml classifier explain --model M --method gradcam IMAGE... --out DIR  heatmaps
python -m ml classifier sanity --model M --method gradcam IMAGE... [--json]    randomisation

Kept apart from ``ml/cli.py`` (which only routes), like ``ml lungs``; nothing here
imports TensorFlow until a command runs, except the parser's lists of architectures and
explanation methods.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from ml.data.cli import add_data_args

BUNDLED_GATE = Path(__file__).resolve().parent.parent / "bundled" / "ood-gate.npz"

log = logging.getLogger("ml")


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


def cmd_drift_reference(args: argparse.Namespace) -> int:
    """The drift reference of a model: the features of :mod:`ml.models.drift` on its
    test split (the split written beside the model), sampled, as JSON."""
    from ml.data.loaders import load_many
    from ml.data.splits import read_splits_csv, saved_split_names
    from ml.models.artifacts import read_card
    from ml.models.drift import REFERENCE_NAME
    from ml.models.drift_reference import write_reference
    from ml.serving.classifier import Classifier
    from ml.serving.ood import OodGate

    card = read_card(args.model)
    classifier = Classifier.load(args.model, expected_sha256=card.get("sha256"), card=card)
    saved = Path(args.model).parent / "splits.csv"
    if not saved.is_file():
        print(f"No split beside the model ({saved}).", file=sys.stderr)
        return 2
    records = load_many(args.data, args.layout).records
    names = saved_split_names(records, read_splits_csv(saved))
    records = [r for r, name in zip(records, names, strict=True) if name == args.split]
    if not records:
        print(f"No {args.split} images of the model's split in these folders.", file=sys.stderr)
        return 2
    out = args.out or Path(args.model).parent / REFERENCE_NAME
    write_reference(
        classifier,
        records,
        out,
        gate=OodGate.load(args.gate),
        split=args.split,
        size=args.size,
    )
    print(f"{len(records)} {args.split} images -> {out}")
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


def add_classifier_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``classifier`` with ``train``, ``evaluate``, ``predict``, ``explain`` and
    ``sanity``."""
    from ml.explain.methods import METHODS

    task = sub.add_parser(
        "classifier", help="X-ray classifier: train, evaluate, predict, explain, sanity"
    )
    verbs = task.add_subparsers(dest="classifier_command", required=True)
    _add_train_parser(verbs)

    p = verbs.add_parser("evaluate", help="evaluate a model on its test split (or all data)")
    p.add_argument("--model", type=Path, required=True)
    add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--out", type=Path, default=Path("evaluation"))
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = verbs.add_parser(
        "drift-reference", help="the drift monitor's reference: features on the test split"
    )
    p.add_argument("--model", type=Path, required=True)
    add_data_args(p)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--gate", type=Path, default=BUNDLED_GATE)
    p.add_argument("--size", type=int, default=500, help="values kept per feature")
    p.add_argument("--out", type=Path, default=None, help="default: drift-reference.json beside")
    p.set_defaults(func=cmd_drift_reference)

    p = verbs.add_parser("predict", help="classify images")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_predict)

    p = verbs.add_parser("explain", help="heatmap explanations with faithfulness scores")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--method", choices=METHODS, default="gradcam")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--out", type=Path, required=True, help="folder for .npy maps and .png")
    p.add_argument("--target", help="class to explain (default: the predicted class)")
    p.set_defaults(func=cmd_explain)

    p = verbs.add_parser("sanity", help="model-randomisation sanity check of a method")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument(
        "--method", choices=METHODS, action="append", help="repeat for several (default gradcam)"
    )
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--mode", choices=["cascading", "full"], default="cascading")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_sanity)


def _add_train_parser(verbs: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from ml.models.architectures import ARCHITECTURES

    p = verbs.add_parser("train", help="train a model and evaluate it on the test split")
    add_data_args(p)
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
    _add_recipe_args(p)
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


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    """The training recipe's measures against shortcuts and its operating-point rule."""
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
