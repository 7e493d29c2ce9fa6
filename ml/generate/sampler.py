"""Loading a trained generator and drawing samples (the CLI and the platform's job).

A generator is a served model (``ml.serving.protocol.ServedModel``, Keras only): its
``prepare`` turns a (label, n, seed) request into class labels and latent noise, its
``run`` draws the images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ml.data.labels import CLASSES


class Generator:
    """A bundled generator: ``generator.keras`` plus ``generator.card.json``."""

    runtime = "keras"

    def __init__(self, model: Any, card: dict[str, Any], sha256: str) -> None:
        self.model = model
        self.card = card
        self.sha256 = sha256
        self.name = str(card.get("name", "generator"))
        self.classes: tuple[str, ...] = tuple(card["classes"])
        self.z_dim = int(card["z_dim"])
        self.size = int(card["image_size"])

    @classmethod
    def load(cls, path: str | Path, *, expected_sha256: str | None = None) -> Generator:
        """Load the file, refusing one whose sha256 is not the card's (or the expected)."""
        import keras

        from ml.models.artifacts import ArtifactIntegrityError, read_card, sha256_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No generator at {path} (make train-generator).")
        card = read_card(path)
        if card.get("kind") != "generator":
            raise ValueError(f"{path.name} is not a generator (its card's kind is not generator).")
        actual = sha256_file(path)
        for wanted in (expected_sha256, card.get("sha256")):
            if wanted and actual != wanted:
                raise ArtifactIntegrityError(
                    f"Generator {path.name} has sha256 {actual}, expected {wanted}."
                )
        model = keras.saving.load_model(path, compile=False)
        return cls(model, card, actual)

    def prepare(self, request: tuple[str, int, int], /) -> tuple[np.ndarray, np.ndarray]:
        """``ServedModel.prepare``: a (label, n, seed) request as the model's input, the
        class indices (n,) and the latent noise (n, z_dim); the same request always
        gives the same input."""
        label, n, seed = request
        if label not in self.classes:
            raise ValueError(f"Unknown class {label!r}; choose from {', '.join(self.classes)}.")
        if not 1 <= n <= 256:
            raise ValueError(f"n must be between 1 and 256, got {n}.")
        rng = np.random.default_rng([int(seed), CLASSES.index(label)])
        z = rng.standard_normal((n, self.z_dim)).astype(np.float32)
        labels = np.full(n, self.classes.index(label), dtype=np.int32)
        return labels, z

    def run(self, batch: tuple[np.ndarray, np.ndarray], /) -> np.ndarray:
        """``ServedModel.run``: the images (n, S, S, 1) of prepared (labels, noise)."""
        from ml.generate.training import sample_model

        labels, z = batch
        images: np.ndarray = sample_model(self.model, labels, z)
        return images

    def sample(self, label: str, n: int, *, seed: int = 0) -> np.ndarray:
        """``n`` images of class ``label``: float32 (n, S, S) in [0, 1], background 0.

        The same (label, n, seed) always gives the same images."""
        return self.run(self.prepare((label, n, seed)))[..., 0]

    def sample_classes(
        self, counts: dict[str, int], *, seed: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """(images (N, S, S, 1), class indices (N,)) for several classes at once."""
        xs, ys = [], []
        for label, n in counts.items():
            if n <= 0:
                continue
            done = 0
            while done < n:  # sample() draws at most 256 at a time
                k = min(256, n - done)
                xs.append(self.sample(label, k, seed=seed * 1000 + done // 256)[..., None])
                ys.append(np.full(k, CLASSES.index(label), np.int32))
                done += k
        return np.concatenate(xs), np.concatenate(ys)
