"""The CT U-Net (one model, three heads) and its masked losses.

Heads, all at the input resolution:

* ``lungs``: lung probability (sigmoid), trained on zenodo slices only;
* ``infection``: infection probability (sigmoid), trained on both sets (MedSeg's
  infection = ground-glass | consolidation);
* ``lesion_type``: softmax over background / ground-glass / consolidation, trained on
  MedSeg only.

Why one model: the three heads share what they need to see (lung parenchyma and what
fills it), one forward pass serves all three (latency budget 30 ms on 2 cores), and the
infection head learns from both sets, which neither set alone gives.

Masked losses: every target carries one more channel, ``labelled`` (1 where the pixel
has a label for this head, 0 where not). A zenodo slice has ``labelled = 0`` for the
lesion type, a MedSeg slice ``labelled = 0`` for the lungs, so a head's loss is computed
only over the samples (and pixels) that have its label; a batch without any such sample
contributes 0 for that head.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import layers

ARCHITECTURE = "ct_unet"
OUTPUTS = ("lungs", "infection", "lesion_type")
TYPE_CLASSES = ("background", "ggo", "consolidation")


def _conv(x: Any, filters: int, name: str, separable: bool, bias: bool) -> Any:
    if separable:
        return layers.SeparableConv2D(filters, 3, padding="same", use_bias=bias, name=name)(x)
    return layers.Conv2D(filters, 3, padding="same", use_bias=bias, name=name)(x)


def _block(x: Any, filters: int, name: str, separable: bool, folded: bool) -> Any:
    for i in (1, 2):
        x = _conv(x, filters, f"{name}_conv{i}", separable, bias=folded)
        if not folded:
            # momentum 0.9: a few thousand steps in all (see ml.lungs.model).
            x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn{i}")(x)
        x = layers.Activation("relu", name=f"{name}_relu{i}")(x)
    return x


def build_ct_unet(
    input_size: int = 256,
    width: int = 16,
    depth: int = 4,
    *,
    separable_from: int = 1,
    seed: int = 0,
    folded: bool = False,
) -> keras.Model:
    """A U-Net of ``depth`` levels widening ``width`` x 1, 2, 4, ... and three heads.

    ``separable_from``: levels from this one down (and the bottleneck) use depthwise
    separable convolutions (level 0, at full resolution, stays a plain convolution: its
    input has one channel). Separable convolutions cut the parameters and multiply-adds
    by ~8 at these widths, which is what lets a width-16 network run one 256 x 256 slice
    in well under 30 ms on two cores.

    ``folded``: the serving form, without batch normalisation layers and with a bias in
    each convolution, into which :func:`fold_batchnorm` folds the trained statistics.
    """
    if input_size % (2**depth):
        raise ValueError(f"input_size must be a multiple of {2**depth}, got {input_size}.")
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_size, input_size, 1), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = _block(x, width * 2**level, f"down{level}", level >= separable_from, folded)
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"pool{level}")(x)
    x = _block(x, width * 2**depth, "bottleneck", depth >= separable_from, folded)
    for level in reversed(range(depth)):
        x = layers.UpSampling2D(2, name=f"up{level}")(x)
        x = layers.Concatenate(name=f"skip{level}")([x, skips[level]])
        x = _block(x, width * 2**level, f"dec{level}", level >= separable_from, folded)
    lungs = layers.Conv2D(1, 1, activation="sigmoid", name="lungs")(x)
    infection = layers.Conv2D(1, 1, activation="sigmoid", name="infection")(x)
    lesion_type = layers.Conv2D(3, 1, activation="softmax", name="lesion_type")(x)
    return keras.Model(inputs, [lungs, infection, lesion_type], name=ARCHITECTURE)


def fold_batchnorm(trained: keras.Model, folded: keras.Model) -> keras.Model:
    """Copy ``trained`` into ``folded`` (same architecture built with ``folded=True``),
    folding each inference-mode batch normalisation into the convolution before it:
    y = gamma (conv(x) - mean) / sqrt(var + eps) + beta = conv'(x) + b', with the
    output channels of the kernel (the pointwise kernel of a separable convolution)
    scaled by gamma / sqrt(var + eps). One layer less per convolution at serving time
    (about a fifth of the call on two cores); outputs equal to float rounding."""
    for layer in folded.layers:
        if layer.name.endswith(("_conv1", "_conv2")):
            source = trained.get_layer(layer.name)
            bn = trained.get_layer(layer.name.replace("_conv", "_bn"))
            gamma, beta, mean, var = bn.get_weights()
            scale = gamma / (var + bn.epsilon) ** 0.5
            bias = beta - mean * scale
            weights = source.get_weights()
            if isinstance(source, layers.SeparableConv2D):
                depthwise, pointwise = weights
                layer.set_weights([depthwise, pointwise * scale, bias])
            else:
                layer.set_weights([weights[0] * scale, bias])
        elif layer.weights:
            layer.set_weights(trained.get_layer(layer.name).get_weights())
    return folded


def _masked_mean(values: Any, weights: Any) -> Any:
    """Sum of values x weights over their sum (0 when nothing is weighted)."""
    ops = keras.ops
    return ops.sum(values * weights) / ops.maximum(ops.sum(weights), 1.0)


def _soft_dice_per_sample(truth: Any, prob: Any, mask: Any) -> Any:
    """Soft Dice of each sample over its labelled pixels, shape (n,); smooth 1."""
    ops = keras.ops
    axes = (1, 2, 3)
    intersection = ops.sum(truth * prob * mask, axis=axes)
    total = ops.sum(truth * mask, axis=axes) + ops.sum(prob * mask, axis=axes)
    return (2.0 * intersection + 1.0) / (total + 1.0)


def masked_bce_dice(y_true: Any, y_pred: Any) -> Any:
    """Binary cross-entropy + soft Dice loss over the labelled pixels only.

    ``y_true``: (n, h, w, 2), channel 0 the target, channel 1 ``labelled`` (0/1).
    ``y_pred``: (n, h, w, 1) probabilities. Cross-entropy is the mean over labelled
    pixels; Dice the mean of 1 - soft Dice over samples with any labelled pixel.
    """
    ops = keras.ops
    y_true = ops.cast(y_true, y_pred.dtype)
    truth, mask = y_true[..., :1], y_true[..., 1:2]
    prob = ops.clip(y_pred, 1e-7, 1.0 - 1e-7)
    bce = -(truth * ops.log(prob) + (1.0 - truth) * ops.log(1.0 - prob))
    has_label = ops.cast(ops.sum(mask, axis=(1, 2, 3)) > 0, y_pred.dtype)
    dice = _soft_dice_per_sample(truth, prob, mask)
    return _masked_mean(bce, mask) + _masked_mean(1.0 - dice, has_label)


def masked_type_loss(y_true: Any, y_pred: Any) -> Any:
    """Categorical cross-entropy + soft Dice of ground-glass and consolidation, labelled
    pixels only. ``y_true``: (n, h, w, 4): one-hot background/ggo/consolidation, then
    ``labelled``; ``y_pred``: (n, h, w, 3) softmax."""
    ops = keras.ops
    y_true = ops.cast(y_true, y_pred.dtype)
    truth, mask = y_true[..., :3], y_true[..., 3:4]
    prob = ops.clip(y_pred, 1e-7, 1.0)
    cce = -ops.sum(truth * ops.log(prob), axis=-1, keepdims=True)
    has_label = ops.cast(ops.sum(mask, axis=(1, 2, 3)) > 0, y_pred.dtype)
    dice_loss = 0.0
    for channel in (1, 2):
        dice = _soft_dice_per_sample(
            truth[..., channel : channel + 1], prob[..., channel : channel + 1], mask
        )
        dice_loss = dice_loss + _masked_mean(1.0 - dice, has_label)
    return _masked_mean(cce, mask) + dice_loss / 2.0


LOSSES = {"lungs": masked_bce_dice, "infection": masked_bce_dice, "lesion_type": masked_type_loss}
