"""The lung U-Net (Keras functional API) and its training loss."""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

ARCHITECTURE = "lung_unet"


def _block(x: Any, filters: int, name: str) -> Any:
    for i in (1, 2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv{i}")(x)
        # momentum 0.9: a few hundred steps in all; 0.99 would leave the moving
        # statistics far from the data and inference-mode outputs wrong.
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_lung_unet(
    input_size: int = 128, width: int = 8, depth: int = 4, seed: int = 0
) -> keras.Model:
    """A small U-Net: ``depth`` levels widening ``width`` x 1, 2, 4, 8 (+ bottleneck 16).

    Why this size: about 0.5 M parameters (2 MB) and ~5 ms for one 128 x 128 image on
    two CPU cores with a direct call, so it runs beside the classifier in the worker.
    Output: per-pixel lung probability (sigmoid), shape (n, size, size, 1).
    """
    if input_size % (2**depth):
        raise ValueError(f"input_size must be a multiple of {2**depth}, got {input_size}.")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_size, input_size, 1), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = _block(x, width * 2**level, f"down{level}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _block(x, width * 2**depth, "bottleneck")
    for level in reversed(range(depth)):
        x = layers.UpSampling2D(2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _block(x, width * 2**level, f"dec{level}")
    outputs = layers.Conv2D(1, 1, activation="sigmoid", name="lungs")(x)
    return keras.Model(inputs, outputs, name=ARCHITECTURE)


def bce_dice_loss(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy plus soft Dice: cross-entropy for calibrated pixels, Dice so
    that the loss does not favour the background (lungs are ~25 % of the input)."""
    y_true = keras.ops.cast(y_true, y_pred.dtype)
    bce = keras.ops.mean(keras.losses.binary_crossentropy(y_true, y_pred))
    axes = (1, 2, 3)
    intersection = keras.ops.sum(y_true * y_pred, axis=axes)
    total = keras.ops.sum(y_true, axis=axes) + keras.ops.sum(y_pred, axis=axes)
    soft_dice = (2 * intersection + 1.0) / (total + 1.0)
    return bce + 1.0 - keras.ops.mean(soft_dice)
