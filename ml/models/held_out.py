"""Normals of a site the model never saw: train without one source's normals, count how
many of them the model then calls normal.

Why: every adult normal the first lung model saw came from one hospital (NIH), and at a
site it never saw it called 13 % of the normal films normal. A test split drawn from the
same sources cannot show that; leaving a source's normals out of training can. Each run
is a full training with the same data, settings, seed and operating-point rule, minus
that source's normals (from train and val); the held-out normals of *every* split are
then scored, since the run used none of them. The figures go on the card and every
report beside the shortcut tests (``ShortcutMetrics.held_out_normals``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ml.ct.modality import wilson_interval
from ml.data.labels import CLASSES
from ml.data.loaders import Record
from ml.models.arrays import Arrays
from ml.models.metrics import HeldOutNormals

log = logging.getLogger(__name__)

# Fits a model on (train, val) index lists and returns it at its operating point.
Trainer = Callable[[list[int], list[int]], Any]


def without_normals_of(records: Sequence[Record], index: Sequence[int], source: str) -> list[int]:
    return [i for i in index if not (records[i].source == source and records[i].label == "normal")]


def held_out_normals(
    train_model: Trainer,
    records: Sequence[Record],
    arrays: Arrays,
    index: dict[str, list[int]],
    source: str,
) -> HeldOutNormals:
    """Train without ``source``'s normals (``train_model(train, val)``) and score them."""
    from ml.models.fit import predict_batches

    held = [i for i, r in enumerate(records) if r.source == source and r.label == "normal"]
    if not held:
        raise ValueError(f"no normal images of source {source!r} to hold out")
    train_idx = without_normals_of(records, index["train"], source)
    val_idx = without_normals_of(records, index["val"], source)
    log.info(
        "held-out normals of %s: training on %d images without its %d normals",
        source,
        len(train_idx),
        len(held),
    )
    net = train_model(train_idx, val_idx)
    predicted = predict_batches(net, arrays.x[held]).argmax(1)
    called = {c: int((predicted == k).sum()) for k, c in enumerate(CLASSES)}
    hits = called["normal"]
    result = HeldOutNormals(
        source=source,
        n=len(held),
        called_normal=hits,
        ci=wilson_interval(hits, len(held)),
        called=called,
    )
    log.info("held-out normals of %s called normal: %d of %d", source, hits, len(held))
    return result


def adult_normal_sources(records: Sequence[Record], minimum: int = 20) -> list[str]:
    """Sources with at least ``minimum`` normals, except the paediatric set (children:
    the question is adult normals from a new site)."""
    counts: dict[str, int] = {}
    for r in records:
        if r.label == "normal":
            counts[r.source] = counts.get(r.source, 0) + 1
    return sorted(s for s, n in counts.items() if n >= minimum and "pediatric" not in s)
