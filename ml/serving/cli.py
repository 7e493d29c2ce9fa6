"""``python -m ml ood fit|evaluate`` and ``python -m ml view fit|evaluate``: the input
checks an upload passes before the classifier sees it.

python -m ml ood fit --data DIR... [--out ml/bundled/ood-gate.npz]        fit the input gate
python -m ml ood evaluate --data DIR... [--gate G] [--json]               measure it
python -m ml view fit --data DIR... --laterals DIR [--out O]      fit the frontal/lateral check
python -m ml view evaluate --data DIR... --laterals DIR [--check C] [--json]  measure it

Nothing here imports TensorFlow until a command runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

BUNDLED = Path(__file__).resolve().parent.parent / "bundled"


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


def cmd_ood_evaluate(args: argparse.Namespace) -> int:
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


def cmd_view_evaluate(args: argparse.Namespace) -> int:
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


def add_ood_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``ood`` with ``fit`` and ``evaluate``: the out-of-distribution input gate."""
    task = sub.add_parser("ood", help="out-of-distribution input gate: fit, evaluate")
    verbs = task.add_subparsers(dest="ood_command", required=True)
    for name, func, text in (
        ("fit", cmd_ood_fit, "fit the out-of-distribution input gate on chest X-rays"),
        ("evaluate", cmd_ood_evaluate, "chest X-rays accepted per split, non-chest images refused"),
    ):
        p = verbs.add_parser(name, help=text)
        p.add_argument("--data", nargs="+", type=Path, required=True, help="dataset folders")
        p.add_argument(
            "--splits",
            type=Path,
            default=BUNDLED / "splits.csv",
            help="patient-level split to use (default: the bundled model's)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "fit":
            p.add_argument("--out", type=Path, default=BUNDLED / "ood-gate.npz")
        else:
            p.add_argument("--gate", type=Path, default=BUNDLED / "ood-gate.npz")
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)


def add_view_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``view`` with ``fit`` and ``evaluate``: the frontal-vs-lateral view check."""
    task = sub.add_parser("view", help="frontal-vs-lateral view check: fit, evaluate")
    verbs = task.add_subparsers(dest="view_command", required=True)
    for name, func, text in (
        ("fit", cmd_view_fit, "fit the frontal-vs-lateral view check (upload refusal)"),
        ("evaluate", cmd_view_evaluate, "frontal views accepted, held-out lateral views refused"),
    ):
        p = verbs.add_parser(name, help=text)
        p.add_argument("--data", nargs="+", type=Path, required=True, help="frontal data folders")
        p.add_argument("--laterals", type=Path, required=True, help="the lateral-views folder")
        p.add_argument("--splits", type=Path, default=BUNDLED / "splits.csv")
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
            default=BUNDLED / "ood-gate.npz",
            help="OOD gate that runs first at upload, for the as-uploaded figures ('none': off)",
        )
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        if name == "fit":
            p.add_argument("--out", type=Path, default=BUNDLED / "view-check.npz")
            p.add_argument("--seed", type=int, default=0, help="seed of the lateral patient split")
        else:
            p.add_argument("--check", type=Path, default=BUNDLED / "view-check.npz")
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
