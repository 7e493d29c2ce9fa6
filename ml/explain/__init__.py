"""Explanations for Keras image classifiers, usable without the platform.

    from ml.explain.api import explain, render_overlay
    heatmap = explain(model, image, "gradcam", classes=CLASSES)
    png = render_overlay(image, heatmap.values, title=heatmap.target_label)

Methods: Grad-CAM and occlusion through tf-explain, SmoothGrad and Integrated Gradients
on tf-explain's cores, guided backprop and deconvolution (deconvnet) on
``tf.GradientTape``; faithfulness scores
(deletion / insertion) and the model-randomisation sanity check. See each module.

Model inspector (:mod:`ml.explain.inspect`): ``conv_layers``, ``spatial_layers``,
``filter_grid`` (first-layer kernels), ``activation_maps`` / ``activation_grid`` and
``grid_png``. Training animation: ``GradCAMAnimation`` (a Keras callback writing a GIF of
Grad-CAM on fixed images after every epoch; :mod:`ml.explain.animation`). Approximate lung
fields for the shortcut check: :mod:`ml.lungs.heuristic`. Example:
``docs/inspecting-a-model.md``.

This package's ``__init__`` imports nothing, so ``import ml.explain.render`` in the web
process does not load TensorFlow; :mod:`ml.explain.api` gathers the public functions.
"""
