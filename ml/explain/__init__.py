"""Explanations for Keras image classifiers (SPEC section 5), usable without the platform.

    from ml.explain import explain, render_overlay
    heatmap = explain(model, image, "gradcam", classes=CLASSES)
    png = render_overlay(image, heatmap.values, title=heatmap.target_label)

Methods: Grad-CAM and occlusion through tf-explain, SmoothGrad and Integrated Gradients
on tf-explain's cores, guided backprop on ``tf.GradientTape``; faithfulness scores
(deletion / insertion) and the model-randomisation sanity check. See each module.

Model inspector (:mod:`ml.explain.inspect`): ``conv_layers``, ``spatial_layers``,
``filter_grid`` (first-layer kernels), ``activation_maps`` / ``activation_grid`` and
``grid_png``. Training animation: ``GradCAMAnimation`` (a Keras callback writing a GIF of
Grad-CAM on fixed images after every epoch; :mod:`ml.train_animation`). Approximate lung
fields for the shortcut check: :mod:`ml.explain.lungs`. Example:
``docs/inspecting-a-model.md``.
"""

from ml.explain.faithfulness import deletion_insertion, random_heatmap
from ml.explain.inspect import (
    activation_grid,
    activation_maps,
    conv_layers,
    filter_grid,
    first_conv_layer,
    grid_png,
    spatial_layers,
)
from ml.explain.methods import METHODS, Heatmap, explain, last_conv_layer
from ml.explain.occlusion import fast_occlusion, tf_explain_occlusion
from ml.explain.render import heatmap_from_npy, heatmap_to_npy, render_overlay
from ml.explain.sanity import randomisation_check

__all__ = [
    "METHODS",
    "GradCAMAnimation",
    "Heatmap",
    "activation_grid",
    "activation_maps",
    "conv_layers",
    "deletion_insertion",
    "explain",
    "fast_occlusion",
    "filter_grid",
    "first_conv_layer",
    "grid_png",
    "heatmap_from_npy",
    "heatmap_to_npy",
    "last_conv_layer",
    "pick_images",
    "random_heatmap",
    "randomisation_check",
    "render_overlay",
    "spatial_layers",
    "tf_explain_occlusion",
]


def __getattr__(name: str):
    # ml.train_animation imports ml.explain; importing it lazily avoids the cycle.
    if name in ("GradCAMAnimation", "pick_images"):
        from ml import train_animation

        return getattr(train_animation, name)
    raise AttributeError(f"module 'ml.explain' has no attribute {name!r}")
