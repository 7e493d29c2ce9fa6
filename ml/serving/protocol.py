"""The contract of a served model (no Django, no TensorFlow).

Every model the platform's workers load satisfies :class:`ServedModel`: the chest X-ray
classifier (``ml.serving.classifier.Classifier``), the lung U-Net
(``ml.lungs.segmenter.LungSegmenter``), the CT segmenter
(``ml.ct.segmenter.CTSegmenter``) and the synthetic X-ray generator
(``ml.generate.sampler.Generator``). The worker side (``apps.models.serving``) keeps
them in one per-process cache keyed by (version id or path, ``sha256``, ``runtime``),
whatever their kind.

``prepare`` is the one place a model's input is made from what it is asked about, so
every runner that feeds a model (the prediction, its explanation, the model inspector)
feeds it the same thing: for the classifier the lung-masked crop of a
preprocessing-v2 model, for the segmenters their letterboxed square, for the generator
the class labels and latent noise of a (label, n, seed) request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, Self, runtime_checkable

Runtime = Literal["keras", "litert"]
RUNTIMES: tuple[Runtime, ...] = ("keras", "litert")


@runtime_checkable
class ServedModel(Protocol):
    """A loaded model as a worker serves it."""

    # The sha256 of the Keras artifact it was loaded from (a LiteRT model: the Keras
    # file it was converted from): what the registry and the results name it by.
    sha256: str
    # "keras" or "litert" (``ml.serving.runtime``): the same artifact on two runtimes
    # is two loaded models.
    runtime: str

    @classmethod
    def load(cls, path: str | Path, *, expected_sha256: str | None = None) -> Self:
        """Load the ``.keras`` file ``path`` and its card, refusing a file whose sha256 is
        not ``expected_sha256``."""
        ...

    def prepare(self, request: Any, /) -> Any:
        """One request (an image; the generator's (label, n, seed)) as the model's input,
        with what is needed to read the answer back in the request's own frame."""
        ...

    def run(self, batch: Any, /) -> Any:
        """The model's raw output for a batch of prepared inputs."""
        ...
