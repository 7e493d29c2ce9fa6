"""``python -m ml lungs train|evaluate|predict``: the lung segmentation model.

python -m ml lungs train --covid DIR --out ml/bundled [--others DIR...]   train + report
python -m ml lungs evaluate --covid DIR [--model M] [--out DIR]          re-evaluate
python -m ml lungs predict [--model M] IMAGE... [--out DIR] [--json]      segment images

Kept apart from ``ml/cli.py`` so the lung commands live with the lung code; nothing
here imports TensorFlow until a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

BUNDLED = Path(__file__).resolve().parent.parent / "bundled"


def cmd_lungs_train(args: argparse.Namespace) -> int:
    from ml.lungs.training import LungTrainConfig, train_lungs

    overrides = {
        name: getattr(args, name)
        for name in ("input_size", "width", "epochs", "patience", "batch_size", "repeats", "seed")
        if getattr(args, name, None) is not None
    }
    if args.learning_rate is not None:
        overrides["learning_rate"] = args.learning_rate
    if args.bootstrap is not None:
        overrides["n_bootstrap"] = args.bootstrap
    if args.negatives is not None:
        overrides["negatives"] = args.negatives
    if args.found_rate_images is not None:
        overrides["found_rate_images"] = args.found_rate_images
    config = LungTrainConfig(**overrides)
    result = train_lungs(
        args.covid,
        args.out,
        config,
        splits_csv=None if str(args.splits).lower() == "none" else args.splits,
        cache_dir=None if str(args.cache).lower() == "none" else args.cache,
        other_sources=args.others,
        limit=args.limit,
        progress=not args.quiet,
    )
    _print_summary(result.card)
    print(f"model:  {result.artifact}")
    print(f"report: {result.report_dir / 'report.md'}")
    return 0


def _ci(summary: dict[str, Any]) -> str:
    if summary["ci95"] is None:
        return f"{summary['mean']:.3f}"
    low, high = summary["ci95"]
    return f"{summary['mean']:.3f} (95% CI {low:.3f}-{high:.3f})"


def _print_summary(card: dict[str, Any]) -> None:
    m = card["metrics"]["per_source"]["covid-chestxray"]
    for label, part in (("U-Net", m), ("heuristic", m["heuristic"])):
        print(
            f"{label:<10} Dice {_ci(part['dice'])}, IoU {_ci(part['iou'])} "
            f"on {m['images']} {m['split']} images of {m['patients']} patients"
        )
    for source, g in card.get("generalisation", {}).get("per_source", {}).items():
        print(f"{source}: lung fields found on {g['found_rate']:.0%} of {g['films']} films")
    if "training" in card:
        t = card["training"]
        print(f"training: {t['seconds']} s, {t['epochs_run']} epochs (best {t['best_epoch']})")


def cmd_lungs_evaluate(args: argparse.Namespace) -> int:
    from ml.lungs.training import LungTrainConfig, evaluate_lungs

    card = evaluate_lungs(
        args.model,
        args.covid,
        args.out,
        splits_csv=None if str(args.splits).lower() == "none" else args.splits,
        other_sources=args.others,
        config=LungTrainConfig(n_bootstrap=args.bootstrap),
        split=args.split,
        update_card=args.update_card,
    )
    _print_summary(card)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_lungs_predict(args: argparse.Namespace) -> int:
    from ml.data.preprocess import open_image
    from ml.lungs.segmenter import LungSegmenter

    segmenter = LungSegmenter.load(args.model)
    rows = []
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for path in args.images:
        result = segmenter.segment(open_image(path))
        row = {
            "image": str(path),
            "found": result.found,
            "message": result.message,
            "area_fraction": round(result.area_fraction, 4),
            "bbox": result.bbox,
            "version": result.version,
        }
        if args.out:
            (args.out / f"{path.stem}.mask.png").write_bytes(result.mask_png())
            (args.out / f"{path.stem}.outline.png").write_bytes(result.outline_png())
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            status = "lungs" if row["found"] else row["message"]
            print(f"{row['image']}: {status}; area {row['area_fraction']:.3f}; bbox {row['bbox']}")
    return 0


def add_lungs_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lungs`` with its own ``train``, ``evaluate`` and ``predict`` sub-commands."""
    lungs = sub.add_parser("lungs", help="lung segmentation U-Net: train, evaluate, predict")
    verbs = lungs.add_subparsers(dest="lungs_command", required=True)
    splits_help = "classifier split to follow (default: the bundled one; 'none': own split)"
    others_help = "folders without masks (pediatric, NIH) for found rates and contact sheets"

    p = verbs.add_parser("train", help="train on the lungVAE masks, evaluate, write the card")
    p.add_argument("--covid", type=Path, required=True, help="the covid-chestxray folder")
    p.add_argument("--out", type=Path, required=True, help="folder for lung-unet.keras + card")
    p.add_argument("--others", nargs="*", type=Path, default=[], help=others_help)
    p.add_argument("--splits", type=Path, default=BUNDLED / "splits.csv", help=splits_help)
    p.add_argument("--cache", type=Path, default=Path("var/cache"), help="array cache ('none')")
    p.add_argument("--input-size", dest="input_size", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--patience", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--learning-rate", dest="learning_rate", type=float)
    p.add_argument("--repeats", type=int, help="augmented copies of each image per epoch")
    p.add_argument(
        "--negatives",
        type=float,
        help="share of training variants inverted/upside down/turned with an empty target",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--bootstrap", type=int)
    p.add_argument("--found-rate-images", dest="found_rate_images", type=int)
    p.add_argument("--limit", type=int, help="only this many images per split (smoke runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_lungs_train)

    p = verbs.add_parser("evaluate", help="Dice/IoU on held-out patients, sheets, report")
    p.add_argument("--covid", type=Path, required=True)
    p.add_argument("--model", type=Path, default=BUNDLED / "lung-unet.keras")
    p.add_argument("--out", type=Path, default=Path("lungs-evaluation"))
    p.add_argument("--others", nargs="*", type=Path, default=[], help=others_help)
    p.add_argument("--splits", type=Path, default=BUNDLED / "splits.csv", help=splits_help)
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"])
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument(
        "--update-card",
        dest="update_card",
        action="store_true",
        help="also write the figures into the model's card (use with --out <model dir>/"
        "lungs-report to refresh the bundled report)",
    )
    p.set_defaults(func=cmd_lungs_evaluate)

    p = verbs.add_parser("predict", help="segment images; print found/area/box")
    p.add_argument("--model", type=Path, default=BUNDLED / "lung-unet.keras")
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="write NAME.mask.png and NAME.outline.png here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_lungs_predict)
