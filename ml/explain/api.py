"""The public ``ml.explain`` API in one import (loads TensorFlow).

from ml.explain.api import explain, render_overlay
heatmap = explain(model, image, "gradcam", classes=CLASSES)
png = render_overlay(image, heatmap.values, title=heatmap.target_label)
"""

from __future__ import annotations

from ml.explain.animation import GradCAMAnimation, pick_images
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
