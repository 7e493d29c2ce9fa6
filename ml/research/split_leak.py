"""Split leaks through duplicate images: the same radiograph (or the same patient) under
two patient ids, one copy in train and one in val or test.

The patient-level split keeps a patient's images together only as far as the patient ids
are right. covid-chestxray collects figures from publications and sites, and some
patients were published twice under different ids. This finds the candidates and says
what they did to a model's test figures:

1. every image of the split file as a 32x32 thumbnail, standardised; pixel-identical
   images (sha256 of the decoded gray pixels) and pairs whose thumbnails correlate at
   ``threshold`` or more, in *different* splits, are the candidates (a human confirms
   them: similar children's films can correlate highly too);
2. with ``--model``, the model's test figures (macro-F1, COVID-19 recall, the
   covid-chestxray COVID-vs-rest AUROC) on the whole test split and without the test
   images of the patients in confirmed pairs (``--confirmed``), both with bootstrap
   intervals. Nothing is chosen on these figures: they only say how much the leak
   flattered the figures already reported.

    python -m ml.research.split_leak --data ../shared/datasets/covid-chestxray \\
        ../shared/datasets/pediatric-pneumonia ../shared/datasets/adult-normal \\
        ../shared/datasets/adult-pneumonia --splits ml/bundled/cxr-lungs/splits.csv \\
        --model ml/bundled/cxr-lungs/cxr-lungs.keras --confirmed cc-201 cc-137 cc-196 \\
        --out docs/split-leak
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

THUMB = 32
ORDER = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class Item:
    key: str
    path: Path
    patient: str
    label: str
    source: str
    split: str


@dataclass(frozen=True)
class Pair:
    a: Item  # the copy in the lower split (train before val before test)
    b: Item
    correlation: float
    identical: bool


def thumbnail(gray: Image.Image) -> np.ndarray:
    """The standardised 32x32 thumbnail whose correlations find near-copies."""
    small = np.asarray(gray.resize((THUMB, THUMB), Image.Resampling.BILINEAR), np.float32)
    flat = small.ravel()
    standardised: np.ndarray = (flat - flat.mean()) / (flat.std() + 1e-6)
    return standardised


def pixel_hash(gray: Image.Image) -> str:
    pixels = np.asarray(gray)
    return hashlib.sha256(str(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def cross_split_pairs(
    items: Sequence[Item], thumbs: np.ndarray, hashes: Sequence[str], threshold: float
) -> list[Pair]:
    """Pairs in different splits that are pixel-identical or whose thumbnails correlate at
    ``threshold`` or more, most alike first."""
    correlation = (thumbs @ thumbs.T) / thumbs.shape[1]
    np.fill_diagonal(correlation, -1.0)
    pairs = []
    for i, j in zip(*np.nonzero(np.triu(correlation >= threshold, k=1)), strict=True):
        pairs.append((int(i), int(j)))
    seen = {frozenset(p) for p in pairs}
    by_hash: dict[str, list[int]] = {}
    for index, digest in enumerate(hashes):
        by_hash.setdefault(digest, []).append(index)
    for group in by_hash.values():
        for k, i in enumerate(group):
            for j in group[k + 1 :]:
                if frozenset((i, j)) not in seen:
                    pairs.append((i, j))
                    seen.add(frozenset((i, j)))
    found = []
    for i, j in pairs:
        if items[i].split == items[j].split:
            continue
        a, b = sorted((items[i], items[j]), key=lambda item: ORDER.get(item.split, -1))
        found.append(
            Pair(a, b, round(float(correlation[i, j]), 4), identical=hashes[i] == hashes[j])
        )
    return sorted(found, key=lambda p: (-p.identical, -p.correlation, p.a.key))


def leaked_test_images(items: Sequence[Item], confirmed: set[str]) -> list[Item]:
    """Test images of the confirmed patients: every image of a patient who, under another
    id, has images in train or val."""
    return [item for item in items if item.split == "test" and item.patient in confirmed]


def _bootstrap(
    values: Any, statistic: Callable[[np.ndarray], float], rng: np.random.Generator, n: int = 1000
) -> list[float]:
    import warnings

    from scipy.stats import bootstrap

    if len(values) < 2:
        return [float("nan"), float("nan")]  # nothing to resample
    with warnings.catch_warnings():  # resamples with one class: ill-defined, NaN
        warnings.simplefilter("ignore")
        result = bootstrap(
            (np.arange(len(values)),),
            lambda idx: statistic(idx.astype(int)),
            n_resamples=n,
            confidence_level=0.95,
            method="percentile",
            random_state=rng,
            vectorized=False,
        )
    return [
        round(float(result.confidence_interval.low), 3),
        round(float(result.confidence_interval.high), 3),
    ]


def split_figures(
    rows: Sequence[dict[str, Any]], classes: Sequence[str], seed: int = 0
) -> dict[str, Any]:
    """Macro-F1, COVID-19 recall and the covid-chestxray COVID-vs-rest AUROC of ``rows``
    (each: label, pred, source, p_covid19), with 95 % percentile bootstrap intervals."""
    from sklearn.metrics import f1_score, recall_score, roc_auc_score

    labels = np.array([r["label"] for r in rows])
    preds = np.array([r["pred"] for r in rows])
    rng = np.random.default_rng(seed)

    def macro_f1(idx: np.ndarray) -> float:
        return float(f1_score(labels[idx], preds[idx], labels=list(classes), average="macro"))

    covid = np.nonzero(labels == "covid19")[0]

    def covid_recall(idx: np.ndarray) -> float:
        chosen = covid[idx]
        return float(
            recall_score(labels[chosen], preds[chosen], labels=["covid19"], average="macro")
        )

    ccx = [r for r in rows if r["source"] == "covid-chestxray"]
    truth = np.array([r["label"] == "covid19" for r in ccx])
    score = np.array([r["p_covid19"] for r in ccx])

    def ccx_auroc(idx: np.ndarray) -> float:
        if truth[idx].all() or not truth[idx].any():
            return float("nan")
        return float(roc_auc_score(truth[idx], score[idx]))

    everything = np.arange(len(rows))
    return {
        "images": len(rows),
        "covid19_images": len(covid),
        "macro_f1": round(macro_f1(everything), 3),
        "macro_f1_ci": _bootstrap(labels, macro_f1, rng),
        "covid19_recall": round(covid_recall(np.arange(len(covid))), 3),
        "covid19_recall_ci": _bootstrap(covid, covid_recall, rng),
        "ccx_images": len(ccx),
        "ccx_covid_auroc": round(ccx_auroc(np.arange(len(ccx))), 3),
        "ccx_covid_auroc_ci": _bootstrap(truth, ccx_auroc, rng),
    }


def read_items(data: Sequence[Path], splits_csv: Path) -> list[Item]:
    from ml.data.loaders import load_many
    from ml.data.splits import read_splits_csv, saved_split_names

    records = load_many(list(data)).records
    items = []
    for record, split in zip(
        records, saved_split_names(records, read_splits_csv(splits_csv)), strict=True
    ):
        if split:
            items.append(
                Item(record.key, record.path, record.patient, record.label, record.source, split)
            )
    return items


def contact_sheet(pairs: Sequence[Pair], path: Path, size: int = 192) -> None:
    """The candidate pairs side by side (lower split left), one row each."""
    from PIL import ImageDraw

    sheet = Image.new("L", (2 * size, max(1, len(pairs)) * (size + 14)), 255)
    draw = ImageDraw.Draw(sheet)
    for row, pair in enumerate(pairs):
        top = row * (size + 14)
        for col, item in enumerate((pair.a, pair.b)):
            with Image.open(item.path) as image:
                sheet.paste(image.convert("L").resize((size, size)), (col * size, top + 14))
            draw.text((col * size + 2, top), f"{item.patient} {item.split}", fill=0)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True)
    parser.add_argument("--splits", type=Path, required=True, help="a model's splits.csv")
    parser.add_argument("--threshold", type=float, default=0.97, help="thumbnail correlation")
    parser.add_argument("--model", type=Path, help="report its test figures with and without")
    parser.add_argument("--confirmed", nargs="*", default=[], help="test patients to drop")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    items = read_items(args.data, args.splits)
    thumbs, hashes = [], []
    for item in items:
        with Image.open(item.path) as image:
            gray = image.convert("L")
        thumbs.append(thumbnail(gray))
        hashes.append(pixel_hash(gray))
    pairs = cross_split_pairs(items, np.stack(thumbs), hashes, args.threshold)
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "pairs.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["identical", "correlation", "key_a", "patient_a", "split_a",
                         "key_b", "patient_b", "split_b"])  # fmt: skip
        for p in pairs:
            writer.writerow([int(p.identical), p.correlation, p.a.key, p.a.patient, p.a.split,
                             p.b.key, p.b.patient, p.b.split])  # fmt: skip
    contact_sheet(pairs, args.out / "pairs.png")
    result: dict[str, Any] = {
        "images": len(items),
        "threshold": args.threshold,
        "candidate_pairs": len(pairs),
        "identical_pairs": sum(p.identical for p in pairs),
    }
    print(
        f"{len(items)} images, {len(pairs)} cross-split candidate pairs "
        f"({result['identical_pairs']} pixel-identical) at correlation >= {args.threshold}"
    )
    for p in pairs:
        print(f"  {p.correlation:.4f}{' identical' if p.identical else ''}: {p.a.key} "
              f"({p.a.patient}, {p.a.split}) ~ {p.b.key} ({p.b.patient}, {p.b.split})")  # fmt: skip
    if args.model:
        from ml.models.artifacts import read_card
        from ml.serving.classifier import Classifier

        card = read_card(args.model)
        classifier = Classifier.load(args.model, expected_sha256=card.get("sha256"), card=card)
        rows = []
        for item in (i for i in items if i.split == "test"):
            with Image.open(item.path) as image:
                prediction = classifier.predict(image)
            rows.append(
                {"patient": item.patient, "label": item.label, "source": item.source,
                 "pred": prediction.label, "p_covid19": prediction.probabilities["covid19"]}
            )  # fmt: skip
        confirmed = set(args.confirmed)
        leaked = leaked_test_images(items, confirmed)
        result["confirmed_patients"] = sorted(confirmed)
        result["leaked_test_images"] = [i.key for i in leaked]
        result["all_test"] = split_figures(rows, classifier.classes)
        result["without_leaked"] = split_figures(
            [r for r in rows if r["patient"] not in confirmed], classifier.classes
        )
        for name in ("all_test", "without_leaked"):
            f = result[name]
            print(f"{name}: {f['images']} images, macro-F1 {f['macro_f1']} {f['macro_f1_ci']}, "
                  f"COVID-19 recall {f['covid19_recall']} {f['covid19_recall_ci']}, "
                  f"ccx AUROC {f['ccx_covid_auroc']} {f['ccx_covid_auroc_ci']}")  # fmt: skip
    (args.out / "figures.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
