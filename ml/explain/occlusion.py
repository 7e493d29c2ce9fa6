"""Occlusion sensitivity: tf-explain's reference and a batched compiled path.

Occlusion (Zeiler & Fergus 2014) slides a square patch over the image on a grid with
stride = patch size and records ``1 - p(target)`` for each position; the coarse grid is
resized bilinearly to the image size (tf-explain's ``OcclusionSensitivity``).

Two tf-explain defaults are wrong for this platform and are replaced:

* the patch is filled with 127.5, which is a grey on a 0-255 image but 127 times the
  brightest pixel of a [0, 1] image; the fill value is passed explicitly. The default is
  the **image's own mean**: the patch then removes local structure without changing
  overall brightness, so the map measures the loss of content rather than the model's
  reaction to a bright square. (0.5 would be a constant, but X-rays with black
  letterbox margins have means well below it.)
* ``get_sensitivity_map`` calls ``model.predict`` (a data pipeline per call, a progress
  bar on stdout); :func:`fast_occlusion` makes the same patched images and sends them
  through one cached ``tf.function`` call.

tf-explain fills the patch through a module-level helper, ``apply_grey_patch``; the
smallest correct way to give it another fill value is to swap that helper for the call
(under a lock, so concurrent calls cannot see each other's value). The reference is kept
for tests and the benchmark; :func:`ml.explain.explain` uses the fast path.

tf-explain indexes its grid as (x over rows, y over columns) and resizes with
``image.shape[0:2]`` as (width, height): correct for square images only. The platform's
inputs are square; the fast path is correct for any shape.
"""

from __future__ import annotations

import threading

import cv2
import keras
import numpy as np
import tf_explain.core.occlusion_sensitivity as tfx_occlusion
from tf_explain.core.occlusion_sensitivity import OcclusionSensitivity

from ml.explain._common import as_image, forward

_PATCH_LOCK = threading.Lock()


def default_patch_size(size: tuple[int, int]) -> int:
    """1/8 of the shorter side (16 px at 128): an 8 x 8 grid, 64 forward passes.

    A patch must hide a real part of a finding to move a confident model's output:
    with 1/16 (8 px at 128) most patches change the probability by less than its noise
    and the scaled map spreads its mass over the whole image. Pass ``patch_size`` for a
    finer grid (4x the forward passes per halving).
    """
    return max(1, min(size) // 8)


def default_fill_value(image: np.ndarray) -> float:
    """The image's mean intensity (see the module docstring for why)."""
    return float(np.mean(image))


def _patch_grid(shape: tuple[int, int], patch_size: int) -> tuple[range, range]:
    if patch_size < 1:
        raise ValueError("patch_size must be >= 1")
    height, width = shape
    return range(0, height, patch_size), range(0, width, patch_size)


def occluded_batch(image: np.ndarray, patch_size: int, fill_value: float) -> np.ndarray:
    """All occluded copies of ``image``, row-major over the patch grid: (n, H, W, C)."""
    rows, cols = _patch_grid(image.shape[:2], patch_size)
    batch = np.repeat(image[np.newaxis], len(rows) * len(cols), axis=0)
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            batch[i * len(cols) + j, top : top + patch_size, left : left + patch_size, :] = (
                fill_value
            )
    return batch


def fast_occlusion(
    model: keras.Model,
    image: np.ndarray,
    class_index: int,
    patch_size: int,
    fill_value: float,
    *,
    batch_size: int | None = None,
) -> np.ndarray:
    """Raw occlusion map (H, W), float32: tf-explain's map from one compiled call.

    ``batch_size`` splits the patched images for models too big to take them all at
    once; by default they go through in one call.
    """
    x = as_image(model, image)
    rows, cols = _patch_grid(x.shape[:2], int(patch_size))
    batch = occluded_batch(x, int(patch_size), float(fill_value))
    probabilities = forward(model, batch, batch_size=batch_size)[:, int(class_index)]
    coarse = (1.0 - probabilities.astype(np.float64)).reshape(len(rows), len(cols))
    height, width = x.shape[:2]
    return cv2.resize(coarse, (width, height)).astype(np.float32)


class _QuietModel:
    """``model.predict`` without the progress bar (library code never prints)."""

    def __init__(self, model: keras.Model) -> None:
        self._model = model

    def predict(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        return self._model.predict(x, batch_size=batch_size, verbose=0)


def tf_explain_occlusion(
    model: keras.Model,
    image: np.ndarray,
    class_index: int,
    patch_size: int,
    fill_value: float,
) -> np.ndarray:
    """tf-explain's ``OcclusionSensitivity.get_sensitivity_map`` with ``fill_value``.

    The reference implementation (slow: ``model.predict``); raw (H, W) map.
    """
    x = as_image(model, image)
    original = tfx_occlusion.apply_grey_patch

    def apply_patch(image, top_left_x, top_left_y, patch_size):
        patched = original(image, top_left_x, top_left_y, patch_size)  # a copy
        # Same slice tf-explain fills, with our value instead of 127.5.
        patched[top_left_y : top_left_y + patch_size, top_left_x : top_left_x + patch_size, :] = (
            fill_value
        )
        return patched

    with _PATCH_LOCK:
        tfx_occlusion.apply_grey_patch = apply_patch
        try:
            sensitivity = OcclusionSensitivity().get_sensitivity_map(
                _QuietModel(model), x, int(class_index), int(patch_size)
            )
        finally:
            tfx_occlusion.apply_grey_patch = original
    return np.asarray(sensitivity, dtype=np.float32)
