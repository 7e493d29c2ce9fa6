"""Explanations for Keras image classifiers (SPEC section 5), usable without the platform.

    from ml.explain import explain, render_overlay
    heatmap = explain(model, image, "gradcam", classes=CLASSES)
    png = render_overlay(image, heatmap.values, title=heatmap.target_label)

Methods: Grad-CAM and occlusion through tf-explain, SmoothGrad and Integrated Gradients
on tf-explain's cores, guided backprop on ``tf.GradientTape``; faithfulness scores
(deletion / insertion) and the model-randomisation sanity check. See each module.
"""

from ml.explain.faithfulness import deletion_insertion, random_heatmap
from ml.explain.methods import METHODS, Heatmap, explain, last_conv_layer
from ml.explain.occlusion import fast_occlusion, tf_explain_occlusion
from ml.explain.render import heatmap_from_npy, heatmap_to_npy, render_overlay
from ml.explain.sanity import randomisation_check

__all__ = [
    "METHODS",
    "Heatmap",
    "deletion_insertion",
    "explain",
    "fast_occlusion",
    "heatmap_from_npy",
    "heatmap_to_npy",
    "last_conv_layer",
    "random_heatmap",
    "randomisation_check",
    "render_overlay",
    "tf_explain_occlusion",
]
