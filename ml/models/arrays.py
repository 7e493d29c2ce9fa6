"""Records -> model inputs and lung masks in the model's frame, cached on disk.

Training, the study, ``ml classifier evaluate`` and the shortcut tests all need every
image preprocessed exactly as serving does it (:func:`ml.data.preprocess.prepare`) and,
for preprocessing v2 and the shortcut tests, the lung mask of every image from the
lung segmenter. Decoding ~2,000 radiographs and segmenting them takes a minute or
two on two cores, so the result is cached under a key made of the records, the
preprocessing spec and the segmenter's hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ml.data.loaders import Record
from ml.data.preprocess import PreprocessSpec, open_image, prepare, to_unit_gray

log = logging.getLogger(__name__)


@dataclass
class Arrays:
    """Model inputs of a list of records, aligned by index."""

    x: np.ndarray  # float32 (n, S, S, C) in [0, 1]
    lungs: np.ndarray | None  # bool (n, S, S): lung mask in the model's frame; None: unknown
    visible: np.ndarray | None  # bool (n, S, S): region kept by mask_outside; None: all
    used_lungs: np.ndarray  # bool (n,): v2 found lungs (False: whole-image fallback)

    def subset(self, index: Sequence[int]) -> Arrays:
        idx = np.asarray(index, dtype=np.int64)
        return Arrays(
            x=self.x[idx],
            lungs=None if self.lungs is None else self.lungs[idx],
            visible=None if self.visible is None else self.visible[idx],
            used_lungs=self.used_lungs[idx],
        )


def _cache_path(
    records: Sequence[Record], spec: PreprocessSpec, segmenter_version: str, cache: Path
) -> Path:
    rows = sorted((r.key, str(r.path)) for r in records)
    payload = json.dumps([rows, spec.to_dict(), segmenter_version], sort_keys=True)
    digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return Path(cache) / f"arrays-v{spec.version}-{spec.input_size}px-{digest}.npz"


def prepare_arrays(
    records: Sequence[Record],
    spec: PreprocessSpec,
    *,
    segmenter: Any = None,
    cache: Path | None = None,
    progress: bool = True,
    workers: int = 2,
) -> Arrays:
    """Preprocess every record with the serving function; segment lungs when a segmenter
    is given (required for preprocessing v2)."""
    if spec.version >= 2 and segmenter is None:
        raise ValueError("Preprocessing v2 needs the lung segmenter (ml.lungs.segmenter).")
    version = getattr(segmenter, "version", "none") if segmenter is not None else "none"
    path = _cache_path(records, spec, version, cache) if cache is not None else None
    if path is not None and path.is_file():
        log.info("preprocessed arrays from %s", path)
        with np.load(path) as data:
            return Arrays(
                x=data["x"].astype(np.float32) / 255.0,
                lungs=data["lungs"] if data["has_lungs"] else None,
                visible=data["visible"] if data["has_visible"] else None,
                used_lungs=data["used_lungs"],
            )

    def decode(record: Record) -> np.ndarray:
        return to_unit_gray(open_image(record.path))

    xs, masks, visible, used = [], [], [], []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        grays = pool.map(decode, records)
        for gray in tqdm(
            grays, total=len(records), desc="preprocess", unit="img", disable=not progress
        ):
            lung_mask = None
            if segmenter is not None:
                result = segmenter.segment_gray(gray)
                lung_mask = result.mask if result.found else None
            prepared = prepare(gray, spec, lung_mask)
            xs.append(prepared.x)
            size = prepared.x.shape[0]
            masks.append(
                prepared.lung_mask
                if prepared.lung_mask is not None
                else np.zeros((size, size), dtype=bool)
            )
            visible.append(
                prepared.visible if prepared.visible is not None else np.ones((size, size), bool)
            )
            used.append(prepared.used_lungs if spec.version >= 2 else lung_mask is not None)
    arrays = Arrays(
        x=np.stack(xs).astype(np.float32),
        lungs=np.stack(masks) if segmenter is not None else None,
        visible=np.stack(visible) if spec.version >= 2 and spec.mask_outside else None,
        used_lungs=np.asarray(used, dtype=bool),
    )
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.npz")
        size = arrays.x.shape[1]
        np.savez_compressed(
            tmp,
            x=np.clip(arrays.x * 255.0 + 0.5, 0, 255).astype(np.uint8),
            lungs=arrays.lungs if arrays.lungs is not None else np.zeros((0, size, size), bool),
            has_lungs=arrays.lungs is not None,
            visible=arrays.visible
            if arrays.visible is not None
            else np.zeros((0, size, size), bool),
            has_visible=arrays.visible is not None,
            used_lungs=arrays.used_lungs,
        )
        tmp.replace(path)
        # Cached inputs are stored on 8 bits; reload them so a first run and a cached
        # run train on the very same numbers.
        return prepare_arrays(records, spec, segmenter=segmenter, cache=cache, progress=False)
    return arrays


def load_arrays(
    records: Sequence[Record], spec: PreprocessSpec, *, workers: int = 2, progress: bool = True
) -> np.ndarray:
    """Preprocessed model inputs only (v1 specs; v2 needs :func:`prepare_arrays`)."""
    return prepare_arrays(records, spec, workers=workers, progress=progress).x
