"""The networks: a class-conditional DCGAN with a spectral-norm projection discriminator.

Why this GAN (the card repeats it):

* **DCGAN-style generator with conditional batch norm** (Miyato & Koyama 2018): a
  class embedding sets the scale and shift of every normalisation, so the class acts on
  every resolution, not only through the input vector; nearest upsampling + 3x3
  convolutions (no transposed convolutions: no checkerboard artefacts).
* **Spectral normalisation** in the discriminator (Miyato et al. 2018) with the hinge
  loss: the stable recipe that needs no gradient penalty (WGAN-GP costs a second
  backward pass per step, which two CPU cores cannot spare).
* **Projection discriminator**: the class enters as an inner product with the pooled
  features, the conditional form that keeps classes apart best at small data.
* **DiffAugment** (Zhao et al. 2020; translation and cutout, applied to real and fake
  alike, differentiably): with ~1,300 training images a discriminator memorises the
  training set within a few epochs and the generator collapses; augmenting both sides
  keeps it from doing so.
* **EMA of the generator's weights** (Karras et al. 2018; Yazici et al. 2019): the
  averaged generator is the one sampled and bundled.

Standard Keras layers only, so ``generator.keras`` loads without custom objects.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import layers

Z_DIM = 128


def _conditional_bn(x: Any, label: Any, channels: int, name: str) -> Any:
    """BatchNorm without its own scale/shift, then a per-class (1 + gamma) and beta."""
    x = layers.BatchNormalization(momentum=0.9, center=False, scale=False, name=f"{name}_bn")(x)
    gamma = layers.Embedding(3, channels, embeddings_initializer="zeros", name=f"{name}_gamma")(
        label
    )
    beta = layers.Embedding(3, channels, embeddings_initializer="zeros", name=f"{name}_beta")(label)
    gamma = layers.Reshape((1, 1, channels), name=f"{name}_gamma_hw")(gamma)
    gamma = layers.Rescaling(1.0, offset=1.0, name=f"{name}_one_plus_gamma")(gamma)
    beta = layers.Reshape((1, 1, channels), name=f"{name}_beta_hw")(beta)
    x = layers.Multiply(name=f"{name}_scale")([x, gamma])
    return layers.Add(name=f"{name}_shift")([x, beta])


def build_generator(
    size: int = 64, width: int = 32, n_classes: int = 3, z_dim: int = Z_DIM, seed: int = 0
) -> keras.Model:
    """z (z_dim,) + class index -> image (size, size, 1) in [-1, 1] (tanh).

    From 4x4 with ``8 * width`` channels, halving the channels at each doubling (at least
    ``width // 2``)."""
    if size % 16 or size < 16:
        raise ValueError(f"size must be a multiple of 16 (>= 16), got {size}")
    keras.utils.set_random_seed(seed)
    doublings = int(np.log2(size // 4))
    z = keras.Input((z_dim,), name="z")
    label = keras.Input((), dtype="int32", name="label")
    embed = layers.Embedding(n_classes, 32, name="class_embedding")(label)
    h = layers.Concatenate(name="z_and_class")([z, embed])
    channels = 8 * width
    h = layers.Dense(4 * 4 * channels, use_bias=False, name="project")(h)
    h = layers.Reshape((4, 4, channels), name="to_4x4")(h)
    h = _conditional_bn(h, label, channels, "block0")
    h = layers.ReLU(name="block0_relu")(h)
    for block in range(1, doublings + 1):
        channels = max(width // 2, channels // 2)
        h = layers.UpSampling2D(2, interpolation="nearest", name=f"block{block}_up")(h)
        h = layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"block{block}_conv")(h)
        h = _conditional_bn(h, label, channels, f"block{block}")
        h = layers.ReLU(name=f"block{block}_relu")(h)
    out = layers.Conv2D(1, 3, padding="same", activation="tanh", name="image")(h)
    return keras.Model([z, label], out, name="generator")


def build_discriminator(
    size: int = 64, width: int = 32, n_classes: int = 3, seed: int = 0
) -> keras.Model:
    """image + class index -> one unbounded score (hinge loss), projection conditioning."""
    keras.utils.set_random_seed(seed + 1)
    image = keras.Input((size, size, 1), name="image")
    label = keras.Input((), dtype="int32", name="label")
    h = image
    channels = width
    block = 0
    while h.shape[1] > 4:
        block += 1
        conv = layers.Conv2D(channels, 4, strides=2, padding="same", name=f"d{block}_conv")
        h = layers.SpectralNormalization(conv, name=f"d{block}_sn")(h)
        h = layers.LeakyReLU(0.2, name=f"d{block}_lrelu")(h)
        channels = min(channels * 2, 8 * width)
    channels = h.shape[-1]
    conv = layers.Conv2D(channels, 3, padding="same", name="d_last_conv")
    h = layers.SpectralNormalization(conv, name="d_last_sn")(h)
    h = layers.LeakyReLU(0.2, name="d_last_lrelu")(h)
    # Global *sum* pooling (SNGAN): with every layer 1-Lipschitz, averaging would shrink
    # the score 16-fold and keep it far inside the hinge's margin of 1 (a powerless
    # discriminator, loss stuck near 2).
    cells = float(h.shape[1] * h.shape[2])
    h = layers.GlobalAveragePooling2D(name="pool")(h)
    h = layers.Rescaling(cells, name="sum_pool")(h)
    score = layers.SpectralNormalization(layers.Dense(1, name="d_dense"), name="d_dense_sn")(h)
    embed = layers.Embedding(n_classes, channels, name="projection")(label)
    projection = layers.Dot(axes=1, name="project")([h, embed])
    out = layers.Add(name="score")([score, projection])
    return keras.Model([image, label], out, name="discriminator")


def diff_augment(x: tf.Tensor, seed: tf.Tensor, policy: str = "translation,cutout") -> tf.Tensor:
    """DiffAugment on a batch (N, S, S, C) in [-1, 1]: the same operations must be applied
    to real and generated batches; differentiable in ``x``. Stateless (``seed``: (2,) int)."""
    if not policy:
        return x
    seeds = tf.random.experimental.stateless_split(seed, 4)
    n = tf.shape(x)[0]
    size = x.shape[1]
    if "translation" in policy:
        # Shift each image by up to 1/8 of its side, filling with the background (-1).
        shift = size // 8
        padded = tf.pad(x + 1.0, [[0, 0], [shift, shift], [shift, shift], [0, 0]]) - 1.0
        offsets = tf.random.stateless_uniform((n, 2), seeds[0], 0, 2 * shift + 1, dtype=tf.int32)
        full = tf.cast(size + 2 * shift - 1, tf.float32)
        top = tf.cast(offsets[:, 0], tf.float32) / full
        left = tf.cast(offsets[:, 1], tf.float32) / full
        span = tf.cast(size - 1, tf.float32) / full
        boxes = tf.stack([top, left, top + span, left + span], axis=1)
        x = tf.image.crop_and_resize(padded, boxes, tf.range(n), (size, size))
    if "cutout" in policy:
        # One square of half the side per image, set to the background.
        half = size // 2
        centre = tf.random.stateless_uniform((n, 2), seeds[1], 0, size, dtype=tf.int32)
        grid = tf.range(size)
        rows = tf.abs(grid[tf.newaxis, :] - centre[:, :1]) < half // 2
        cols = tf.abs(grid[tf.newaxis, :] - centre[:, 1:]) < half // 2
        hole = tf.logical_and(rows[:, :, tf.newaxis], cols[:, tf.newaxis, :])
        keep = 1.0 - tf.cast(hole, x.dtype)[..., tf.newaxis]
        x = (x + 1.0) * keep - 1.0
    return x


def to_unit(images: np.ndarray | tf.Tensor) -> np.ndarray:
    """Generator output in [-1, 1] -> [0, 1], background snapped to exact 0."""
    from ml.generate.data import snap

    unit = np.clip((np.asarray(images, dtype=np.float32) + 1.0) / 2.0, 0.0, 1.0)
    return snap(unit)
