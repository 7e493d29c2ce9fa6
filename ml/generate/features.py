"""Image features from the project's own classifier, for the distribution metrics.

Frechet Inception Distance and KID are defined on ImageNet Inception-v3 features; those
weights cannot be downloaded here (the platform never downloads at run time) and an
ImageNet network has never seen a lung-framed, CLAHE-equalised, masked radiograph
either. The features used instead are the pooled lung features (``gap``, 8 x width =
128 values) of the project's classifier ``cxr-lungs`` - a network trained on exactly
this preprocessing, so its features are what the classifier "sees". They are smaller
and less general than Inception's, so absolute values are not comparable with
published FIDs: every figure is read against the real-vs-real baseline (train split
vs test split, same sizes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml.generate.data import CLASSIFIER, to_classifier_frame

FEATURE_LAYER = "gap"


class ClassifierFeatures:
    """``features(x)``: (n, s, s, 1) generator-size images -> (n, d) pooled features, via
    the classifier's frame (:func:`ml.generate.data.to_classifier_frame`)."""

    def __init__(self, path: Path = CLASSIFIER, layer: str = FEATURE_LAYER) -> None:
        import keras

        from ml.models.artifacts import read_card, sha256_file

        self.path = Path(path)
        self.card: dict[str, Any] = read_card(self.path)
        actual = sha256_file(self.path)
        if self.card.get("sha256") and actual != self.card["sha256"]:
            raise ValueError(f"{self.path.name}: sha256 {actual[:12]} is not the card's.")
        self.sha256 = actual
        model = keras.saving.load_model(self.path, compile=False)
        self.input_size = int(model.input_shape[1])
        self.layer = layer
        self.model = model
        self.extractor = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
        import tensorflow as tf

        self._call = tf.function(lambda t: self.extractor(t, training=False), reduce_retracing=True)

    def both(self, x: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """(features, class probabilities) of generator-size images."""
        import tensorflow as tf

        feats, probs = [], []
        for i in range(0, len(x), batch):
            big = to_classifier_frame(x[i : i + batch], self.input_size)
            f, p = self._call(tf.constant(big))
            feats.append(np.asarray(f, np.float64))
            probs.append(np.asarray(p, np.float64))
        if not feats:
            return np.zeros((0, 0)), np.zeros((0, 0))
        return np.concatenate(feats), np.concatenate(probs)

    def __call__(self, x: np.ndarray, batch: int = 64) -> np.ndarray:
        return self.both(x, batch)[0]

    def describe(self) -> dict[str, Any]:
        return {
            "classifier": self.path.name,
            "sha256": self.sha256,
            "layer": self.layer,
            "dimensions": int(self.extractor.outputs[0].shape[-1]),
            "input_size": self.input_size,
        }
