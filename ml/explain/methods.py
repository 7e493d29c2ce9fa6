"""Heatmap explanations for any Keras functional image classifier.

Which code computes what (tf-explain 0.3.1 was written for Keras 2; TensorFlow 2.21 ships
Keras 3, so only its static "core" functions are used, never its ``explain()``, which
returns a blended uint8 picture rather than the map):

* **Grad-CAM**: tf-explain's ``GradCAM.get_gradients_and_filters`` (conv outputs and
  their gradients) and ``GradCAM.generate_ponderated_output`` (gradient-weighted sum of
  the filters), then ReLU as in Selvaraju et al. Workarounds: the layer is always passed
  (tf-explain's ``infer_grad_cam_target_layer`` reads ``layer.output_shape``, which
  Keras 3 removed), ``use_guided_grads`` defaults to False (standard Grad-CAM is not
  guided; tf-explain defaults to guided), and tf-explain builds its gradient model as
  ``Model([model.inputs], ...)``, a doubly nested input list that Keras 3 accepts only
  with a structure warning on every call: it is given a small view of the model whose
  ``inputs`` is the bare input tensor. A conv layer inside a nested sub-model (the
  ImageNet backbones) is exposed the same way through a graph rebuilt with
  ``keras.models.clone_model(call_function=...)`` that shares the original layers.
* **Occlusion**: see :mod:`ml.explain.occlusion` (tf-explain's ``OcclusionSensitivity``
  is the reference; a batched compiled path gives the same map).
* **SmoothGrad**: tf-explain's ``SmoothGrad.get_averaged_gradients`` (gradient of the
  categorical cross-entropy of the target class, averaged over noisy copies). The noisy
  copies are made here with a seeded generator, because tf-explain's
  ``generate_noisy_images`` draws from the global NumPy state (maps would change from
  run to run) and its default noise (sigma 1.0) is the whole [0, 1] range.
* **Integrated Gradients**: tf-explain's ``IntegratedGradients.generate_linear_path``
  and ``get_integrated_gradients`` (path-averaged gradients of the class score), then
  multiplied by ``image - baseline``: tf-explain returns the averaged gradients only,
  which is not Integrated Gradients (Sundararajan et al. 2017, eq. 1).
* **Guided backprop**: not in tf-explain 0.3.1; ``tf.GradientTape`` on a clone of the
  model whose hidden element-wise activations pass back only positive gradients
  (Springenberg et al. 2015), with a softmax output replaced by its logits.
* **Deconvolution** (deconvnet, Zeiler & Fergus 2014): not in tf-explain 0.3.1; the same
  clone with the deconvnet's rule instead: the backward signal is rectified
  (``max(grad, 0)``) at each activation *whatever the forward activation was*, where
  guided backprop also zeroes it where the forward input was negative. Max pooling's
  backward is the deconvnet's switch unpooling, a convolution's the transposed filter.

tf-explain's core functions are compiled once per model (``tf.function`` cached in a
``WeakKeyDictionary``, see :mod:`ml.explain._common`), never ``model.predict``.
Every map is resized to the input resolution and min-max scaled to [0, 1].
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from tf_explain.core.grad_cam import GradCAM
from tf_explain.core.integrated_gradients import IntegratedGradients
from tf_explain.core.smoothgrad import SmoothGrad

from ml.explain._common import (
    ModelRef,
    as_image,
    cached_function,
    forward,
    normalise_map,
    resize_map,
)

log = logging.getLogger(__name__)

METHODS: tuple[str, ...] = ("gradcam", "occlusion", "smoothgrad", "ig", "guided", "deconvnet")

_CONV_TYPES = (
    layers.Conv2D,
    layers.SeparableConv2D,
    layers.DepthwiseConv2D,
    layers.Conv2DTranspose,
)


@dataclass
class Heatmap:
    """One explanation: the map and everything needed to reproduce it."""

    method: str
    values: np.ndarray  # float32 (H, W) at the model input's resolution, finite, in [0, 1]
    target_class: int
    target_label: str | None
    layer: str | None  # conv layer used (Grad-CAM), else None
    params: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable
    seconds: float = 0.0

    def metadata(self) -> dict[str, Any]:
        """JSON-serialisable description without the values (for a database row)."""
        return {
            "method": self.method,
            "target_class": self.target_class,
            "target_label": self.target_label,
            "layer": self.layer,
            "params": self.params,
            "seconds": self.seconds,
            "shape": list(self.values.shape),
        }


# --------------------------------------------------------------------------- layers


def _history(tensor: Any) -> tuple[Any, int]:
    operation, node_index, _ = tensor._keras_history
    return operation, node_index


LUNG_FEATURES = "lung_features"  # the name ml.models.architectures gives masked feature maps


def _find_last_conv(model: keras.Model) -> list[str] | None:
    """Breadth-first walk from the outputs back to the inputs; first convolution wins.

    A 4-D layer named ``lung_features`` (the lung-masked feature maps of
    ``ml.models.architectures.build_lung_cnn``) wins over a convolution: it is the last
    spatial map that model's classifier reads.

    Walking the graph (not ``model.layers`` in reverse) skips layers that do not feed
    the output, and on a residual block finds the conv nearest the output whichever
    order the layers were created in. Nested models are searched in place.
    """
    queue = deque(model.outputs)
    seen: set[tuple[int, int]] = set()
    while queue:
        tensor = queue.popleft()
        operation, node_index = _history(tensor)
        if (id(operation), node_index) in seen:
            continue
        seen.add((id(operation), node_index))
        if len(tensor.shape) == 4 and (
            isinstance(operation, _CONV_TYPES) or operation.name == LUNG_FEATURES
        ):
            return [operation.name]
        if isinstance(operation, keras.Model):
            inner = _find_last_conv(operation)
            if inner is not None:
                return [operation.name, *inner]
        queue.extend(operation._inbound_nodes[node_index].input_tensors)
    return None


def last_conv_layer(model: keras.Model) -> str:
    """Name of the convolution with a 4-D output nearest the model's output.

    A layer inside a nested sub-model is named by its path, ``"outer/inner"``.
    Raises ValueError when the model has no such layer (Grad-CAM needs one).
    """
    path = _find_last_conv(model)
    if path is None:
        raise ValueError(
            f"Model {model.name!r} has no convolution layer with a 4-D output "
            "(Conv2D, SeparableConv2D, DepthwiseConv2D, Conv2DTranspose); Grad-CAM needs "
            "one. Use another method, or pass layer=<name of a 4-D layer>."
        )
    return "/".join(path)


class _GradCAMView:
    """What tf-explain's ``get_gradients_and_filters`` reads from a model, Keras 3-safe.

    tf-explain builds ``Model([model.inputs], [model.get_layer(name).output,
    model.output])``; with ``inputs`` a bare tensor the input structure is not nested.
    """

    def __init__(self, inputs: Any, layer_output: Any, output: Any, layer_name: str) -> None:
        self.inputs = inputs
        self.output = output
        self._layer_output = layer_output
        self._layer_name = layer_name

    def get_layer(self, name: str) -> Any:
        if name != self._layer_name:  # pragma: no cover - tf-explain asks for the one layer
            raise ValueError(name)
        return type("LayerOutput", (), {"output": self._layer_output})()


def _expose(model: keras.Model, path: list[str]) -> tuple[Any, Any, Any]:
    """(input tensor, tensor of layer ``path``, output tensor) in one connected graph.

    A layer of a nested model is not connected to the outer model's input in Keras 3;
    the outer graph is rebuilt (sharing the same layers and weights) with the nested
    model replaced by a copy that also returns that layer's output.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("Grad-CAM supports models with one input and one output.")
    if len(path) == 1:
        return model.inputs[0], model.get_layer(path[0]).output, model.outputs[0]
    sub = model.get_layer(path[0])
    sub_input, sub_layer, sub_output = _expose(sub, path[1:])
    feature = keras.Model(sub_input, [sub_layer, sub_output])
    captured: list[Any] = []

    def call_function(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if layer is sub:
            layer_output, output = feature(*args, **kwargs)
            captured.append(layer_output)
            return output
        return layer(*args, **kwargs)

    rebuilt = keras.models.clone_model(
        model, clone_function=lambda layer: layer, call_function=call_function
    )
    if len(captured) != 1:
        raise ValueError(f"Layer {path[0]!r} is used {len(captured)} times; cannot pick one.")
    return rebuilt.inputs[0], captured[0], rebuilt.outputs[0]


def gradcam_map(
    model: keras.Model,
    image: np.ndarray,
    class_index: int,
    *,
    layer: str | None = None,
    guided: bool = False,
) -> tuple[np.ndarray, dict[str, Any], str]:
    """Raw Grad-CAM at the conv layer's resolution, through tf-explain's core functions."""
    layer = layer or last_conv_layer(model)
    guided = bool(guided)
    path = layer.split("/")
    exposed = cached_function(model, ("gradcam-graph", layer), lambda ref: _expose(ref(), path))
    if len(exposed[1].shape) != 4:  # a layer passed by name may be anything
        raise ValueError(
            f"Grad-CAM needs a layer with a 4-D output (batch, H, W, filters); "
            f"{layer!r} has shape {tuple(exposed[1].shape)}."
        )
    inputs, layer_output, output = exposed
    view = _GradCAMView(inputs, layer_output, output, path[-1])
    spec = tf.TensorSpec((None, *image.shape), tf.float32)

    def factory(model_ref: ModelRef) -> Any:
        @tf.function(input_signature=[spec, tf.TensorSpec((), tf.int32)])  # type: ignore[untyped-decorator]  # TF is untyped
        def gradients_and_filters(images: tf.Tensor, class_index: tf.Tensor) -> Any:
            return GradCAM.get_gradients_and_filters(view, images, path[-1], class_index, guided)

        return gradients_and_filters

    function = cached_function(model, ("gradcam", layer, guided, image.shape), factory)
    outputs, grads = function(tf.constant(image[np.newaxis]), tf.constant(class_index, tf.int32))
    cam = GradCAM.generate_ponderated_output(outputs, grads)[0].numpy()
    cam = np.maximum(cam, 0.0)  # only features that raise the class score
    return cam, {"layer": layer, "guided": guided, "relu": True, "upsample": "bilinear"}, layer


# ------------------------------------------------------------------- gradient methods


def _reduce_channels(gradients: np.ndarray) -> np.ndarray:
    reduced: np.ndarray = np.abs(gradients).sum(axis=-1)
    return reduced


def smoothgrad_map(
    model: keras.Model,
    image: np.ndarray,
    class_index: int,
    *,
    samples: int = 25,
    noise: float = 0.15,
    seed: int = 0,
) -> tuple[np.ndarray, dict[str, Any], None]:
    """SmoothGrad with noise sigma = ``noise`` x the image's value range (Smilkov et al.
    suggest 10-20 %), through tf-explain's ``SmoothGrad.get_averaged_gradients``."""
    samples = int(samples)
    if samples < 1:
        raise ValueError("samples must be >= 1")
    value_range = float(image.max() - image.min()) or 1.0
    sigma = float(noise) * value_range
    rng = np.random.default_rng(seed)
    noisy = (image[np.newaxis] + rng.normal(0.0, sigma, (samples, *image.shape))).astype(np.float32)
    spec = tf.TensorSpec((samples, *image.shape), tf.float32)
    averaged = SmoothGrad.get_averaged_gradients.python_function

    def factory(model_ref: ModelRef) -> Any:
        return tf.function(
            lambda x, c: averaged(x, model_ref(), c, samples),
            input_signature=[spec, tf.TensorSpec((), tf.int32)],
        )

    function = cached_function(model, ("smoothgrad", samples, image.shape), factory)
    gradients = function(tf.constant(noisy), tf.constant(class_index, tf.int32)).numpy()[0]
    params = {
        "samples": samples,
        "noise": float(noise),
        "sigma": sigma,
        "seed": int(seed),
        "loss": "categorical_crossentropy",
        "reduce": "abs-sum-channels",
    }
    return _reduce_channels(gradients), params, None


def ig_map(
    model: keras.Model,
    image: np.ndarray,
    class_index: int,
    *,
    steps: int = 32,
    baseline: float = 0.0,
) -> tuple[np.ndarray, dict[str, Any], None]:
    """Integrated Gradients from a constant ``baseline`` image (0.0: black, the letterbox
    padding of the preprocessing), path through tf-explain's core functions."""
    steps = int(steps)
    if steps < 2:
        raise ValueError("steps must be >= 2")
    reference = np.full(image.shape, float(baseline), dtype=np.float32)
    path = np.stack(IntegratedGradients.generate_linear_path(reference, image, steps)).astype(
        np.float32
    )
    spec = tf.TensorSpec((steps, *image.shape), tf.float32)
    integrate = IntegratedGradients.get_integrated_gradients.python_function

    def factory(model_ref: ModelRef) -> Any:
        return tf.function(
            lambda x, c: integrate(x, model_ref(), c, steps),
            input_signature=[spec, tf.TensorSpec((), tf.int32)],
        )

    function = cached_function(model, ("ig", steps, image.shape), factory)
    averaged = function(tf.constant(path), tf.constant(class_index, tf.int32)).numpy()[0]
    attributions = (image - reference) * averaged
    params = {
        "steps": steps,
        "baseline": float(baseline),
        "score": "output",
        "reduce": "abs-sum-channels",
    }
    return _reduce_channels(attributions), params, None


_NOT_GUIDED = {"linear", "softmax", "log_softmax"}


def _guided(function: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor], tf.Tensor]:
    """Element-wise activation whose backward pass keeps only positive gradients.

    For ReLU this is exactly guided backprop: grad_in = (x > 0) * max(grad_out, 0).
    Other element-wise activations get the same rule with their own derivative.
    """

    @tf.custom_gradient  # type: ignore[untyped-decorator]  # TF is untyped
    def guided(x: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        y = function(x)

        def backward(upstream: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(x)
                again = function(x)
            return tape.gradient(again, x, output_gradients=tf.nn.relu(upstream))

        return y, backward

    guided_activation: Callable[[tf.Tensor], tf.Tensor] = guided  # tf.custom_gradient is untyped
    return guided_activation


class _Elementwise(layers.Layer):  # type: ignore[misc]  # Keras ships no types
    """Stands in for an activation layer in the guided clone.

    Takes (and ignores) ``mask`` because a replaced ``Softmax`` node is called with it.
    """

    def __init__(self, function: Callable[[tf.Tensor], tf.Tensor], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.function = function

    def call(self, inputs: tf.Tensor, mask: Any = None) -> tf.Tensor:
        return self.function(inputs)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


def _deconvnet(function: Callable[[tf.Tensor], tf.Tensor]) -> Callable[[tf.Tensor], tf.Tensor]:
    """Element-wise activation with the deconvnet's backward pass (Zeiler & Fergus 2014).

    The backward signal is rectified, grad_in = max(grad_out, 0), whatever the forward
    input was: unlike guided backprop (``_guided``) it is not masked by where the
    forward activation was positive, and the activation's own derivative is not used.
    """

    @tf.custom_gradient  # type: ignore[untyped-decorator]  # TF is untyped
    def deconvnet(x: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
        def backward(upstream: tf.Tensor) -> tf.Tensor:
            return tf.nn.relu(upstream)

        return function(x), backward

    deconvnet_activation: Callable[[tf.Tensor], tf.Tensor] = deconvnet  # untyped decorator
    return deconvnet_activation


_RULES: dict[
    str, Callable[[Callable[[tf.Tensor], tf.Tensor]], Callable[[tf.Tensor], tf.Tensor]]
] = {
    "guided": _guided,
    "deconvnet": _deconvnet,
}


def _weight_free_layers(model: keras.Model) -> set[int]:
    """Ids of the top-level layers without weights whose inputs no weight has touched.

    They compute something of the raw input, not a feature: ``lung_cnn``'s lung-cell gate
    (``visible`` and ``lung_cells``: clipped ReLUs of the scaled input, 0 or 1 almost
    everywhere). The deconvnet rule projects features back to the input, so these keep
    their own derivative; under the rule the gate's x 1e4 input scale would pass the
    signal straight to every visible pixel and the map would show the gate.
    """
    depends: dict[tuple[int, int], bool] = {}

    def on_weights(tensor: Any) -> bool:
        operation, node_index = _history(tensor)
        key = (id(operation), node_index)
        if key not in depends:
            inputs = operation._inbound_nodes[node_index].input_tensors
            depends[key] = bool(operation.weights) or any(on_weights(t) for t in inputs)
        return depends[key]

    free: set[int] = set()
    fed: set[int] = set()
    queue = deque(model.outputs)
    seen: set[tuple[int, int]] = set()
    while queue:
        tensor = queue.popleft()
        operation, node_index = _history(tensor)
        if (id(operation), node_index) in seen:
            continue
        seen.add((id(operation), node_index))
        inputs = operation._inbound_nodes[node_index].input_tensors
        if inputs and not operation.weights and not any(on_weights(t) for t in inputs):
            free.add(id(operation))
        else:
            fed.add(id(operation))
        queue.extend(inputs)
    return free - fed


def _rule_clone(model: keras.Model, rule: str = "guided") -> tuple[keras.Model, str, list[str]]:
    """A copy of ``model`` (same weights) whose hidden element-wise activations pass the
    backward signal by ``rule`` ("guided" or "deconvnet"), with logit output.

    Returns the copy, the score it explains ("logit" or "output") and the names of the
    activations left with their own derivative (weight-free ones, deconvnet only).
    """
    wrap = _RULES[rule]
    output_ops = {id(_history(t)[0]) for t in model.outputs}
    weight_free = _weight_free_layers(model) if rule == "deconvnet" else set()
    score = {"value": "output"}
    kept: list[str] = []

    def clone_function(layer: Any) -> Any:
        is_output = id(layer) in output_ops
        if id(layer) in weight_free and not is_output:
            activation = getattr(layer, "activation", None)
            if isinstance(layer, (layers.ReLU, layers.LeakyReLU, layers.ELU)) or (
                callable(activation) and getattr(activation, "__name__", "") not in _NOT_GUIDED
            ):
                kept.append(layer.name)
            return layer.__class__.from_config(layer.get_config())
        if isinstance(layer, (layers.ReLU, layers.LeakyReLU, layers.ELU)):
            original = layer.__class__.from_config(layer.get_config())
            return _Elementwise(wrap(original), name=layer.name)
        if isinstance(layer, layers.Softmax):
            if is_output:
                score["value"] = "logit"
                return _Elementwise(tf.identity, name=layer.name)
            return layer.__class__.from_config(layer.get_config())
        clone = layer.__class__.from_config(layer.get_config())
        activation = getattr(clone, "activation", None)
        name = getattr(activation, "__name__", "")
        if callable(activation) and not isinstance(clone, keras.Model):
            if is_output and name == "softmax":
                clone.activation = keras.activations.linear
                score["value"] = "logit"
            elif not is_output and name not in _NOT_GUIDED:
                clone.activation = wrap(activation)
        return clone

    clone = keras.models.clone_model(model, clone_function=clone_function, recursive=True)
    clone.set_weights(model.get_weights())
    return clone, score["value"], sorted(set(kept))


def _rule_gradients(
    model: keras.Model, image: np.ndarray, class_index: int, rule: str
) -> tuple[np.ndarray, str, list[str]]:
    """The input gradient of the class score through the ``rule`` clone (one image)."""
    clone, score, kept = cached_function(
        model, (f"{rule}-clone",), lambda ref: _rule_clone(ref(), rule)
    )
    spec = tf.TensorSpec((None, *image.shape), tf.float32)

    def factory(model_ref: ModelRef) -> Any:
        @tf.function(input_signature=[spec, tf.TensorSpec((), tf.int32)])  # type: ignore[untyped-decorator]  # TF is untyped
        def gradients(images: tf.Tensor, class_index: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                tape.watch(images)
                scores = clone(images, training=False)[:, class_index]
            return tape.gradient(scores, images)

        return gradients

    function = cached_function(model, (rule, image.shape), factory)
    grads = function(tf.constant(image[np.newaxis]), tf.constant(class_index, tf.int32))
    values: np.ndarray = grads.numpy()[0]
    return values, score, kept


def guided_map(
    model: keras.Model, image: np.ndarray, class_index: int
) -> tuple[np.ndarray, dict[str, Any], None]:
    """Guided backprop (tf.GradientTape on a guided clone; not in tf-explain 0.3.1)."""
    grads, score, _ = _rule_gradients(model, image, class_index, "guided")
    params = {"score": score, "activations": "guided", "reduce": "abs-sum-channels"}
    return _reduce_channels(grads), params, None


def deconvnet_map(
    model: keras.Model, image: np.ndarray, class_index: int
) -> tuple[np.ndarray, dict[str, Any], None]:
    """Deconvolution (Zeiler & Fergus 2014) as a backward pass: tf.GradientTape on a clone
    whose rectifiers pass back max(grad_out, 0) unmasked by the forward activations.

    The rest of the deconvnet is the ordinary backward pass: max pooling sends the signal
    to the position that won the forward pass (the "switches"), a convolution's backward
    is the transposed filter. Not in tf-explain 0.3.1. Weight-free activations (the lung
    gate of ``lung_cnn``) keep their derivative and are listed in ``params``.
    """
    grads, score, kept = _rule_gradients(model, image, class_index, "deconvnet")
    params = {
        "score": score,
        "activations": "deconvnet",
        "reduce": "abs-sum-channels",
        "own_derivative": kept,
    }
    return _reduce_channels(grads), params, None


def occlusion_map(
    model: keras.Model,
    image: np.ndarray,
    class_index: int,
    *,
    patch_size: int | None = None,
    fill_value: float | None = None,
    batch_size: int | None = None,
    visible: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, Any], None]:
    """Occlusion sensitivity through the fast path (same map as tf-explain's).

    ``visible`` (bool, H x W): for a model fed images blanked outside the lungs (the
    preprocessing's ``mask_outside``), the pixels it was shown; patches fill only those,
    with their mean by default, so a patch never paints the blank the model never sees.
    """
    from ml.explain.occlusion import default_fill_value, default_patch_size, fast_occlusion

    patch = int(patch_size) if patch_size is not None else default_patch_size(image.shape[:2])
    if visible is not None:
        visible = np.asarray(visible, dtype=bool)
    fill = "given" if fill_value is not None else "image-mean"
    if fill_value is not None:
        value = float(fill_value)
    elif visible is not None and visible.any():
        fill = "visible-mean"
        value = float(np.mean(np.asarray(image)[visible]))
    else:
        value = default_fill_value(image)
    raw = fast_occlusion(
        model, image, class_index, patch, value, batch_size=batch_size, visible=visible
    )
    params = {
        "patch_size": patch,
        "stride": patch,
        "fill": fill,
        "fill_value": value,
        "score": "1 - p(target)",
    }
    if visible is not None:
        params["fills"] = "visible pixels only"
    return raw, params, None


_IMPLEMENTATIONS: dict[str, Callable[..., tuple[np.ndarray, dict[str, Any], str | None]]] = {
    "gradcam": gradcam_map,
    "occlusion": occlusion_map,
    "smoothgrad": smoothgrad_map,
    "ig": ig_map,
    "guided": guided_map,
    "deconvnet": deconvnet_map,
}


def explain(
    model: keras.Model,
    image: np.ndarray,
    method: str,
    *,
    target_class: int | None = None,
    classes: Sequence[str] | None = None,
    visible: np.ndarray | None = None,
    **params: Any,
) -> Heatmap:
    """Explain one preprocessed image (H, W, C) float32 in [0, 1].

    ``target_class`` None explains the model's top class. ``params`` are the method's
    own keywords (see each ``*_map`` function); unknown ones raise TypeError. The map is
    resized to the input size and min-max scaled to [0, 1] (constant -> zeros).
    ``visible`` (bool, H x W, or None): the pixels the model is shown when its inputs are
    blanked outside the lungs; the methods that change pixels (occlusion) leave the rest.
    """
    if method not in METHODS:
        raise ValueError(f"Unknown explanation method {method!r}; choose from {METHODS}.")
    x = as_image(model, image)
    start = time.perf_counter()
    n_outputs = int(model.outputs[0].shape[-1])
    if target_class is None:
        target = int(np.argmax(forward(model, x[np.newaxis])[0]))
    else:
        target = int(target_class)
        if not 0 <= target < n_outputs:
            raise ValueError(f"target_class {target} is outside the model's {n_outputs} outputs.")
    if classes is not None and len(classes) != n_outputs:
        raise ValueError(f"{len(classes)} class names for a model with {n_outputs} outputs.")
    if visible is not None and method == "occlusion":
        params["visible"] = visible
    raw, used, layer = _IMPLEMENTATIONS[method](model, x, target, **params)
    values = normalise_map(resize_map(raw, x.shape[:2]))
    seconds = time.perf_counter() - start
    log.debug("%s for class %d in %.3f s", method, target, seconds)
    return Heatmap(
        method=method,
        values=values,
        target_class=target,
        target_label=str(classes[target]) if classes is not None else None,
        layer=layer,
        params=used,
        seconds=seconds,
    )
