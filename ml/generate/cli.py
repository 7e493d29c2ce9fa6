"""``python -m ml generate train|sample|evaluate``: the synthetic chest X-ray generator.

python -m ml generate train --data DIR... [--out ml/bundled/generator] [--epochs N]
python -m ml generate sample --class covid19 --n 16 --out grid.png [--model M] [--seed S]
python -m ml generate evaluate --data DIR... [--model M] [--out DIR] [--quick]

Kept apart from ``ml/cli.py`` (which only adds the parser), like ``ml lungs``; nothing
here imports TensorFlow until a command runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

from ml.generate.data import CACHE, CLASSIFIER, GAN_SIZE, SPLITS

BUNDLED = Path(__file__).resolve().parent.parent / "bundled" / "generator"


def _none(value: Path | None) -> Path | None:
    return None if value is None or str(value).lower() == "none" else value


def _data(args: argparse.Namespace) -> Any:
    from ml.generate.data import load_gan_data
    from ml.models.artifacts import read_card

    return load_gan_data(
        args.data,
        classifier_card=read_card(args.classifier),
        splits_csv=_none(args.splits),
        size=args.size,
        cache=_none(args.cache),
        layout=args.layout,
        progress=not args.quiet,
    )


def cmd_generate_train(args: argparse.Namespace) -> int:
    from ml.generate.features import ClassifierFeatures
    from ml.generate.training import GanConfig, train_generator

    overrides = {
        name: getattr(args, name)
        for name in ("epochs", "width", "d_width", "batch_size", "seed", "snapshot_every")
        if getattr(args, name, None) is not None
    }
    config = GanConfig(size=args.size, **overrides)
    data = _data(args)
    features = ClassifierFeatures(args.classifier)
    result = train_generator(
        data,
        args.out,
        config,
        work_dir=args.work,
        features=features,
        feature_info=features.describe(),
        max_minutes=args.max_minutes,
        progress=not args.quiet,
        command="python -m ml generate " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 else []),
    )
    t = result.card["training"]
    print(f"generator: {result.artifact}")
    print(f"animation: {result.gif}")
    print(
        f"training: {t['epochs_run']} epochs, {t['seconds']} s ({t['seconds_per_epoch']} s/epoch),"
        f" load {t['load_average_start_this_run']} -> {t['load_average_end']}"
    )
    print(f"chosen on val: epoch {result.card['selection']['chosen_epoch']}")
    return 0


def cmd_generate_sample(args: argparse.Namespace) -> int:
    from ml.generate.sampler import Generator
    from ml.generate.watermark import grid_png

    generator = Generator.load(args.model)
    images = generator.sample(args.label, args.n, seed=args.seed)
    png = grid_png(
        images,
        label=args.label,
        model=f"{generator.name}@{generator.sha256[:12]}",
        seed=args.seed,
        columns=args.columns,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(png)
    print(f"{args.n} synthetic {args.label} samples (seed {args.seed}) -> {args.out}")
    return 0


def cmd_generate_evaluate(args: argparse.Namespace) -> int:
    from ml.generate.evaluation import EvalConfig, evaluate_generator

    if args.report_only:
        import json

        from ml.generate.report import write_report
        from ml.models.artifacts import read_card

        results = json.loads((args.out / "results.json").read_text())
        print(f"report: {write_report(results, read_card(args.model), args.out)}")
        return 0
    if not args.data:
        print("error: --data is required (unless --report-only)", file=sys.stderr)
        return 2

    config = EvalConfig(
        seeds=tuple(args.seeds),
        usefulness_epochs=args.usefulness_epochs,
        c2st_epochs=args.c2st_epochs,
        n_boot=args.bootstrap,
        skip_usefulness=args.skip_usefulness,
    )
    report = evaluate_generator(
        _data(args),
        args.model,
        args.out,
        config,
        classifier=args.classifier,
        progress=not args.quiet,
        command="python -m ml generate " + shlex.join(sys.argv[2:] if len(sys.argv) > 2 else []),
    )
    print(f"report: {report}")
    return 0


def _add_data(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    p.add_argument("--data", nargs="+", type=Path, required=required, help="X-ray data folders")
    p.add_argument("--layout", default="auto")
    p.add_argument(
        "--splits",
        type=Path,
        default=SPLITS,
        help="the classifier's patient-level split (default: cxr-lungs's)",
    )
    p.add_argument(
        "--classifier",
        type=Path,
        default=CLASSIFIER,
        help="the classifier whose preprocessing and features are used",
    )
    p.add_argument("--size", type=int, default=GAN_SIZE, help="generator resolution (px)")
    p.add_argument("--cache", type=Path, default=CACHE, help="preprocessed arrays ('none': off)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def add_generate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "generate", help="synthetic chest X-ray generator (train/sample/evaluate)"
    )
    gsub = parser.add_subparsers(dest="generate_command", required=True)

    p = gsub.add_parser("train", help="train the generator on the train split")
    _add_data(p)
    p.add_argument("--out", type=Path, default=BUNDLED)
    p.add_argument("--epochs", type=int)
    p.add_argument("--width", type=int)
    p.add_argument("--d-width", dest="d_width", type=int)
    p.add_argument("--batch-size", dest="batch_size", type=int)
    p.add_argument("--snapshot-every", dest="snapshot_every", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--max-minutes",
        dest="max_minutes",
        type=float,
        help="stop after the epoch that passes this wall time (recorded on the card)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=CACHE,
        help="checkpoints (a run with the same settings resumes)",
    )
    p.set_defaults(func=cmd_generate_train)

    p = gsub.add_parser("sample", help="a watermarked PNG grid of synthetic samples")
    p.add_argument("--model", type=Path, default=BUNDLED / "generator.keras")
    p.add_argument(
        "--class", dest="label", required=True, choices=["covid19", "pneumonia", "normal"]
    )
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=cmd_generate_sample)

    p = gsub.add_parser("evaluate", help="FD/KID, precision/recall, memorisation, usefulness")
    _add_data(p, required=False)
    p.add_argument("--model", type=Path, default=BUNDLED / "generator.keras")
    p.add_argument("--out", type=Path, default=BUNDLED / "report")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--usefulness-epochs", dest="usefulness_epochs", type=int, default=10)
    p.add_argument("--c2st-epochs", dest="c2st_epochs", type=int, default=8)
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument(
        "--skip-usefulness",
        dest="skip_usefulness",
        action="store_true",
        help="no classifier training runs (distribution and memorisation figures only)",
    )
    p.add_argument(
        "--report-only",
        dest="report_only",
        action="store_true",
        help="rewrite report.md from OUT/results.json (and OUT/notes.md), measure nothing",
    )
    p.set_defaults(func=cmd_generate_evaluate)
