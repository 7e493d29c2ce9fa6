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

The fast path has two ways to get the patched images' outputs (:func:`occlusion_path`
says which one a model gets):

* **incremental**, for models that are a convolutional trunk (convolutions, pooling,
  per-pixel layers, merges) into global average / max pooling and a head: a patch
  changes the trunk's feature maps only inside its receptive-field footprint, so the
  trunk runs once on the clean image and, per patch, only on the cells the patch can
  reach (exactly: each recomputed cell sees the same inputs and padding as in the full
  pass); the global pooling runs on the clean maps with those cells spliced in, then
  the head. About 10x fewer operations than the full batch for the compact CNN at the
  default patch size (``bench/explain.py``: 8-25x faster than tf-explain at patch 8 to
  32 on 2 CPU cores, and maps equal to tf-explain's to the last bit or two).
* **full**: every patched image through the whole model in one batch; for any other
  model (nested backbones, flatten heads, layers of unknown spatial reach), and where
  the footprints cover so much of the feature maps that the incremental path saves
  little.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

import cv2
import keras
import numpy as np
import tensorflow as tf
import tf_explain.core.occlusion_sensitivity as tfx_occlusion
from tf_explain.core.occlusion_sensitivity import OcclusionSensitivity

from ml.explain._common import ModelRef, as_image, cached_function, forward

log = logging.getLogger(__name__)

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


def occluded_batch(
    image: np.ndarray, patch_size: int, fill_value: float, visible: np.ndarray | None = None
) -> np.ndarray:
    """All occluded copies of ``image``, row-major over the patch grid: (n, H, W, C).

    ``visible`` (bool, H x W): only those pixels are filled; the rest keep their value
    (a model fed images blanked outside the lungs never sees the blank filled)."""
    rows, cols = _patch_grid(image.shape[:2], patch_size)
    batch = np.repeat(image[np.newaxis], len(rows) * len(cols), axis=0)
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            window = (slice(top, top + patch_size), slice(left, left + patch_size))
            if visible is None:
                batch[i * len(cols) + j, window[0], window[1], :] = fill_value
            else:
                region = batch[i * len(cols) + j, window[0], window[1], :]
                region[visible[window]] = fill_value
    return batch


def fast_occlusion(
    model: keras.Model,
    image: np.ndarray,
    class_index: int,
    patch_size: int,
    fill_value: float,
    *,
    batch_size: int | None = None,
    path: str = "auto",
    visible: np.ndarray | None = None,
) -> np.ndarray:
    """Raw occlusion map (H, W), float32: tf-explain's map from one compiled call.

    ``visible`` (bool, H x W): patches fill only those pixels (see :func:`occluded_batch`).

    ``path`` is "auto" (the incremental path where it applies and pays, see
    :func:`occlusion_path`), "incremental" (an error where it does not apply) or "full".
    ``batch_size`` splits the patches for models too big to take them all at once; by
    default they go through in one call.
    """
    if path not in ("auto", "incremental", "full"):
        raise ValueError(f"path must be 'auto', 'incremental' or 'full', not {path!r}")
    x = as_image(model, image)
    if visible is not None:
        visible = np.asarray(visible, dtype=bool)
        if visible.shape != x.shape[:2]:
            raise ValueError(f"visible is {visible.shape}; the image is {x.shape[:2]}")
    patch = int(patch_size)
    rows, cols = _patch_grid(x.shape[:2], patch)
    plan = None if path == "full" else _plan(model, x.shape, patch)
    if path == "incremental" and isinstance(plan, str):
        raise ValueError(f"The incremental occlusion path does not apply: {plan}.")
    if isinstance(plan, _Plan) and (path == "incremental" or _pays(plan)):
        outputs = _incremental_forward(model, plan, x, float(fill_value), batch_size, visible)
    else:
        batch = occluded_batch(x, patch, float(fill_value), visible)
        outputs = forward(model, batch, batch_size=batch_size)
    probabilities = np.asarray(outputs)[:, int(class_index)]
    coarse = (1.0 - probabilities.astype(np.float64)).reshape(len(rows), len(cols))
    height, width = x.shape[:2]
    return cv2.resize(coarse, (width, height)).astype(np.float32)


def occlusion_path(
    model: keras.Model,
    patch_size: int | None = None,
    image_shape: tuple[int, ...] | None = None,
) -> str:
    """ "incremental" or "full": the path :func:`fast_occlusion` takes (``path="auto"``).

    Without ``patch_size``, whether the model's graph allows the incremental path at
    all; with it, the path for that patch size on ``image_shape`` (default: the model's
    input shape).
    """
    if isinstance(_graph(model), str):
        return "full"
    if patch_size is None:
        return "incremental"
    shape = tuple(image_shape) if image_shape is not None else tuple(model.inputs[0].shape[1:])
    if len(shape) == 2:
        shape = (*shape, 1)
    if any(s is None for s in shape):
        raise ValueError(f"Give image_shape: the model input {shape} has free dimensions.")
    plan = _plan(model, shape, int(patch_size))
    return "incremental" if isinstance(plan, _Plan) and _pays(plan) else "full"


def incremental_unsupported_reason(model: keras.Model) -> str | None:
    """Why the incremental path does not apply to ``model`` (None where it does)."""
    graph = _graph(model)
    return graph if isinstance(graph, str) else None


def _graph(model: keras.Model) -> _Graph | str:
    def factory(model_ref: ModelRef) -> _Graph | str:
        try:
            return _analyse(model_ref())
        except _UnsupportedError as error:
            log.debug("occlusion: full path for %s: %s", model_ref().name, error)
            return str(error)
        except (AttributeError, TypeError, KeyError, IndexError, ValueError) as error:
            # The analysis reads Keras' graph internals; a Keras that stores them
            # differently gets the full path, not an error.
            log.warning("occlusion: graph analysis failed (%r); full path", error)
            return f"graph analysis failed: {error!r}"

    return cached_function(model, ("occlusion-graph",), factory)


def _plan(model: keras.Model, shape: tuple[int, ...], patch_size: int) -> _Plan | str:
    """The incremental plan for this image shape and patch size, or why there is none."""
    graph = _graph(model)
    if isinstance(graph, str):
        return graph
    if patch_size < 1:
        raise ValueError("patch_size must be >= 1")
    height, width, channels = (int(s) for s in shape)
    image_shape = (height, width, channels)

    def factory(model_ref: ModelRef) -> _Plan | str:
        try:
            plan = _make_plan(graph, image_shape, patch_size)
        except _UnsupportedError as error:
            return str(error)
        plan.function = _build_function(graph, plan, image_shape)
        return plan

    return cached_function(model, ("occlusion-incremental", image_shape, patch_size), factory)


def _pays(plan: _Plan) -> bool:
    return plan.full_cost >= _MIN_GAIN * plan.incremental_cost


def _incremental_forward(
    model: keras.Model,
    plan: _Plan,
    x: np.ndarray,
    fill_value: float,
    batch_size: int | None,
    visible: np.ndarray | None = None,
) -> np.ndarray:
    window = plan.input_window
    rows = window.starts[0][:, None] + np.arange(window.extent[0])
    cols = window.starts[1][:, None] + np.arange(window.extent[1])
    crops = x[rows[:, :, None], cols[:, None, :], :]  # (n, ey, ex, C)
    filled = plan.patch_mask
    if visible is not None:
        filled = filled & visible[rows[:, :, None], cols[:, None, :]]
    values = np.where(filled[..., None], np.float32(fill_value), crops)
    values = values.astype(np.float32)
    image = tf.constant(x[np.newaxis])
    step = plan.n_patches if batch_size is None else max(1, int(batch_size))
    parts = []
    for start in range(0, plan.n_patches, step):
        stop = min(start + step, plan.n_patches)
        parts.append(
            plan.function(image, tf.constant(values[start:stop]), plan.indices(start, stop)).numpy()
        )
    return np.concatenate(parts)


class _QuietModel:
    """``model.predict`` without the progress bar (library code never prints)."""

    def __init__(self, model: keras.Model) -> None:
        self._model = model

    def predict(self, x: np.ndarray, batch_size: int | None = None) -> np.ndarray:
        probabilities: np.ndarray = self._model.predict(x, batch_size=batch_size, verbose=0)
        return probabilities


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

    def apply_patch(
        image: np.ndarray, top_left_x: int, top_left_y: int, patch_size: int
    ) -> np.ndarray:
        patched: np.ndarray = original(image, top_left_x, top_left_y, patch_size)  # a copy
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


# --------------------------------------------------------------------------------------
# Incremental path
# --------------------------------------------------------------------------------------
#
# Every tensor of the trunk (input -> global pooling) is kept as its clean value, computed
# once from the unoccluded image, plus, per patch, a fixed-size *window* that holds every
# cell the patch can have changed (start per patch, same extent for all patches so the
# windows batch). A convolution or pooling layer gets its window from the input cells
# its kernels touch; its input crop (the window's receptive field) is gathered from the
# clean tensor, padded the way the layer pads ('same': zeros for convolutions, -inf for
# max pooling, i.e. ignored), with the patch's changed window spliced in, and the layer's
# own weights run on it with 'valid' padding: each output cell sees exactly the values it
# sees in the full forward pass. Cells outside a window are unchanged by construction,
# so the global pooling layer runs on the clean map with the window spliced in, and the
# head on the pooled vectors. All of it is one cached tf.function per (model, image
# shape, patch size). On CPU the result has the same bits as tf-explain's for the
# compact CNN (the same kernels on the same values; see the clean pass in
# _build_function for the one thing needed for that).

_LAYERS = keras.layers


def _types(*names: str) -> tuple[type[Any], ...]:
    return tuple(getattr(_LAYERS, name) for name in names if hasattr(_LAYERS, name))


# Per-pixel layers in inference mode (dropout and noise are the identity); exact types
# only: a subclass may override ``call`` with anything.
_POINTWISE = _types(
    "Activation",
    "ReLU",
    "ELU",
    "LeakyReLU",
    "PReLU",
    "Softmax",
    "Dropout",
    "SpatialDropout2D",
    "GaussianNoise",
    "GaussianDropout",
    "AlphaDropout",
    "ActivityRegularization",
    "Identity",
    "Rescaling",
    "BatchNormalization",
    "LayerNormalization",
    "Normalization",
    "UnitNormalization",
    "Dense",
)
_MERGE = _types("Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate")
_CONV = _types("Conv2D", "DepthwiseConv2D", "SeparableConv2D")
_POOL = _types("MaxPooling2D", "AveragePooling2D")
_SHIFT = _types("ZeroPadding2D", "Cropping2D")
_GLOBAL_POOL = _types("GlobalAveragePooling2D", "GlobalMaxPooling2D")

# The incremental path is taken where its estimated cost (multiply-accumulates, a
# gathered element counted as _GATHER_COST of them) is at most 1/_MIN_GAIN of the full
# batch's. The estimate leaves out the fixed cost of its ~4x more (small) operations, so
# the margin is wide: on 2 CPU cores, the compact CNN at 128 px measured 2-2.8x faster
# at patch 32 (estimate 4.4), 1.2-1.5x at 48 (2.5), 0.7-0.95x at 64 (1.7: full path).
_MIN_GAIN = 2.0
_GATHER_COST = 8.0


class _UnsupportedError(Exception):
    """The incremental analysis does not apply; the message says why."""


def _last_axis(axis: Any) -> bool:
    axes = tuple(axis) if isinstance(axis, (list, tuple)) else (axis,)
    return axes in ((-1,), (3,))


def _check_pointwise(layer: keras.layers.Layer) -> None:
    name = type(layer).__name__
    if name in ("BatchNormalization", "LayerNormalization", "Normalization", "UnitNormalization"):
        if not _last_axis(layer.axis):
            raise _UnsupportedError(
                f"{layer.name}: {name} over axis {layer.axis}, not the channels"
            )
    elif name == "Softmax" and not _last_axis(layer.axis):
        raise _UnsupportedError(f"{layer.name}: softmax over axis {layer.axis}")
    elif name == "PReLU" and tuple(layer.alpha.shape[:2]) != (1, 1):
        raise _UnsupportedError(f"{layer.name}: PReLU with a per-position slope")
    elif name == "Rescaling" and (np.ndim(layer.scale) > 1 or np.ndim(layer.offset) > 1):
        raise _UnsupportedError(f"{layer.name}: Rescaling with a spatial scale")


def _check_spatial(layer: keras.layers.Layer) -> None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        raise _UnsupportedError(f"{layer.name}: channels_first")
    if isinstance(layer, _CONV):
        if getattr(layer, "groups", 1) != 1:
            raise _UnsupportedError(f"{layer.name}: grouped convolution")
        if getattr(layer, "quantization_mode", None) is not None:
            raise _UnsupportedError(f"{layer.name}: quantized convolution")
    kernel_layers: tuple[type[Any], ...] = (*_CONV, *_POOL)
    if isinstance(layer, kernel_layers) and layer.padding not in ("valid", "same"):
        raise _UnsupportedError(f"{layer.name}: padding {layer.padding!r}")


def _is(layer: Any, kinds: tuple[type, ...]) -> bool:
    return type(layer) in kinds


@dataclass(frozen=True)
class _Step:
    """One trunk node: ``kind`` is pointwise, spatial or merge."""

    kind: str
    node: Any
    inputs: tuple[int, ...]  # ids of the input KerasTensors
    output: int


@dataclass(frozen=True)
class _Graph:
    """A model split into trunk (4-D, input-dependent), global pools and head."""

    input_id: int
    steps: tuple[_Step, ...]
    trunk_nodes: tuple[Any, ...]  # for the clean pass, in order
    pools: tuple[tuple[Any, int, int], ...]  # (node, input id, output id)
    head_nodes: tuple[Any, ...]
    output_id: int
    channels: dict[int, int]


def _graph_model(model: keras.Model) -> Any:
    """The functional graph ``model`` runs, or None (subclassed, or ``call`` overridden)."""
    try:
        from keras.src.models.functional import Functional
    except ImportError:  # pragma: no cover - a Keras without that module
        return None
    if isinstance(model, keras.Sequential):
        graph, expected = getattr(model, "_functional", None), keras.Sequential
    elif isinstance(model, Functional):
        graph, expected = model, Functional
    else:
        return None
    if type(model).call is not expected.call:
        return None  # the graph is not what the model computes
    return graph


def _functional_nodes(model: keras.Model) -> tuple[Any, dict[int, list[Any]]]:
    """``model``'s functional graph and its nodes by depth, if it takes one float32 image."""
    graph = _graph_model(model)
    by_depth = getattr(graph, "_nodes_by_depth", None)
    if not by_depth:
        raise _UnsupportedError("not a functional model (or one with its own call)")
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise _UnsupportedError("not one input and one output")
    model_input = graph.inputs[0]
    if len(model_input.shape) != 4 or model_input.dtype != "float32":
        raise _UnsupportedError("input is not a float32 (H, W, C) image")
    return graph, by_depth


def _check_trunk_node(layer: Any, input_kinds: set[str | None], outs: list[Any]) -> None:
    """A node fed by the trunk must compute in float32 on feature maps only, one output."""
    if input_kinds != {"trunk"}:
        raise _UnsupportedError(f"{layer.name}: mixes the image's feature maps and vectors")
    if isinstance(layer, keras.layers.Layer) and layer.compute_dtype != "float32":
        raise _UnsupportedError(f"{layer.name}: computes in {layer.compute_dtype}")
    if len(outs) != 1:
        raise _UnsupportedError(f"{layer.name}: several outputs")


def _trunk_step_kind(layer: Any, ins: list[Any], out: Any) -> str:
    """How a trunk layer (not a global pooling) changes cells: pointwise, spatial or merge."""
    if len(out.shape) != 4:
        raise _UnsupportedError(
            f"{layer.name} ({type(layer).__name__}): output is not a feature map, "
            "and the layer is no global pooling"
        )
    if _is(layer, _POINTWISE) and len(ins) == 1:
        _check_pointwise(layer)
        return "pointwise"
    if _is(layer, (*_CONV, *_POOL, *_SHIFT)) and len(ins) == 1:
        _check_spatial(layer)
        return "spatial"
    if _is(layer, _MERGE) and len(ins) >= 1:
        if _is(layer, _types("Concatenate")) and not _last_axis(layer.axis):
            raise _UnsupportedError(f"{layer.name}: concatenates along axis {layer.axis}")
        return "merge"
    raise _UnsupportedError(
        f"{layer.name} ({type(layer).__name__}) is not known to act per pixel "
        "or through a fixed kernel"
    )


def _analyse(model: keras.Model) -> _Graph:
    """Split ``model`` into trunk, global pools and head, or raise :class:`_UnsupportedError`."""
    graph, by_depth = _functional_nodes(model)
    model_input = graph.inputs[0]
    kind = {id(model_input): "trunk"}
    channels = {id(model_input): model_input.shape[-1] or 1}
    steps: list[_Step] = []
    trunk_nodes: list[Any] = []
    pools: list[tuple[Any, int, int]] = []
    head_nodes: list[Any] = []
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.is_input:
                continue
            layer = node.operation
            ins = node.input_tensors
            kinds = {kind.get(id(t)) for t in ins}
            outs = node.outputs
            if kinds == {"head"} or (not ins and not isinstance(layer, keras.layers.Layer)):
                head_nodes.append(node)
                kind.update({id(t): "head" for t in outs})
                continue
            _check_trunk_node(layer, kinds, outs)
            if _is(layer, _GLOBAL_POOL) and len(ins) == 1:
                if layer.data_format != "channels_last":
                    raise _UnsupportedError(f"{layer.name}: channels_first")
                pools.append((node, id(ins[0]), id(outs[0])))
                kind[id(outs[0])] = "head"
                continue
            step_kind = _trunk_step_kind(layer, ins, outs[0])
            steps.append(_Step(step_kind, node, tuple(id(t) for t in ins), id(outs[0])))
            trunk_nodes.append(node)
            kind[id(outs[0])] = "trunk"
            channels[id(outs[0])] = outs[0].shape[-1] or 1
    output_id = id(graph.outputs[0])
    if not pools:
        raise _UnsupportedError("no global pooling layer between the feature maps and the output")
    if kind.get(output_id) != "head":
        raise _UnsupportedError("the output is not computed from the globally pooled features")
    return _Graph(
        id(model_input),
        tuple(steps),
        tuple(trunk_nodes),
        tuple(pools),
        tuple(head_nodes),
        output_id,
        channels,
    )


def _axis_geometry(layer: Any, axis: int, size: int) -> tuple[int, int, int, int]:
    """(kernel extent, stride, padding before, output size) of ``layer`` along ``axis``."""
    if _is(layer, _SHIFT):
        before, after = (layer.padding if _is(layer, _types("ZeroPadding2D")) else layer.cropping)[
            axis
        ]
        if _is(layer, _types("Cropping2D")):
            return 1, 1, -before, size - before - after
        return 1, 1, before, size + before + after
    if _is(layer, _POOL):
        kernel, stride = layer.pool_size[axis], layer.strides[axis]
    else:
        kernel = layer.dilation_rate[axis] * (layer.kernel_size[axis] - 1) + 1
        stride = layer.strides[axis]
    if layer.padding == "valid":
        return kernel, stride, 0, (size - kernel) // stride + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    if total and _is(layer, _types("AveragePooling2D")):
        # 'same' average pooling divides by the number of real cells; not a kernel.
        raise _UnsupportedError(f"{layer.name}: 'same' average pooling with padding")
    return kernel, stride, total // 2, out


def _valid_call(layer: Any, x: tf.Tensor) -> tf.Tensor:
    """``layer`` on an already padded crop: the layer's computation with 'valid' padding."""
    ops = keras.ops
    if _is(layer, _SHIFT):
        return x
    if _is(layer, _POOL):
        pool = ops.max_pool if _is(layer, _types("MaxPooling2D")) else ops.average_pool
        return pool(x, layer.pool_size, layer.strides, "valid", "channels_last")
    common = {
        "strides": layer.strides,
        "padding": "valid",
        "dilation_rate": layer.dilation_rate,
        "data_format": "channels_last",
    }
    if _is(layer, _types("SeparableConv2D")):
        y = ops.separable_conv(x, layer.depthwise_kernel, layer.pointwise_kernel, **common)
    elif _is(layer, _types("DepthwiseConv2D")):
        y = ops.depthwise_conv(x, layer.kernel, **common)
    else:
        y = ops.conv(x, layer.kernel, **{**common, "strides": list(layer.strides)})
    if layer.use_bias:
        y = ops.add(y, ops.reshape(layer.bias, (1, 1, 1, -1)))
    return layer.activation(y) if layer.activation is not None else y


def _per_cell_cost(layer: Any, c_in: int, c_out: int) -> float:
    """Multiply-accumulates per output cell (a rough cost for choosing the path)."""
    if _is(layer, _types("Conv2D")):
        return float(np.prod(layer.kernel_size) * c_in * c_out)
    if _is(layer, _types("DepthwiseConv2D")):
        return float(np.prod(layer.kernel_size) * c_out)
    if _is(layer, _types("SeparableConv2D")):
        return float(np.prod(layer.kernel_size) * c_in * layer.depth_multiplier + c_in * c_out)
    if _is(layer, _POOL):
        return float(np.prod(layer.pool_size) * c_out)
    if _is(layer, _types("Dense")):
        return float(c_in * c_out)
    return float(c_out)


@dataclass
class _Window:
    """Per-patch windows of one trunk tensor: starts (n,) per axis, one extent per axis."""

    size: tuple[int, int]
    starts: tuple[np.ndarray, np.ndarray]
    extent: tuple[int, int]


@dataclass
class _Gather:
    """One crop per patch of a trunk tensor, ``length`` cells from ``starts`` per axis."""

    source: int
    starts: tuple[np.ndarray, np.ndarray]
    length: tuple[int, int]
    pad_value: float
    pads: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    identity: bool = False  # the crop is the window itself: no gather needed


def _out_window(
    window: _Window, geometry: tuple[tuple[int, int, int, int], ...]
) -> tuple[_Window, tuple[np.ndarray, np.ndarray], tuple[int, int]]:
    """The output window of a kernel layer and the input crop that computes it."""
    starts, extents, crops, lengths, sizes = [], [], [], [], []
    for axis, (kernel, stride, before, out) in enumerate(geometry):
        first = window.starts[axis]
        last = first + window.extent[axis] - 1
        lo = np.clip(-((kernel - 1 - first - before) // stride), 0, out - 1)  # ceil division
        hi = np.clip((last + before) // stride, 0, out - 1)
        extent = int(max(1, (np.maximum(hi, lo) - lo + 1).max()))
        start = np.minimum(lo, out - extent)
        starts.append(start)
        extents.append(extent)
        crops.append(start * stride - before)
        lengths.append((extent - 1) * stride + kernel)
        sizes.append(out)
    out_window = _Window((sizes[0], sizes[1]), (starts[0], starts[1]), (extents[0], extents[1]))
    return out_window, (crops[0], crops[1]), (lengths[0], lengths[1])


def _union_window(windows: list[_Window]) -> _Window:
    size = windows[0].size
    if any(w.size != size for w in windows):
        raise _UnsupportedError("merged feature maps differ in size")
    starts, extents = [], []
    for axis in range(2):
        lo = np.min([w.starts[axis] for w in windows], axis=0)
        hi = np.max([w.starts[axis] + w.extent[axis] for w in windows], axis=0)
        extent = int(min(size[axis], (hi - lo).max()))
        starts.append(np.minimum(lo, size[axis] - extent))
        extents.append(extent)
    return _Window(size, (starts[0], starts[1]), (extents[0], extents[1]))


def _gather_index(gather: _Gather, window: _Window, patches: np.ndarray) -> np.ndarray:
    """Indices into [padded clean tensor; changed windows of ``patches``] for the crops."""
    (top, bottom), (left, right) = gather.pads
    height, width = window.size
    padded_width = width + left + right
    flat_clean = (height + top + bottom) * padded_width
    rows = gather.starts[0][patches, None] + np.arange(gather.length[0])  # (n, Ly)
    cols = gather.starts[1][patches, None] + np.arange(gather.length[1])  # (n, Lx)
    wy, wx = window.starts[0][patches, None], window.starts[1][patches, None]
    in_rows = (rows >= wy) & (rows < wy + window.extent[0])
    in_cols = (cols >= wx) & (cols < wx + window.extent[1])
    clean = (rows + top)[:, :, None] * padded_width + (cols + left)[:, None, :]
    local = np.arange(len(patches))[:, None, None] * (window.extent[0] * window.extent[1])
    changed = (
        flat_clean + local + (rows - wy)[:, :, None] * window.extent[1] + (cols - wx)[:, None, :]
    )
    inside = in_rows[:, :, None] & in_cols[:, None, :]
    return np.where(inside, changed, clean).astype(np.int32)


@dataclass
class _Plan:
    """Everything fixed by (model, image shape, patch size) for the incremental path."""

    n_patches: int
    input_window: _Window
    patch_mask: np.ndarray  # (n, ey, ex): cells of the input window under the patch
    gathers: list[tuple[_Gather, _Window]]  # in the order the function consumes them
    incremental_cost: float
    full_cost: float
    function: Any = None
    _indices: dict[tuple[int, int], list[tf.Tensor]] = field(default_factory=dict)

    def indices(self, start: int, stop: int) -> list[tf.Tensor]:
        """The gather indices for patches ``start:stop`` (cached per chunk)."""
        key = (start, stop)
        if key not in self._indices:
            patches = np.arange(start, stop)
            self._indices[key] = [
                tf.constant(_gather_index(g, w, patches)) for g, w in self.gathers if not g.identity
            ]
        return self._indices[key]


def _make_plan(graph: _Graph, shape: tuple[int, int, int], patch_size: int) -> _Plan:
    height, width = shape[:2]
    rows, cols = _patch_grid((height, width), patch_size)
    tops = np.repeat(np.array(rows), len(cols))
    lefts = np.tile(np.array(cols), len(rows))
    n = len(tops)
    extent = (min(patch_size, height), min(patch_size, width))
    input_window = _Window(
        (height, width),
        (np.minimum(tops, height - extent[0]), np.minimum(lefts, width - extent[1])),
        extent,
    )
    row_cells = input_window.starts[0][:, None] + np.arange(extent[0])
    col_cells = input_window.starts[1][:, None] + np.arange(extent[1])
    patch_mask = ((row_cells >= tops[:, None]) & (row_cells < tops[:, None] + patch_size))[
        :, :, None
    ] & ((col_cells >= lefts[:, None]) & (col_cells < lefts[:, None] + patch_size))[:, None, :]

    windows = {graph.input_id: input_window}
    gathers: list[tuple[_Gather, _Window]] = []
    full_cost = incremental_cost = 0.0

    def add_gather(gather: _Gather) -> None:
        nonlocal incremental_cost
        window = windows[gather.source]
        size = window.size
        pads = tuple(
            (
                max(0, -int(gather.starts[a].min())),
                max(0, int(gather.starts[a].max()) + gather.length[a] - size[a]),
            )
            for a in range(2)
        )
        gather.pads = pads  # type: ignore[assignment]
        gather.identity = (
            pads == ((0, 0), (0, 0))
            and gather.length == window.extent
            and all(np.array_equal(gather.starts[a], window.starts[a]) for a in range(2))
        )
        if not gather.identity:
            incremental_cost += (
                _GATHER_COST * n * np.prod(gather.length) * graph.channels[gather.source]
            )
        gathers.append((gather, window))

    for step in graph.steps:
        layer = step.node.operation
        c_out = graph.channels[step.output]
        c_in = graph.channels[step.inputs[0]]
        if step.kind == "pointwise":
            out = windows[step.inputs[0]]
        elif step.kind == "spatial":
            source_window = windows[step.inputs[0]]
            geometry = tuple(_axis_geometry(layer, a, source_window.size[a]) for a in range(2))
            out, crops, lengths = _out_window(source_window, geometry)
            pad_value = -np.inf if _is(layer, _types("MaxPooling2D")) else 0.0
            add_gather(_Gather(step.inputs[0], crops, lengths, pad_value))
        else:
            out = _union_window([windows[i] for i in step.inputs])
            for source in step.inputs:
                add_gather(_Gather(source, out.starts, out.extent, 0.0))
        static = tuple(step.node.outputs[0].shape[1:3])
        if any(s is not None and s != o for s, o in zip(static, out.size, strict=True)):
            raise _UnsupportedError(f"{layer.name}: output size {out.size} differs from {static}")
        windows[step.output] = out
        per_cell = _per_cell_cost(layer, c_in, c_out)
        full_cost += n * per_cell * out.size[0] * out.size[1]
        incremental_cost += per_cell * (out.size[0] * out.size[1] + n * np.prod(out.extent))

    for _, source, _ in graph.pools:
        # The pooling layer itself runs on the whole spliced map: the same reduction as
        # in the full pass, so the same bits (a clean sum minus the window's, plus the
        # changed window's, differs in the last bits).
        window = windows[source]
        zeros = np.zeros(n, dtype=np.int64)
        add_gather(_Gather(source, (zeros, zeros), window.size, 0.0))
    return _Plan(n, input_window, patch_mask, gathers, incremental_cost, full_cost)


def _call_node(node: Any, values: dict[int, Any]) -> None:
    """Run one graph node on ``values`` (KerasTensor id -> tensor), in inference mode."""
    args, kwargs = node.arguments.fill_in(values)
    if isinstance(node.operation, keras.layers.Layer):
        kwargs = {**kwargs, "training": False}
    outputs = tf.nest.flatten(node.operation(*args, **kwargs))
    for tensor, value in zip(node.outputs, outputs, strict=True):
        values[id(tensor)] = value


def _build_function(graph: _Graph, plan: _Plan, shape: tuple[int, int, int]) -> Any:
    """The incremental forward pass: clean image + changed input windows -> outputs."""
    steps, pools = graph.steps, graph.pools
    gathers = plan.gathers
    ey, ex = plan.input_window.extent
    signature = [
        tf.TensorSpec((1, *shape), tf.float32),
        tf.TensorSpec((None, ey, ex, shape[2]), tf.float32),
        [tf.TensorSpec((None, *g.length), tf.int32) for g, _ in gathers if not g.identity],
    ]

    def run(image: tf.Tensor, window_values: tf.Tensor, indices: list[tf.Tensor]) -> tf.Tensor:
        # The clean pass runs on the image twice: with oneDNN on CPU a batch of one takes
        # other kernels than a batch of several, whose results differ in the last bits
        # from the batched pass tf-explain makes; any larger batch gives the same bits.
        clean = {graph.input_id: tf.concat([image, image], 0)}
        for node in graph.trunk_nodes:
            _call_node(node, clean)
        clean = {key: value[:1] for key, value in clean.items()}
        changed = {graph.input_id: window_values}
        queue = iter(gathers)
        index_queue = iter(indices)

        def crop() -> tf.Tensor:
            gather, _ = next(queue)
            if gather.identity:
                return changed[gather.source]
            value = clean[gather.source][0]
            c = value.shape[-1]
            if gather.pads != ((0, 0), (0, 0)):
                value = tf.pad(value, [*gather.pads, (0, 0)], constant_values=gather.pad_value)
            source = tf.concat(
                [tf.reshape(value, (-1, c)), tf.reshape(changed[gather.source], (-1, c))], 0
            )
            return tf.gather(source, next(index_queue))

        for step in steps:
            if step.kind == "pointwise":
                _call_node(step.node, changed)
            elif step.kind == "spatial":
                changed[step.output] = _valid_call(step.node.operation, crop())
            else:
                crops = {source: crop() for source in step.inputs}
                _call_node(step.node, crops)
                changed[step.output] = crops[step.output]
        head: dict[int, Any] = {}
        for node, source, _ in pools:
            spliced = {source: crop()}
            _call_node(node, spliced)
            head.update(spliced)
        for node in graph.head_nodes:
            _call_node(node, head)
        return head[graph.output_id]

    return tf.function(run, input_signature=signature)
