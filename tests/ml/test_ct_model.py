"""The CT U-Net's masked losses (ml.ct.model): a head without a label contributes nothing."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ml.ct.model import (  # noqa: E402
    build_ct_unet,
    fold_batchnorm,
    masked_bce_dice,
    masked_type_loss,
)


def _binary_target(target: np.ndarray, labelled: float) -> np.ndarray:
    return np.stack([target, np.full_like(target, labelled)], axis=-1).astype(np.float32)


def _loss(fn, y_true, y_pred) -> float:
    return float(keras.ops.convert_to_numpy(fn(keras.ops.array(y_true), keras.ops.array(y_pred))))


def test_masked_bce_dice_ignores_samples_without_the_label():
    rng = np.random.default_rng(0)
    target_a = (rng.random((8, 8)) > 0.6).astype(np.float32)
    pred_a = rng.uniform(0.05, 0.95, (1, 8, 8, 1)).astype(np.float32)
    alone = _loss(masked_bce_dice, _binary_target(target_a, 1.0)[None], pred_a)
    for seed in (1, 2):
        other = np.random.default_rng(seed)
        target_b = (other.random((8, 8)) > 0.3).astype(np.float32)
        pred_b = other.uniform(0.0, 1.0, (1, 8, 8, 1)).astype(np.float32)
        y_true = np.stack([_binary_target(target_a, 1.0), _binary_target(target_b, 0.0)])
        y_pred = np.concatenate([pred_a, pred_b])
        # Sample B is unlabelled: whatever it holds, the loss is sample A's alone.
        assert _loss(masked_bce_dice, y_true, y_pred) == pytest.approx(alone, rel=1e-5)
    # Labelled, B counts: the loss moves.
    y_true = np.stack([_binary_target(target_a, 1.0), _binary_target(target_b, 1.0)])
    assert _loss(masked_bce_dice, y_true, y_pred) != pytest.approx(alone, rel=1e-3)


def test_masked_bce_dice_is_zero_for_a_batch_without_any_label_and_small_when_right():
    target = np.zeros((2, 8, 8, 2), np.float32)
    pred = np.full((2, 8, 8, 1), 0.7, np.float32)
    assert _loss(masked_bce_dice, target, pred) == 0.0
    truth = np.zeros((8, 8), np.float32)
    truth[2:6, 2:6] = 1
    perfect = np.where(truth > 0, 0.999, 0.001)[None, ..., None].astype(np.float32)
    wrong = (1 - perfect).astype(np.float32)
    y = _binary_target(truth, 1.0)[None]
    assert _loss(masked_bce_dice, y, perfect) < 0.02
    assert _loss(masked_bce_dice, y, wrong) > 1.5


def test_masked_type_loss_ignores_slices_without_a_lesion_type():
    rng = np.random.default_rng(0)

    def sample(labelled: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        r = np.random.default_rng(seed)
        labels = r.integers(0, 3, (8, 8))
        one_hot = np.eye(3, dtype=np.float32)[labels]
        y = np.concatenate([one_hot, np.full((8, 8, 1), labelled, np.float32)], -1)
        logits = r.normal(size=(8, 8, 3))
        p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        return y, p.astype(np.float32)

    y_a, p_a = sample(1.0, 0)
    alone = _loss(masked_type_loss, y_a[None], p_a[None])
    y_b, p_b = sample(0.0, int(rng.integers(100)))
    both = _loss(masked_type_loss, np.stack([y_a, y_b]), np.stack([p_a, p_b]))
    assert both == pytest.approx(alone, rel=1e-5)
    # Labelled and predicted right, B halves the cross-entropy part: the loss drops.
    y_b[..., 3] = 1.0
    p_b = np.clip(y_b[..., :3], 1e-4, 1.0).astype(np.float32)
    assert _loss(masked_type_loss, np.stack([y_a, y_b]), np.stack([p_a, p_b])) < 0.8 * alone


@pytest.mark.slow
def test_the_unet_has_three_heads_at_the_input_resolution():
    model = build_ct_unet(64, width=4, depth=3)
    assert model.output_names == ["lungs", "infection", "lesion_type"]
    lungs, infection, lesion_type = model(np.zeros((2, 64, 64, 1), np.float32))
    assert lungs.shape == (2, 64, 64, 1)
    assert infection.shape == (2, 64, 64, 1)
    assert lesion_type.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(lesion_type).sum(-1), 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_ct_unet(60, width=4, depth=3)


@pytest.mark.slow
def test_folding_batch_normalisation_keeps_the_outputs():
    trained = build_ct_unet(64, width=4, depth=3, separable_from=1, seed=1)
    rng = np.random.default_rng(0)
    for layer in trained.layers:
        if isinstance(layer, keras.layers.BatchNormalization):  # statistics as if trained
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights(
                [
                    gamma * rng.uniform(0.5, 1.5, gamma.shape),
                    beta + rng.normal(0, 0.2, beta.shape),
                    mean + rng.normal(0, 0.2, mean.shape),
                    var * rng.uniform(0.5, 2.0, var.shape),
                ]
            )
    folded = fold_batchnorm(trained, build_ct_unet(64, width=4, depth=3, folded=True))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in folded.layers)
    x = rng.random((2, 64, 64, 1)).astype(np.float32)
    for a, b in zip(trained(x, training=False), folded(x, training=False), strict=True):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-4
        )
