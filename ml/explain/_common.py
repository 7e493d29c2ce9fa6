"""Shared plumbing for the explanation methods: compiled calls, input checks, map scaling.

Every method calls the model many times (occlusion: one call per patch, deletion /
insertion: one per step), so the per-call cost decides whether an explanation takes
milliseconds or seconds. ``model.predict`` builds a data pipeline on every call; a
``tf.function`` traced once per model and input shape does not. The compiled functions
are kept per model in a ``WeakKeyDictionary`` so a worker process that explains many
images with one model traces each function once, and a model that is dropped frees
its functions with it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar, cast

import cv2
import keras
import numpy as np
import tensorflow as tf

log = logging.getLogger(__name__)

_CACHE: weakref.WeakKeyDictionary[keras.Model, dict[tuple[object, ...], Any]] = (
    weakref.WeakKeyDictionary()
)
_CACHE_LOCK = threading.Lock()

ModelRef = Callable[[], keras.Model]
_Built = TypeVar("_Built")


def cached_function(
    model: keras.Model, key: tuple[object, ...], factory: Callable[[ModelRef], _Built]
) -> _Built:
    """The compiled function ``factory`` builds for ``model``, built once per (model, key).

    ``factory`` receives a weak reference to the model, not the model: a function that
    held the model strongly would keep its own cache key alive and the model would never
    be freed.
    """
    with _CACHE_LOCK:
        per_model = _CACHE.get(model)
        if per_model is None:
            per_model = {}
            _CACHE[model] = per_model
        function = per_model.get(key)
        if function is None:
            ref = weakref.ref(model)

            def model_ref() -> keras.Model:
                live = ref()
                if live is None:  # pragma: no cover - only if a caller races a garbage collection
                    raise RuntimeError("The model behind this compiled explanation was freed.")
                return live

            function = factory(model_ref)
            per_model[key] = function
    # Every caller passes a key of its own, so the entry was built by a factory like this one.
    return cast(_Built, function)


def clear_cache(model: keras.Model | None = None) -> None:
    """Forget the compiled functions of one model (or of all models)."""
    with _CACHE_LOCK:
        if model is None:
            _CACHE.clear()
        else:
            _CACHE.pop(model, None)


def as_image(model: keras.Model, image: np.ndarray) -> np.ndarray:
    """One image as float32 (H, W, C), checked against the model's input.

    Accepts (H, W) for one-channel models. Refuses batches, non-finite values and a
    spatial size or channel count the model was not built for, with a message that says
    which, instead of a shape error deep inside TensorFlow.
    """
    array = np.asarray(image, dtype=np.float32)
    expected = tuple(model.inputs[0].shape[1:])
    if array.ndim == 2 and len(expected) == 3 and expected[-1] in (1, None):
        array = array[..., np.newaxis]
    if array.ndim != 3:
        raise ValueError(
            f"Expected one image of shape (H, W, C); got an array of shape {array.shape} "
            "(pass images one at a time)."
        )
    if len(expected) != 3:
        raise ValueError(f"Model input shape {expected} is not an image (H, W, C).")
    for axis, (have, want) in enumerate(zip(array.shape, expected, strict=True)):
        if want is not None and have != want:
            raise ValueError(
                f"Image shape {array.shape} does not fit the model input {expected} "
                f"(axis {axis}); preprocess it with the model's own spec."
            )
    if not np.all(np.isfinite(array)):
        raise ValueError("Image contains NaN or infinite values.")
    return array


def _batch_spec(shape: tuple[int, ...]) -> tf.TensorSpec:
    return tf.TensorSpec((None, *shape), tf.float32)


def forward(model: keras.Model, batch: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
    """Model outputs for a batch through one cached ``tf.function`` (inference mode).

    ``batch_size`` splits very large batches (big backbones); the default sends the
    whole batch in one call, which is fastest on CPU for the compact CNN.
    """
    batch = np.asarray(batch, dtype=np.float32)
    shape = tuple(batch.shape[1:])

    def factory(model_ref: ModelRef) -> Any:
        return tf.function(
            lambda x: model_ref()(x, training=False), input_signature=[_batch_spec(shape)]
        )

    call = cached_function(model, ("forward", shape), factory)
    if batch_size is None or len(batch) <= batch_size:
        whole: np.ndarray = call(tf.constant(batch)).numpy()
        return whole
    parts = [
        call(tf.constant(batch[i : i + batch_size])).numpy()
        for i in range(0, len(batch), batch_size)
    ]
    return np.concatenate(parts)


def resize_map(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a 2-D map to (height, width) (OpenCV takes width first)."""
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim == 3 and raw.shape[-1] == 1:
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise ValueError(f"Expected a 2-D map, got shape {raw.shape}.")
    height, width = size
    if raw.shape == (height, width):
        return raw
    return cv2.resize(raw, (width, height), interpolation=cv2.INTER_LINEAR)


def normalise_map(raw: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1]; a constant map becomes all zeros.

    Non-finite values (a gradient that overflowed) are set to the finite minimum and
    logged: a heatmap must always be drawable and storable.
    """
    values = np.asarray(raw, dtype=np.float64)
    finite = np.isfinite(values)
    if not finite.all():
        log.warning("heatmap had %d non-finite values; set to the minimum", int((~finite).sum()))
        fill = values[finite].min() if finite.any() else 0.0
        values = np.where(finite, values, fill)
    low, high = float(values.min()), float(values.max())
    span = high - low
    if not np.isfinite(span) or span <= 1e-12 * max(1.0, abs(high)):
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - low) / span, 0.0, 1.0).astype(np.float32)


class _RetracingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "triggered tf.function retracing" not in record.getMessage()


@contextlib.contextmanager
def quiet_retracing() -> Iterator[None]:
    """Silence TensorFlow's retracing warning while explaining many fresh model copies.

    The sanity check builds a new model per stage, so each of its compiled functions is
    traced once on purpose; TensorFlow counts those as "excessive retracing".
    """
    logger = logging.getLogger("tensorflow")
    quiet = _RetracingFilter()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)
