"""Out-of-distribution gate: is this a frontal chest radiograph at all?

A classifier trained on chest X-rays answers "COVID-19 / other / normal" for
any picture it is given, a cat photo included, with high confidence. This
gate refuses such inputs before they are stored. It must run in the web
process (no TensorFlow), so it is numpy only at serving time:

1. a colour rule: chest radiographs are grayscale (RGB exports of them have
   equal channels, apart from small coloured annotations such as arrows), so
   an image with more than a set share of clearly coloured pixels is refused;
2. a one-class model of chest X-ray appearance: features of the grayscale
   image (a 32x32 thumbnail, a 32-bin intensity histogram, the aspect ratio)
   scored by the negative log-likelihood of a probabilistic PCA (Tipping &
   Bishop 1999) fitted on chest X-rays only: the Mahalanobis distance inside
   the principal subspace plus the residual outside it over the residual
   variance. High score = unlike any chest X-ray seen in fitting.

Both thresholds are chosen from chest X-rays only (training split to fit,
validation split to threshold), so the refusal rate on non-chest images
measured by ``python -m ml ood evaluate`` is an honest estimate, not a fitted one.
The fitted gate is a small ``.npz`` plus a JSON card next to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

GATE_VERSION = 1
THUMB = 32
BINS = 32
# A pixel is "clearly coloured" when its channels differ by more than this (of 255).
CHROMA_LEVEL = 40
HUE_TOLERANCE = 30.0
STRONG_CHROMA = 128
GRAD_BINS = 16
COMPONENTS = 16


def colourful_fraction(image: Image.Image) -> float:
    """How clearly an image is a colour picture, as a share of its pixels (0 for gray modes).

    Photographed films and screen captures of radiographs are often tinted
    (blue, purple, sepia): their coloured pixels share one hue and are only
    mildly saturated. A colour photograph has several hues or strongly
    saturated regions. The score is the larger of two shares: pixels with a
    channel spread over CHROMA_LEVEL/255 whose hue is more than HUE_TOLERANCE
    degrees from the image's dominant hue, and pixels with a spread over
    STRONG_CHROMA/255 whatever their hue.
    """
    if image.mode not in {"RGB", "RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV"}:
        return 0.0
    small = image.convert("RGB")
    small.thumbnail((256, 256), Image.Resampling.NEAREST)
    rgb = np.asarray(small, dtype=np.int16).reshape(-1, 3)
    chroma = rgb.max(axis=1) - rgb.min(axis=1)
    strong = float((chroma > STRONG_CHROMA).mean())
    coloured = chroma > CHROMA_LEVEL
    if not coloured.any():
        return strong
    hsv = np.asarray(small.convert("HSV"), dtype=np.int16).reshape(-1, 3)
    hue = hsv[coloured, 0].astype(np.float32) * (360.0 / 256.0)
    counts, edges = np.histogram(hue, bins=36, range=(0.0, 360.0))
    dominant = edges[int(np.argmax(counts))] + 5.0
    distance = np.abs((hue - dominant + 180.0) % 360.0 - 180.0)
    multi_hue = float((distance > HUE_TOLERANCE).sum() / len(rgb))
    return max(multi_hue, strong)


def features(gray: np.ndarray) -> np.ndarray:
    """Appearance features of a grayscale image in [0, 1] (any size, H x W).

    The thumbnail is contrast-normalised per image, so the model learns the
    *layout* of a chest radiograph (dark lungs either side of a bright
    mediastinum, bright shoulders and abdomen) rather than its mean grey level:
    a flat or textured image is then far from every chest X-ray instead of
    close to their average. The histogram keeps the intensity distribution,
    the gradient histogram the smoothness (text and line drawings are sharp).
    """
    gray = np.asarray(gray, dtype=np.float32)
    height, width = gray.shape
    image = Image.fromarray(gray, mode="F")
    thumb = np.asarray(image.resize((THUMB, THUMB), Image.Resampling.BOX), dtype=np.float32)
    thumb = np.clip(thumb, 0.0, 1.0).ravel()
    spread = float(thumb.std())
    normalised = (thumb - thumb.mean()) / (spread + 0.02)
    step = max(1, int(np.sqrt(height * width / 250_000)))  # ~250k pixels are plenty
    hist, _ = np.histogram(gray[::step, ::step], bins=BINS, range=(0.0, 1.0))
    hist = hist.astype(np.float32) / max(1, hist.sum())
    mid = np.asarray(image.resize((128, 128), Image.Resampling.BOX), dtype=np.float32)
    grad = np.hypot(np.diff(mid, axis=0)[:, :-1], np.diff(mid, axis=1)[:-1, :])
    grad_hist, _ = np.histogram(grad, bins=GRAD_BINS, range=(0.0, 0.4))
    grad_hist = grad_hist.astype(np.float32) / grad.size
    # sqrt: a variance-stabilising transform for proportions.
    return np.concatenate(
        [
            normalised,
            np.sqrt(hist),
            np.sqrt(grad_hist),
            [thumb.mean(), spread, np.log(width / height)],
        ]
    ).astype(np.float32)


@dataclass
class OodGate:
    mean: np.ndarray  # feature means (training)
    scale: np.ndarray  # feature standard deviations (training)
    components: np.ndarray  # k x d principal axes
    variances: np.ndarray  # k eigenvalues
    residual_variance: float
    threshold: float
    max_colourful: float
    min_spread: float  # thumbnail standard deviation below this: a blank image
    card: dict[str, Any]

    def score(self, gray: np.ndarray) -> float:
        """PPCA negative log-likelihood (up to a constant) of an image's features."""
        return float(self.scores(features(gray)[np.newaxis])[0])

    def scores(self, feats: np.ndarray) -> np.ndarray:
        z = (feats - self.mean) / self.scale
        projected = z @ self.components.T
        residual = z - projected @ self.components
        inside = (projected**2 / self.variances).sum(axis=1)
        outside = (residual**2).sum(axis=1) / self.residual_variance
        # Divided by the feature count so the threshold reads on a familiar scale.
        per_feature: np.ndarray = (inside + outside) / z.shape[1]
        return per_feature

    def verdict(self, gray: np.ndarray, colourful: float = 0.0) -> str | None:
        """None if the image looks like a chest radiograph, else why not:
        "colour", "blank" or "appearance"."""
        if colourful > self.max_colourful:
            return "colour"
        feats = features(gray)[np.newaxis]
        return self.verdict_from(float(self.scores(feats)[0]), colourful, float(feats[0, -2]))

    def verdict_from(self, score: float, colourful: float, spread: float) -> str | None:
        if colourful > self.max_colourful:
            return "colour"
        # A uniform image sits near the average chest X-ray in the thumbnail
        # features (its contrast-normalised thumbnail is all zeros), so blank
        # images get their own rule.
        if not spread >= self.min_spread:
            return "blank"
        if not score <= self.threshold:  # NaN counts as out of distribution
            return "appearance"
        return None

    def accepted(self, feats: np.ndarray, colour: np.ndarray) -> np.ndarray:
        """Vectorised verdict is None, for evaluation."""
        return (
            (self.scores(feats) <= self.threshold)
            & (colour <= self.max_colourful)
            & (feats[:, -2] >= self.min_spread)
        )

    def save(self, path: Path) -> None:
        path = Path(path)
        np.savez_compressed(
            path,
            mean=self.mean,
            scale=self.scale,
            components=self.components,
            variances=self.variances,
            residual_variance=np.float64(self.residual_variance),
            threshold=np.float64(self.threshold),
            max_colourful=np.float64(self.max_colourful),
            min_spread=np.float64(self.min_spread),
        )
        path.with_suffix(".json").write_text(json.dumps(self.card, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> OodGate:
        path = Path(path)
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        card_path = path.with_suffix(".json")
        card = json.loads(card_path.read_text()) if card_path.exists() else {}
        return cls(
            mean=arrays["mean"],
            scale=arrays["scale"],
            components=arrays["components"],
            variances=arrays["variances"],
            residual_variance=float(arrays["residual_variance"]),
            threshold=float(arrays["threshold"]),
            max_colourful=float(arrays["max_colourful"]),
            min_spread=float(arrays["min_spread"]),
            card=card,
        )


def fit_gate(
    train_feats: np.ndarray,
    val_feats: np.ndarray,
    train_colour: np.ndarray,
    val_colour: np.ndarray,
    *,
    components: int = COMPONENTS,
    val_quantile: float = 1.0,
    margin: float = 1.25,
    colour_factor: float = 4.0,
) -> OodGate:
    """Fit on training chest X-rays; threshold on validation chest X-rays only.

    threshold = ``margin`` x the ``val_quantile`` quantile of the validation
    scores (default: 25% above the highest validation score, the headroom
    that the most unusual of the test suite's 18 fixture X-rays needs); the
    colour limit is ``colour_factor`` x the most colourful training or
    validation X-ray (at least 1% of pixels).
    """
    mean = train_feats.mean(axis=0)
    scale = train_feats.std(axis=0) + 1e-3
    z = (train_feats - mean) / scale
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    eigen = singular**2 / (len(z) - 1)
    k = min(components, len(eigen) - 1)
    residual_variance = float(eigen[k:].sum() / (z.shape[1] - k))
    gate = OodGate(
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        components=vt[:k].astype(np.float32),
        variances=eigen[:k].astype(np.float32),
        residual_variance=residual_variance,
        threshold=0.0,
        max_colourful=0.0,
        min_spread=0.0,
        card={},
    )
    val_scores = gate.scores(val_feats)
    gate.threshold = float(np.quantile(val_scores, val_quantile) * margin)
    colour_seen = float(max(train_colour.max(initial=0.0), val_colour.max(initial=0.0)))
    gate.max_colourful = max(0.01, colour_seen * colour_factor)
    spreads = np.concatenate([train_feats[:, -2], val_feats[:, -2]])
    gate.min_spread = float(spreads.min() / 2)
    train_scores = gate.scores(train_feats)
    gate.card = {
        "gate_version": GATE_VERSION,
        "features": (
            f"{THUMB}x{THUMB} contrast-normalised box thumbnail, {BINS}-bin sqrt intensity "
            f"histogram, {GRAD_BINS}-bin sqrt gradient histogram at 128 px, mean, spread, "
            "log aspect ratio"
        ),
        "model": f"probabilistic PCA, {k} components, standardised features",
        "score": "PPCA negative log-likelihood per feature (Mahalanobis in subspace + residual)",
        "threshold": gate.threshold,
        "threshold_rule": f"{margin} x quantile {val_quantile} of validation chest X-ray scores",
        "max_colourful": gate.max_colourful,
        "colour_rule": (
            f"max(share of pixels with channel spread > {CHROMA_LEVEL}/255 off the dominant "
            f"hue by > {HUE_TOLERANCE} deg, share with spread > {STRONG_CHROMA}/255); limit = "
            f"max(0.01, {colour_factor} x the most colourful training/validation chest X-ray)"
        ),
        "min_spread": gate.min_spread,
        "blank_rule": "thumbnail standard deviation < half the lowest of any training/validation "
        "chest X-ray",
        "fitted_on": {"train_images": len(train_feats), "val_images": len(val_feats)},
        "train_score_max": float(train_scores.max()),
        "val_score_max": float(val_scores.max()),
        "val_score_p99": float(np.quantile(val_scores, 0.99)),
    }
    return gate


# -- evaluation images that ship inside installed packages (never downloaded) --------


def packaged_non_chest_images() -> list[tuple[str, Image.Image]]:
    """Real non-chest images from installed packages, for evaluation only.

    scikit-image's bundled sample data, scikit-learn's two sample photos,
    matplotlib's sample photo and MRI slice, and pydicom's test files that are
    single-frame grayscale medical images of other modalities (CT, MR, NM).
    """
    from importlib.util import find_spec

    out: list[tuple[str, Image.Image]] = []
    if find_spec("skimage") is not None:
        from skimage import data as skdata

        names = [
            "astronaut", "brick", "camera", "cat", "cell", "checkerboard", "chelsea", "clock",
            "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
            "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina",
            "rocket", "shepp_logan_phantom", "text", "binary_blobs",
        ]  # fmt: skip
        for name in names:
            try:
                array = getattr(skdata, name)()
            except Exception:  # noqa: S112 - a fetcher that needs the network
                continue
            out.append((f"skimage:{name}", _to_pil(array)))
    if find_spec("sklearn") is not None:
        from sklearn.datasets import load_sample_images

        bunch = load_sample_images()
        for filename, array in zip(bunch.filenames, bunch.images, strict=True):
            out.append((f"sklearn:{Path(filename).name}", _to_pil(array)))
    if find_spec("matplotlib") is not None:
        import gzip

        from matplotlib import cbook

        def sample(name: str) -> Path:
            return Path(cbook.get_sample_data(name, asfileobj=False))

        with sample("grace_hopper.jpg").open("rb") as fh:
            out.append(("matplotlib:grace_hopper.jpg", Image.open(fh).copy()))
        with sample("Minduka_Present_Blue_Pack.png").open("rb") as fh:
            out.append(("matplotlib:Minduka_Present_Blue_Pack.png", Image.open(fh).copy()))
        with sample("s1045.ima.gz").open("rb") as fh:
            raw = fh.read()
            if raw[:2] == b"\x1f\x8b":
                raw = gzip.decompress(raw)
            mri = np.frombuffer(raw, np.uint16).astype(np.float32).reshape(256, 256)
            out.append(("matplotlib:s1045.ima (MR head)", _to_pil(mri / mri.max())))
    if find_spec("pydicom") is not None:
        out.extend(_pydicom_medical_images())
    return out


# Distinct single-frame grayscale images (other encodings of the same pixels,
# e.g. MR_small_RLE, are left out so no image counts twice).
PYDICOM_SAMPLES = [
    "CT_small.dcm", "MR_small.dcm", "693_J2KI.dcm", "J2K_pixelrep_mismatch.dcm",
    "JPEG2000.dcm", "examples_overlay.dcm", "image_dfl.dcm",
]  # fmt: skip


def _pydicom_samples() -> Iterator[tuple[str, Dataset]]:
    """(name, dataset) of pydicom's sample files that decode to one grayscale image."""
    from pydicom.data import get_testdata_file

    from ml.data.dicom import DicomProblem, check_image, read_dataset

    for name in PYDICOM_SAMPLES:
        path = get_testdata_file(name, download=False)
        if path is None:
            continue
        try:
            dataset = read_dataset(Path(path).read_bytes())
            check_image(dataset, max_pixels=10**8)
        except DicomProblem:
            continue
        modality = dataset.get("Modality") or "?"
        yield f"pydicom:{name} ({modality})", dataset


def _pydicom_medical_images() -> list[tuple[str, Image.Image]]:
    from ml.data.dicom import DicomProblem, to_uint8, to_unit_gray

    out = []
    for name, dataset in _pydicom_samples():
        try:
            gray = to_unit_gray(dataset)
        except DicomProblem:
            continue
        out.append((name, Image.fromarray(to_uint8(gray), mode="L")))
    return out


def dicom_header_verdicts() -> dict[str, str]:
    """For the packaged DICOM images: what their headers say (the upload path reads
    Modality, Body Part Examined and View Position before the pixel gate)."""
    from importlib.util import find_spec

    if find_spec("pydicom") is None:
        return {}
    from ml.data.dicom import not_a_frontal_chest_radiograph

    verdicts = {}
    for name, dataset in _pydicom_samples():
        problem = not_a_frontal_chest_radiograph(dataset)
        if problem is not None:
            verdicts[name] = problem
    return verdicts


def _to_pil(array: np.ndarray) -> Image.Image:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(array * (255.0 if array.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


# -- fitting and evaluation on the shared data ------------------------------------------


def image_features(image: Image.Image) -> tuple[np.ndarray, float]:
    """(appearance features, colourful share) of an opened image, as the web process sees it."""
    from ml.data.preprocess import to_unit_gray

    return features(to_unit_gray(image)), colourful_fraction(image)


def chest_xray_paths(data_dirs: list[Path], splits_csv: Path) -> dict[str, list[Path]]:
    """Image paths per split ("train", "val", "test") of a model's patient-level split."""
    from ml.data.loaders import load_many
    from ml.data.splits import read_splits_csv, saved_split_names

    records = load_many(data_dirs).records
    paths: dict[str, list[Path]] = {"train": [], "val": [], "test": []}
    for record, split in zip(
        records, saved_split_names(records, read_splits_csv(splits_csv)), strict=True
    ):
        if split in paths:
            paths[split].append(record.path)
    return paths


def features_of_paths(paths: list[Path], progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    from ml.data.preprocess import open_image

    iterator: Iterable[Path] = paths
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, unit="image", leave=False)
    feats, colour = [], []
    for path in iterator:
        with open_image(path) as image:
            f, c = image_features(image)
        feats.append(f)
        colour.append(c)
    return np.stack(feats), np.asarray(colour, dtype=np.float32)


def fit_from_shared_data(
    data_dirs: list[Path], splits_csv: Path, *, progress: bool = False
) -> tuple[OodGate, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Fit the gate on a split's training chest X-rays, threshold on its validation ones."""
    paths = chest_xray_paths(data_dirs, splits_csv)
    feats = {split: features_of_paths(p, progress=progress) for split, p in paths.items()}
    gate = fit_gate(feats["train"][0], feats["val"][0], feats["train"][1], feats["val"][1])
    gate.card["fitted_on"]["splits_csv"] = Path(splits_csv).name
    gate.card["fitted_on"]["data"] = [Path(d).name for d in data_dirs]
    return gate, feats


def evaluate(gate: OodGate, chest: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, object]:
    """Acceptance per chest X-ray split and refusal of the packaged non-chest images."""
    result: dict[str, object] = {}
    for split, (feats, colour) in chest.items():
        accepted = gate.accepted(feats, colour)
        result[f"chest_{split}_accepted"] = [int(accepted.sum()), len(accepted)]
    rows: list[dict[str, Any]] = []
    for name, image in packaged_non_chest_images():
        f, colourful = image_features(image)
        score = float(gate.scores(f[np.newaxis])[0])
        verdict = gate.verdict_from(score, colourful, float(f[-2]))
        rows.append({"image": name, "score": round(score, 3), "colour": round(colourful, 4),
                     "refused": verdict is not None, "reason": verdict or ""})  # fmt: skip
    refused = sum(row["refused"] for row in rows)
    result["non_chest_refused"] = [refused, len(rows)]
    # As uploaded: a DICOM's header (Modality, Body Part, View Position) is read
    # before the pixel gate, so a CT or MR slice is refused whatever its pixels.
    headers = dicom_header_verdicts()
    for row in rows:
        row["header_refusal"] = headers.get(row["image"], "")
    as_uploaded = sum(row["refused"] or bool(row["header_refusal"]) for row in rows)
    result["non_chest_refused_as_uploaded"] = [as_uploaded, len(rows)]
    result["non_chest"] = rows
    return result
