"""``python -m ml study run|heatmaps|lung-check``: the offline studies behind
docs/evaluation.md.

python -m ml study run --data DIR... --out DIR [--quick]      split/size/parameter study
python -m ml study heatmaps --data DIR... --out DIR           heatmaps vs lungs, faithfulness
python -m ml study lung-check --covid DIR --out DIR           lung heuristic vs lungVAE masks

Nothing here imports TensorFlow until a command runs (the parser lists the explanation
methods).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ml.data.cli import add_data_args

BUNDLED = Path(__file__).resolve().parent.parent / "bundled"


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


def add_study_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``study`` with ``run``, ``heatmaps`` and ``lung-check``."""
    from ml.explain.methods import METHODS

    task = sub.add_parser("study", help="offline studies: run, heatmaps, lung-check")
    verbs = task.add_subparsers(dest="study_command", required=True)

    p = verbs.add_parser("run", help="vary split, data size and hyper-parameters over seeds")
    add_data_args(p)
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

    p = verbs.add_parser("heatmaps", help="heatmap faithfulness, sanity and lung-mass study")
    add_data_args(p)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--model", type=Path, default=BUNDLED / "cxr-compact.keras")
    p.add_argument("--splits", type=Path, default=BUNDLED / "splits.csv")
    p.add_argument("--per-source", dest="per_source", type=int, default=30)
    p.add_argument("--sanity-images", dest="sanity_images", type=int, default=6)
    p.add_argument("--method", choices=METHODS, action="append", help="default: all")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_heatmap_study)

    p = verbs.add_parser("lung-check", help="lung-field heuristic vs the lungVAE masks (Dice)")
    p.add_argument("--covid", type=Path, required=True, help="the covid-chestxray folder")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_lung_check)
