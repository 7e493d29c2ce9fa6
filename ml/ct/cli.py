"""``python -m ml ct train|evaluate|predict``: the CT lesion segmentation model.

python -m ml ct train --zenodo DIR --medseg DIR --out DIR [--zenodo-only] [--epochs N]
python -m ml ct evaluate --model F --zenodo DIR --medseg DIR --out DIR [--cross-model F]
python -m ml ct predict --model F IMAGE... [--out DIR] [--json]

Nothing here imports TensorFlow until a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

BUNDLED_CT = Path(__file__).resolve().parent.parent / "bundled" / "ct-seg" / "ct-seg.keras"


def _none_or_path(value: str) -> Path | None:
    return None if value.lower() == "none" else Path(value)


def cmd_ct_train(args: argparse.Namespace) -> int:
    from ml.ct.training import CTTrainConfig, train_ct

    names = (
        "width",
        "depth",
        "epochs",
        "patience",
        "batch_size",
        "learning_rate",
        "zenodo_per_epoch",
        "medseg_repeats",
        "seed",
        "max_minutes",
    )
    overrides: dict[str, Any] = {n: getattr(args, n) for n in names if getattr(args, n) is not None}
    if args.bootstrap is not None:
        overrides["n_bootstrap"] = args.bootstrap
    config = CTTrainConfig(zenodo_only=args.zenodo_only, **overrides)
    if args.normalise is not None:
        config.preprocessing = {**config.preprocessing, "normalise": args.normalise}
    if args.medseg is None and not args.zenodo_only:
        raise ValueError("--medseg is required unless --zenodo-only.")
    result = train_ct(
        args.zenodo,
        args.medseg,
        args.out,
        config,
        cache_dir=args.cache,
        cross_model=args.cross_model,
        evaluate=not args.no_evaluate,
        progress=not args.quiet,
    )
    _print_summary(result.card)
    print(f"model:  {result.artifact}")
    if result.report_dir is not None:
        print(f"report: {result.report_dir / 'report.md'}")
    return 0


def _ci(entry: dict[str, Any] | None) -> str:
    from ml.ct.evaluation import fmt

    return fmt(entry)


def _print_summary(card: dict[str, Any]) -> None:
    m = card.get("metrics")
    if m:
        for source, figures in m["per_set"].items():
            for kind in ("lungs", "infection", "ggo", "consolidation"):
                if kind in figures:
                    print(f"{source:<7} {kind:<14} Dice {_ci(figures[kind]['dice'])}")
        for name, t in m["targets"].items():
            outcome = "met" if t["met"] else "MISSED"
            print(f"target {name} >= {t['target']}: {t['value']:.3f} {outcome}")
        if m.get("cross_set"):
            e = m["cross_set"]["medseg_test_infection"]
            print(f"cross-set (zenodo only) MedSeg infection Dice {_ci(e['dice'])}")
    t = card.get("training")
    if t:
        print(f"training: {t['seconds']} s, {t['epochs_run']} epochs (best {t['best_epoch']})")


def cmd_ct_evaluate(args: argparse.Namespace) -> int:
    from ml.ct.evaluation import evaluate_ct
    from ml.ct.training import CTTrainConfig

    if args.zenodo is None and args.medseg is None:
        raise ValueError("Give --zenodo and/or --medseg.")
    card = evaluate_ct(
        args.model,
        args.zenodo,
        args.medseg,
        args.out,
        cross_model=args.cross_model,
        config=CTTrainConfig(n_bootstrap=args.bootstrap),
        update_card=args.update_card,
    )
    _print_summary(card)
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


def cmd_ct_predict(args: argparse.Namespace) -> int:
    from ml.ct.data import read_gray
    from ml.ct.segmenter import CTSegmenter

    for path in args.images:
        if not Path(path).is_file():
            raise FileNotFoundError(f"{path} not found.")
    segmenter = CTSegmenter.load(args.model)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for path in args.images:
        try:
            gray = read_gray(path)
        except OSError as exc:
            raise ValueError(f"{path}: not an image ({exc}).") from exc
        result = segmenter.segment(gray)
        row = {
            "image": str(path),
            "lungs_found": result.lungs_found,
            "message": result.message,
            "percent_affected": result.percent_affected,
            "percent_ggo": result.percent_ggo,
            "percent_consolidation": result.percent_consolidation,
            "lung_area": result.lung_area,
            "infection_area": result.infection_area,
            "version": result.version,
        }
        if args.out:
            for kind in ("lungs", "infection", "ggo", "consolidation", "lung_outline"):
                (args.out / f"{path.stem}.{kind}.png").write_bytes(result.mask_png(kind))
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            if row["lungs_found"]:
                print(
                    f"{row['image']}: {row['percent_affected']:.1f} % of the lung affected "
                    f"(ground-glass {row['percent_ggo']:.1f} %, consolidation "
                    f"{row['percent_consolidation']:.1f} %); lung {row['lung_area']} px, "
                    f"infection {row['infection_area']} px"
                )
            else:
                print(f"{row['image']}: {row['message']}")
    return 0


def add_ct_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ct`` with its own ``train``, ``evaluate`` and ``predict`` sub-commands."""
    ct = sub.add_parser("ct", help="CT lesion segmentation U-Net: train, evaluate, predict")
    verbs = ct.add_subparsers(dest="ct_command", required=True)

    p = verbs.add_parser("train", help="train on zenodo + MedSeg, evaluate, write the card")
    p.add_argument("--zenodo", type=Path, required=True, help="the ct-covid-seg/zenodo folder")
    p.add_argument("--medseg", type=Path, help="the ct-covid-seg/medseg folder")
    p.add_argument("--out", type=Path, required=True, help="folder for ct-seg.keras + card")
    p.add_argument(
        "--zenodo-only",
        dest="zenodo_only",
        action="store_true",
        help="train on zenodo only (the cross-set model); --medseg is then only evaluated",
    )
    p.add_argument(
        "--cross-model",
        dest="cross_model",
        type=Path,
        help="a zenodo-only model to report on the MedSeg test split beside this one",
    )
    p.add_argument("--cache", type=_none_or_path, default=Path("var/cache/ct"))
    p.add_argument("--width", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--patience", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--learning-rate", dest="learning_rate", type=float)
    p.add_argument("--zenodo-per-epoch", dest="zenodo_per_epoch", type=int)
    p.add_argument("--medseg-repeats", dest="medseg_repeats", type=int)
    p.add_argument("--max-minutes", dest="max_minutes", type=float, help="training time budget")
    p.add_argument("--normalise", choices=["percentile", "clahe"])
    p.add_argument("--seed", type=int)
    p.add_argument("--bootstrap", type=int)
    p.add_argument("--no-evaluate", dest="no_evaluate", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_ct_train)

    p = verbs.add_parser("evaluate", help="Dice/IoU on the test slices, contact sheets, report")
    p.add_argument("--model", type=Path, default=BUNDLED_CT)
    p.add_argument("--zenodo", type=Path)
    p.add_argument("--medseg", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--cross-model", dest="cross_model", type=Path)
    p.add_argument("--bootstrap", type=int, default=2000)
    p.add_argument(
        "--update-card",
        dest="update_card",
        action="store_true",
        help="also write the figures into the model's card",
    )
    p.set_defaults(func=cmd_ct_evaluate)

    p = verbs.add_parser("predict", help="segment slices; print the percent of lung affected")
    p.add_argument("--model", type=Path, default=BUNDLED_CT)
    p.add_argument("images", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="write NAME.<mask>.png here")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_ct_predict)
