"""Approximate lung fields by classical image processing (no model, nothing downloaded).

Why: the shortcut check of the heatmap study asks how much heatmap mass falls outside
the lungs. This machine has no lung-segmentation model and no expert masks for every
source, so the lung fields come from a documented, runnable heuristic. **It is an
approximation**; :mod:`ml.research.heatmaps` measures how good it is against the lungVAE
masks shipped with the covid-chestxray snapshot and shows a contact sheet.

Method (on the letterboxed, preprocessed image, values in [0, 1]):

1. *Content*: the bounding box of the non-black pixels (the letterbox margins are 0).
2. Contrast-limited histogram equalisation (CLAHE) and a Gaussian blur, so that the
   threshold does not depend on the exposure of the film.
3. *Dark* pixels: below the Otsu threshold of the content region.
4. A morphological opening cuts thin bridges between the lungs and the air outside
   the body; dark components touching the content border (air outside the body, the
   letterbox) are dropped.
5. Of the remaining components whose centroid lies in the central band of the content
   box, the two largest (each at least 2 % of the content) are the lungs; each is
   closed, hole-filled and replaced by its convex hull (the heart and ribs overlap the
   lung fields and leave notches a threshold cannot see through).
6. If that finds no lung, or lungs covering less than 8 % or more than 60 % of the
   content, a fixed anatomical prior is used instead: two ellipses placed in the
   content box (x 14-48 % and 52-86 %, y 12-85 %). ``method`` says which was used.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_AREA, MAX_AREA = 0.08, 0.60  # plausible lung share of the content box


@dataclass
class LungFields:
    mask: np.ndarray  # bool (H, W)
    method: str  # "threshold" or "prior"
    area_fraction: float  # of the content box
    content_box: tuple[int, int, int, int]  # top, bottom, left, right (exclusive)


def _content_box(gray: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(gray.max(axis=1) > 0.02)
    cols = np.flatnonzero(gray.max(axis=0) > 0.02)
    if len(rows) == 0 or len(cols) == 0:
        return 0, gray.shape[0], 0, gray.shape[1]
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def prior_mask(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """Two ellipses where the lungs of a centred frontal chest film usually are."""
    top, bottom, left, right = box
    height, width = bottom - top, right - left
    mask = np.zeros(shape, dtype=np.uint8)
    cy = top + int(0.485 * height)
    ry = int(0.365 * height)
    for x0, x1 in ((0.14, 0.48), (0.52, 0.86)):
        cx = left + int((x0 + x1) / 2 * width)
        rx = int((x1 - x0) / 2 * width)
        cv2.ellipse(mask, (cx, cy), (max(rx, 1), max(ry, 1)), 0, 0, 360, 1, -1)
    return mask.astype(bool)


def lung_fields(image: np.ndarray) -> LungFields:
    """Approximate lung mask of one preprocessed chest X-ray (H, W) or (H, W, 1)."""
    gray = np.asarray(image, dtype=np.float32)
    if gray.ndim == 3:
        gray = gray[..., 0]
    shape = gray.shape
    box = _content_box(gray)
    top, bottom, left, right = box
    content = np.zeros(shape, dtype=bool)
    content[top:bottom, left:right] = True
    content_area = max(1, (bottom - top) * (right - left))
    side = min(bottom - top, right - left)

    u8 = (np.clip(gray, 0, 1) * 255).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(4, 4))
    eq = clahe.apply(u8)
    blur = cv2.GaussianBlur(eq, (0, 0), sigmaX=max(1.0, side / 100))
    region = blur[top:bottom, left:right]
    threshold, _ = cv2.threshold(region.reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark: np.ndarray = ((blur < threshold) & content).astype(np.uint8)
    radius = max(1, side // 40)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    dark = cv2.morphologyEx(dark, cv2.MORPH_OPEN, kernel)
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(dark, connectivity=4)
    candidates = []
    for label in range(1, count):
        x, y, w, h, area = stats[label]
        touches = x <= left or y <= top or x + w >= right or y + h >= bottom
        cx, cy = centroids[label]
        central = left + 0.08 * (right - left) < cx < left + 0.92 * (
            right - left
        ) and top + 0.08 * (bottom - top) < cy < top + 0.85 * (bottom - top)
        if not touches and central and area >= 0.02 * content_area:
            candidates.append((area, label))
    lungs = np.zeros(shape, dtype=np.uint8)
    for _, label in sorted(candidates, reverse=True)[:2]:
        component = (labels == label).astype(np.uint8)
        component = cv2.morphologyEx(component, cv2.MORPH_CLOSE, kernel)
        contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if contours:
            hull = cv2.convexHull(np.concatenate(contours))
            cv2.fillPoly(lungs, [hull], 1)
    fraction = float(lungs.sum()) / content_area
    if MIN_AREA <= fraction <= MAX_AREA:
        return LungFields(lungs.astype(bool), "threshold", fraction, box)
    prior = prior_mask(shape, box)
    return LungFields(prior, "prior", float(prior.sum()) / content_area, box)


def mass_outside(heatmap: np.ndarray, mask: np.ndarray) -> float:
    """Share of the heatmap's total mass (sum of values) outside ``mask``; NaN for a zero map."""
    values = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    total = values.sum()
    if total <= 0:
        return float("nan")
    return float(values[~mask].sum() / total)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    denominator = a.sum() + b.sum()
    return float(2 * (a & b).sum() / denominator) if denominator else 1.0
