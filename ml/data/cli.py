"""``python -m ml data summary DIR...``: what the loaders keep and exclude, and why.

Also the ``--data``/``--layout`` arguments every command that reads dataset folders
shares. No TensorFlow here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LAYOUTS = ["auto", "covid-chestxray", "pediatric", "nih", "generic"]


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """``--data DIR...`` and ``--layout``, as every command that loads dataset folders
    takes them."""
    parser.add_argument("--data", nargs="+", type=Path, required=True, help="dataset folders")
    parser.add_argument(
        "--layout",
        default="auto",
        choices=LAYOUTS,
        help="dataset layout (default: detect from each folder)",
    )


def cmd_data_summary(args: argparse.Namespace) -> int:
    from ml.data.loaders import load_many

    dataset = load_many(args.dirs, args.layout)
    print(json.dumps(dataset.summary(), indent=2))
    return 0


def add_data_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``data`` with its ``summary`` sub-command."""
    data = sub.add_parser("data", help="dataset folders: what the loaders keep and exclude")
    verbs = data.add_subparsers(dest="data_command", required=True)
    p = verbs.add_parser("summary", help="load datasets and report kept/excluded counts")
    p.add_argument("dirs", nargs="+", type=Path)
    p.add_argument("--layout", default="auto")
    p.set_defaults(func=cmd_data_summary)
