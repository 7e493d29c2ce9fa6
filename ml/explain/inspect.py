"""Looking inside a Keras CNN: layers, first-layer filters and activation maps.

The model-inspector half of ``ml.explain``, for notebooks and for the
platform's inspector page alike. Works on any Keras 3 functional or Sequential image
model with one input, including models that nest a backbone as a sub-model (layers
inside it are named by path, ``"densenet121/conv1_conv"``, as in :func:`last_conv_layer`).

    from ml.explain.api import conv_layers, filter_grid, activation_maps, activation_grid
    conv_layers(model)                      # ['conv1', 'conv2', 'conv3', 'last_conv']
    grid = filter_grid(model)               # first conv layer's kernels, one tile each
    maps = activation_maps(model, x, "relu2")   # (H', W', C) raw activations
    png = grid_png(activation_grid(maps))   # one normalised tile per channel
"""

from __future__ import annotations

import io
from typing import Any

import keras
import numpy as np
from matplotlib import colormaps
from PIL import Image

from ml.explain._common import ModelRef, as_image, cached_function
from ml.explain.methods import _CONV_TYPES, _expose

_GAP = 1  # pixels between tiles (value: the grid's background)


def _walk(model: Any, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every leaf layer in forward order, with its path through nested models."""
    out = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        path = (*prefix, layer.name)
        if isinstance(layer, keras.Model):
            out.extend(_walk(layer, path))
        else:
            out.append((path, layer))
    return out


def _output_rank(layer: Any) -> int | None:
    try:
        return len(layer.output.shape)
    except (AttributeError, ValueError):  # a layer used several times or never called
        return None


def conv_layers(model: keras.Model) -> list[str]:
    """Names of the convolution layers with a 4-D output, input side first.

    Nested sub-models are searched; their layers are named ``"outer/inner"``.
    """
    return [
        "/".join(path)
        for path, layer in _walk(model)
        if isinstance(layer, _CONV_TYPES) and _output_rank(layer) == 4
    ]


def spatial_layers(model: keras.Model) -> list[str]:
    """Every layer whose output is a 4-D feature map (conv, normalisation, activation,
    pooling): the layers :func:`activation_maps` can show."""
    return ["/".join(path) for path, layer in _walk(model) if _output_rank(layer) == 4]


def _find(model: keras.Model, name: str) -> tuple[list[str], Any]:
    for path, layer in _walk(model):
        if "/".join(path) == name or (len(path) == 1 and path[0] == name):
            return list(path), layer
    raise ValueError(
        f"Model {model.name!r} has no layer {name!r}; choose from {spatial_layers(model)}."
    )


def first_conv_layer(model: keras.Model) -> str:
    names = conv_layers(model)
    if not names:
        raise ValueError(f"Model {model.name!r} has no convolution layer.")
    return names[0]


def _tile(tiles: list[np.ndarray], columns: int | None, background: float) -> np.ndarray:
    """Arrange equally sized tiles (h, w) or (h, w, 3) in a grid with 1-px gaps."""
    n = len(tiles)
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    h, w = tiles[0].shape[:2]
    shape = (rows * (h + _GAP) - _GAP, columns * (w + _GAP) - _GAP, *tiles[0].shape[2:])
    grid = np.full(shape, background, dtype=np.float32)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (h + _GAP) : r * (h + _GAP) + h, c * (w + _GAP) : c * (w + _GAP) + w] = tile
    return grid


def _unit(array: np.ndarray) -> np.ndarray:
    low, high = float(array.min()), float(array.max())
    if high - low <= 1e-12:
        return np.full(array.shape, 0.5, dtype=np.float32)
    return ((array - low) / (high - low)).astype(np.float32)


def filter_grid(
    model: keras.Model, layer: str | None = None, *, columns: int | None = None
) -> np.ndarray:
    """The kernels of a conv layer (default: the first) as one grid image in [0, 1].

    One tile per output filter, each min-max scaled on its own (so shapes compare,
    magnitudes do not). A kernel over 3 input channels is shown in colour, over one
    channel in grey; over more channels (a deeper layer) the mean over input channels.
    Returns float32 (H, W) or (H, W, 3); see :func:`grid_png`.
    """
    _, found = _find(model, layer or first_conv_layer(model))
    if not isinstance(found, _CONV_TYPES):
        raise ValueError(f"Layer {found.name!r} is not a convolution.")
    kernel = np.asarray(keras.ops.convert_to_numpy(found.kernel), dtype=np.float32)
    if isinstance(found, keras.layers.DepthwiseConv2D):  # (kh, kw, in, multiplier)
        kernel = kernel.reshape(*kernel.shape[:2], 1, -1)
    elif isinstance(found, keras.layers.Conv2DTranspose):  # (kh, kw, out, in)
        kernel = np.swapaxes(kernel, 2, 3)
    elif isinstance(found, keras.layers.SeparableConv2D):
        kernel = np.asarray(keras.ops.convert_to_numpy(found.depthwise_kernel))
        kernel = kernel.reshape(*kernel.shape[:2], 1, -1)
    tiles = []
    for f in range(kernel.shape[-1]):
        k = kernel[..., f]
        tiles.append(_unit(k) if k.shape[-1] == 3 else _unit(k.mean(axis=-1)))
    return _tile(tiles, columns, background=1.0)


def activation_maps(model: keras.Model, image: np.ndarray, layer: str) -> np.ndarray:
    """Raw output of ``layer`` for one preprocessed image: float32 (H', W', C).

    Inference mode (BatchNormalization uses its moving statistics, Dropout is off).
    The feature model is built once per (model, layer) and cached with the model.
    """
    x = as_image(model, image)
    path, found = _find(model, layer)
    if _output_rank(found) != 4:
        raise ValueError(f"Layer {layer!r} has no 4-D (feature map) output.")

    def factory(model_ref: ModelRef) -> keras.Model:
        inputs, layer_output, _ = _expose(model_ref(), path)
        return keras.Model(inputs, layer_output)

    feature = cached_function(model, ("activations", "/".join(path)), factory)
    return np.asarray(feature(x[np.newaxis], training=False)[0], dtype=np.float32)


def activation_grid(
    maps: np.ndarray, *, max_maps: int = 64, columns: int | None = None, order: str = "index"
) -> np.ndarray:
    """Channels of an activation array (H', W', C) as a grid in [0, 1].

    Each channel is scaled on its own by the shared maximum of the layer (so a dead,
    all-zero channel stays black and a strong one bright); ``order="strongest"`` shows
    the ``max_maps`` channels with the largest mean activation first.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"Expected (H, W, C) activations, got {maps.shape}.")
    channels = np.arange(maps.shape[-1])
    if order == "strongest":
        channels = np.argsort(-maps.mean(axis=(0, 1)), kind="stable")
    elif order != "index":
        raise ValueError("order must be 'index' or 'strongest'")
    channels = channels[:max_maps]
    low, high = float(maps.min()), float(maps.max())
    span = high - low if high > low else 1.0
    tiles = [(maps[..., c] - low) / span for c in channels]
    return _tile(tiles, columns, background=1.0)


def grid_png(grid: np.ndarray, *, scale: int = 4, cmap: str | None = None) -> bytes:
    """PNG bytes of a grid from :func:`filter_grid` / :func:`activation_grid`.

    ``scale`` enlarges each pixel (nearest neighbour: a 3x3 kernel stays 9 squares);
    ``cmap`` (a matplotlib colour map name, e.g. ``"viridis"``) colours a grey grid.
    """
    array = np.clip(np.asarray(grid, dtype=np.float32), 0.0, 1.0)
    if cmap is not None and array.ndim == 2:
        array = colormaps[cmap](array)[..., :3]
    u8 = (array * 255).round().astype(np.uint8)
    picture = Image.fromarray(u8)
    if scale > 1:
        picture = picture.resize(
            (picture.width * scale, picture.height * scale), Image.Resampling.NEAREST
        )
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
