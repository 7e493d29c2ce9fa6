"""The lung-pooling classifier (``lung_cnn``): only features of the visible lung fields reach
its classifier, and Grad-CAM explains those masked feature maps."""

import keras
import numpy as np
import pytest

from ml.explain.methods import explain, last_conv_layer
from ml.models.architectures import LUNG_FEATURES, build_compact_cnn, build_lung_cnn
from ml.models.shortcuts import gradcam_maps
from ml.models.training import TrainConfig


def _half_visible(size: int = 48, seed: int = 0) -> np.ndarray:
    """Left half textured (values in [0.2, 1]), right half exactly 0: a mask_outside input."""
    rng = np.random.default_rng(seed)
    x = np.zeros((1, size, size, 1), dtype=np.float32)
    x[0, :, : size // 2, 0] = rng.uniform(0.2, 1.0, (size, size // 2))
    return x


def test_lung_features_are_zero_where_less_than_half_of_a_cell_is_visible():
    model = build_lung_cnn(input_size=48, width=4)
    probe = keras.Model(
        model.inputs,
        [model.get_layer(LUNG_FEATURES).output, model.get_layer("relu4_2").output],
    )
    features, unmasked = (np.asarray(t) for t in probe(_half_visible(), training=False))
    assert features.shape == (1, 6, 6, 32)
    # Cells are 8 px: columns 0-2 cover the visible left half, 3-5 the blank right half.
    assert np.all(features[0, :, 3:] == 0)
    assert np.abs(unmasked[0, :, 3:]).max() > 0  # the convolutions did respond there
    np.testing.assert_allclose(features[0, :, :3], unmasked[0, :, :3], rtol=1e-6)


@pytest.mark.slow
def test_gradcam_explains_the_masked_features_and_stays_in_the_visible_half():
    model = build_lung_cnn(input_size=48, width=4)
    assert last_conv_layer(model) == LUNG_FEATURES
    assert last_conv_layer(build_compact_cnn(input_size=48, width=4)) == "last_conv"
    x = _half_visible()
    maps, _ = gradcam_maps(model, x)
    heatmap = explain(model, x[0], "gradcam").values
    for cam in (maps[0], heatmap):
        assert cam.max() > 0
        # Bilinear upsampling spreads a cell's value at most one cell (8 px) further.
        assert cam[:, 32:].max() == 0
        assert cam[:, :24].sum() / cam.sum() > 0.9


def test_lung_cnn_needs_masked_v2_inputs():
    with pytest.raises(ValueError, match="--preprocessing 2 --mask-outside"):
        TrainConfig(architecture="lung_cnn", preprocessing=2)
    with pytest.raises(ValueError, match="divisible by 8"):
        build_lung_cnn(input_size=50)
    config = TrainConfig(architecture="lung_cnn", preprocessing=2, mask_outside=True, width=4)
    assert config.model_kwargs() == {"width": 4}
