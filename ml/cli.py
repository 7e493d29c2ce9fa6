"""``python -m ml``: the data-science CLI. No database, no web app.

Every command is ``python -m ml <task> <verb>``:

python -m ml data summary DIR...                          what the loaders keep and exclude
python -m ml classifier train --data DIR... --out DIR     train, evaluate on the test split
python -m ml classifier evaluate --model M --data DIR...  re-evaluate (its own test split)
python -m ml classifier predict --model M IMAGE... [--json]         classify images
python -m ml classifier explain --model M --method gradcam IMAGE... --out DIR   heatmaps
python -m ml classifier sanity --model M --method gradcam IMAGE...  randomisation check
python -m ml lungs train|evaluate|predict ...             lung segmentation U-Net
python -m ml ct train|evaluate|predict ...                CT lesion segmentation U-Net
python -m ml generate train|sample|evaluate ...           synthetic X-ray generator (GAN)
python -m ml ood fit|evaluate --data DIR...               the out-of-distribution input gate
python -m ml view fit|evaluate --data DIR... --laterals DIR         frontal/lateral check
python -m ml ct-modality fit|evaluate --ct DIR --data DIR...        CT-vs-X-ray upload check
python -m ml lite convert MODEL.keras...                  .tflite files for LiteRT
python -m ml study run|heatmaps|lung-check ...            the offline studies

The spellings before this shape (``ml train``, ``ml ood-fit``, ``ml heatmap-study``, ...)
still work for one release: they print a one-line deprecation note on stderr.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

log = logging.getLogger("ml")

BUNDLED = Path(__file__).resolve().parent / "bundled"

# Old spelling -> the ``<task> <verb>`` it stands for (kept for one release).
OLD_SPELLINGS: dict[str, tuple[str, str]] = {
    "train": ("classifier", "train"),
    "evaluate": ("classifier", "evaluate"),
    "predict": ("classifier", "predict"),
    "explain": ("classifier", "explain"),
    "sanity": ("classifier", "sanity"),
    "ood-fit": ("ood", "fit"),
    "ood-eval": ("ood", "evaluate"),
    "view-fit": ("view", "fit"),
    "view-eval": ("view", "evaluate"),
    "ct-modality-fit": ("ct-modality", "fit"),
    "ct-modality-eval": ("ct-modality", "evaluate"),
    "heatmap-study": ("study", "heatmaps"),
    "lung-check": ("study", "lung-check"),
    "lite-convert": ("lite", "convert"),
}
# Tasks whose old spelling had no verb (``ml data DIR...``, ``ml study --data ...``): the
# verb they meant, when the next word is not one of the task's verbs.
OLD_DEFAULT_VERBS: dict[str, tuple[str, frozenset[str]]] = {
    "data": ("summary", frozenset({"summary"})),
    "study": ("run", frozenset({"run", "heatmaps", "lung-check"})),
}


def translate_old_spelling(argv: list[str]) -> tuple[list[str], str | None]:
    """``argv`` in the ``<task> <verb>`` shape, and a deprecation note when it used an old
    spelling (None otherwise). Options before the command (``-v``) are kept in place."""
    at = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if at is None:
        return argv, None
    word = argv[at]
    if word in OLD_SPELLINGS:
        new = list(OLD_SPELLINGS[word])
    elif word in OLD_DEFAULT_VERBS:
        verb, verbs = OLD_DEFAULT_VERBS[word]
        following = argv[at + 1] if at + 1 < len(argv) else None
        if following is None or following in verbs or following in ("-h", "--help"):
            return argv, None
        new = [word, verb]
    else:
        return argv, None
    note = (
        f"note: 'python -m ml {word}' is deprecated and goes in the next release; "
        f"use 'python -m ml {' '.join(new)}'."
    )
    return [*argv[:at], *new, *argv[at + 1 :]], note


def build_parser() -> argparse.ArgumentParser:
    from ml.ct.cli import add_ct_parser
    from ml.ct.modality import add_modality_parser
    from ml.data.cli import add_data_parser
    from ml.generate.cli import add_generate_parser
    from ml.lungs.cli import add_lungs_parser
    from ml.models.cli import add_classifier_parser
    from ml.research.cli import add_study_parser
    from ml.serving.cli import add_ood_parser, add_view_parser
    from ml.serving.runtime import add_lite_parser

    parser = argparse.ArgumentParser(
        prog="python -m ml",
        description=__doc__.split("\n\n")[0],
        epilog="Every task has its verbs: python -m ml <task> --help.",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<task>")
    add_data_parser(sub)
    add_classifier_parser(sub)
    add_lungs_parser(sub)
    add_ct_parser(sub)
    add_generate_parser(sub)
    add_ood_parser(sub)
    add_view_parser(sub)
    add_modality_parser(sub, BUNDLED)
    add_lite_parser(sub)
    add_study_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv, note = translate_old_spelling(sys.argv[1:] if argv is None else list(argv))
    if note is not None:
        print(note, file=sys.stderr)
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
