"""Model architectures (Keras functional API)."""

from __future__ import annotations

import keras
from keras import layers

from ml.labels import CLASSES


def build_compact_cnn(
    input_size: int = 128,
    channels: int = 1,
    n_classes: int = len(CLASSES),
    width: int = 16,
    dropout: float = 0.3,
    seed: int = 0,
) -> keras.Model:
    """A small CNN trained from scratch; fast on two CPU cores.

    Four conv blocks (conv-BN-ReLU-pool) widening 1x, 2x, 4x, 8x, then global
    average pooling. The last conv layer is named ``last_conv`` so Grad-CAM
    can find it without guessing.
    """
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_size, input_size, channels), name="image")
    x = inputs
    for block, factor in enumerate((1, 2, 4, 8)):
        name = "last_conv" if factor == 8 else f"conv{block + 1}"
        x = layers.Conv2D(width * factor, 3, padding="same", use_bias=False, name=name)(x)
        # momentum 0.9: small data sets give few steps; 0.99 leaves the
        # moving statistics far from the data and inference-mode outputs wrong.
        x = layers.BatchNormalization(momentum=0.9, name=f"bn{block + 1}")(x)
        x = layers.Activation("relu", name=f"relu{block + 1}")(x)
        if factor != 8:
            x = layers.MaxPooling2D(2, name=f"pool{block + 1}")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="compact_cnn")
