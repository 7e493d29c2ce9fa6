"""The "synthetic" mark of generated images: in the pixels and in the metadata.

Every image the platform lets out of the generator is a PNG grid in which

* **each sample tile** carries a band across its top: a black strip with
  ``SYNTHETIC`` in white between two bar codes (:func:`band`), drawn into the pixels,
  so that a tile cut out of the grid still says what it is;
* **the file** carries PNG text chunks: ``cxr-synthetic`` (JSON: generator, class, seed,
  count) and a ``Description`` that says the image is not a patient's radiograph.

:func:`synthetic_reason` looks for either in an uploaded image: the metadata key, or
the band in the pixels by normalised cross-correlation with the band's template over a
range of scales (a tile or a grid, scaled between about 0.5x and 4x, re-encoded as JPEG
is still found). Its limits, stated in docs: a crop that removes the band from a tile,
or a strong edit of the band, defeats the pixel check - the mark labels the platform's
own output, it is not tamper-proof. No TensorFlow here (the upload check imports it).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from functools import lru_cache
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

TILE = 128  # samples are shown at this size (upsampled from the generator's)
BAND = 14  # height of the band across the top of each tile
METADATA_KEY = "cxr-synthetic"
WORD = "SYNTHETIC"
DESCRIPTION = (
    "SYNTHETIC image made by a generative model (GAN); not a patient's radiograph. "
    "Not for diagnosis, not for upload as a case, not for training as real data."
)
MATCH_THRESHOLD = 0.8  # normalised cross-correlation of the band template
_CODE = (1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0)  # bar code either side of the word


def _font() -> Any:
    return ImageFont.load_default(size=11)


@lru_cache(maxsize=1)
def band(width: int = TILE, height: int = BAND) -> np.ndarray:
    """The band (uint8, height x width): bar codes at both ends, the word in the middle."""
    image = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(image)
    bar = 3
    for i, bit in enumerate(_CODE):
        if bit:
            draw.rectangle((2 + i * bar, 2, 2 + i * bar + bar - 2, height - 3), fill=255)
            end = width - 3 - i * bar
            draw.rectangle((end - bar + 2, 2, end, height - 3), fill=255)
    font = _font()
    left, top, right, bottom = draw.textbbox((0, 0), WORD, font=font)
    x = (width - (right - left)) // 2 - left
    y = (height - (bottom - top)) // 2 - top
    draw.text((x, y), WORD, fill=255, font=font)
    return np.asarray(image, dtype=np.uint8)


def mark_tile(image: np.ndarray, tile: int = TILE) -> np.ndarray:
    """One sample (S, S) float in [0, 1] -> a marked tile (tile, tile) uint8."""
    array = np.clip(np.asarray(image, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    big = np.asarray(Image.fromarray(array).resize((tile, tile), Image.Resampling.BILINEAR))
    big = big.copy()
    big[:BAND, :] = band(tile, BAND)
    return big


def grid_png(
    images: np.ndarray,
    *,
    label: str,
    model: str,
    seed: int,
    columns: int = 4,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """A PNG grid of marked tiles under a header line, with the metadata chunks."""
    images = np.asarray(images)
    if images.ndim == 4:
        images = images[..., 0]
    if images.ndim != 3 or not len(images):
        raise ValueError("images must be a non-empty (n, S, S) array")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    gap, header = 4, 18
    width = columns * TILE + (columns + 1) * gap
    height = header + rows * TILE + (rows + 1) * gap
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    draw.text((gap, 3), f"{WORD} - {label} - {model} - seed {seed}", fill=255, font=_font())
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        tile = Image.fromarray(mark_tile(image))
        canvas.paste(tile, (gap + c * (TILE + gap), header + gap + r * (TILE + gap)))
    info = PngImagePlugin.PngInfo()
    meta = {"synthetic": True, "generator": model, "class": label, "seed": seed, "n": len(images)}
    meta.update(extra or {})
    info.add_text(METADATA_KEY, json.dumps(meta, sort_keys=True))
    info.add_text("Description", DESCRIPTION)
    info.add_text("Software", "cxr-platform generator")
    out = io.BytesIO()
    canvas.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def metadata_reason(image: Image.Image) -> str | None:
    """Why the file's metadata says synthetic, or None."""
    info = {str(k).lower(): v for k, v in (getattr(image, "info", None) or {}).items()}
    text = getattr(image, "text", None)
    if isinstance(text, dict):
        info.update({str(k).lower(): v for k, v in text.items()})
    if METADATA_KEY in info:
        return f"its metadata carries the '{METADATA_KEY}' mark"
    for key in ("description", "comment", "software", "imagedescription"):
        value = info.get(key)
        if isinstance(value, bytes):
            value = value.decode("latin-1", "replace")
        if isinstance(value, str) and (
            WORD in value.upper() or "CXR-PLATFORM GENERATOR" in value.upper()
        ):
            return f"its metadata ({key}) says it is synthetic"
    return None


# Scores already computed, by a digest of the pixels: the same film is checked again when
# an uploaded image is later imported into a dataset or snapshot, and the search is about
# 50 ms a film (hashing the pixels, about 1 ms). Bounded; a score is a float.
_SCORES_KEPT = 4096
_scores: OrderedDict[bytes, float] = OrderedDict()
_scores_lock = threading.Lock()


def band_score(gray: np.ndarray) -> float:
    """Highest normalised cross-correlation of the band template in a gray uint8 image,
    over template scales from 0.5x to 4x of a tile (the image is first reduced so that
    its longer side is at most 768 px). Remembered per pixel content."""
    array = np.asarray(gray)
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float32) * (255.0 if array.max() <= 1 else 1.0), 0, 255)
        array = array.astype(np.uint8)
    array = np.ascontiguousarray(array)
    digest = hashlib.blake2b(array.data, digest_size=16)
    digest.update(repr(array.shape).encode())
    key = digest.digest()
    with _scores_lock:
        if key in _scores:
            _scores.move_to_end(key)
            return _scores[key]
    score = _search(array)
    with _scores_lock:
        _scores[key] = score
        while len(_scores) > _SCORES_KEPT:
            _scores.popitem(last=False)
    return score


def _search(array: np.ndarray) -> float:
    """:func:`band_score` of a gray uint8 image, searched."""
    import cv2

    longest = max(array.shape)
    factor = min(1.0, 768.0 / longest) if longest else 1.0
    if factor < 1.0:
        array = cv2.resize(array, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    template = band()

    cache: dict[float, np.ndarray] = {}

    def blurred(scale: float) -> np.ndarray:
        # The same blur on image and template makes the score tolerant of how the
        # uploader resampled the image (bilinear, bicubic, JPEG).
        sigma = round(max(0.8, 0.5 * scale), 1)
        if sigma not in cache:
            cache[sigma] = cv2.GaussianBlur(array, (0, 0), sigma)
        return cache[sigma]

    scores: dict[tuple[int, int, bool, float], float] = {}

    def score_at(scale: float) -> float:
        w, h = round(TILE * scale), round(BAND * scale)
        if h < 7 or w > array.shape[1] or h > array.shape[0]:
            return -1.0
        sigma = round(max(0.8, 0.5 * scale), 1)
        # Scales that round to the same template size, interpolation and blur give the
        # same score: the fine search around neighbouring coarse scales asks for many
        # of them again (matchTemplate is nearly all the cost).
        key = (w, h, scale < 1, sigma)
        if key not in scores:
            interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
            resized = cv2.resize(template, (w, h), interpolation=interpolation)
            resized = cv2.GaussianBlur(resized, (0, 0), sigma)
            result = cv2.matchTemplate(blurred(scale), resized, cv2.TM_CCOEFF_NORMED)
            scores[key] = float(np.nanmax(result)) if result.size else -1.0
        return scores[key]

    # Coarse over 0.5x-4x (6% apart), then around the three best scales in steps of about
    # one pixel of band width: a band scaled a few pixels off the template no longer
    # matches.
    coarse = {float(s): score_at(float(s)) for s in np.geomspace(0.5, 4.0, 37) * factor}
    best = max(coarse.values())
    for centre in sorted(coarse, key=coarse.__getitem__, reverse=True)[:3]:
        widths = np.unique(np.round(np.linspace(0.96, 1.04, 17) * centre * TILE))
        for width in widths:
            best = max(best, score_at(float(width) / TILE))
    return best


def pixels_reason(gray: np.ndarray) -> str | None:
    score = band_score(gray)
    if score >= MATCH_THRESHOLD:
        return f"its pixels carry the '{WORD}' band (match {score:.2f})"
    return None


def synthetic_reason(image: Image.Image) -> str | None:
    """Why ``image`` is one of the generator's (metadata or pixels), or None."""
    reason = metadata_reason(image)
    if reason:
        return reason
    try:
        gray = np.asarray(image.convert("L"))
    except (OSError, ValueError):
        return None
    return pixels_reason(gray)
