"""Serving: load a model once, classify one image with a direct call.

``model.predict`` builds a data pipeline per call (~240 ms on this CPU);
calling a ``tf.function`` with a fixed input signature costs ~12 ms for the
compact CNN. Workers keep one ``Classifier`` per process.

A classifier runs on Keras (:meth:`Classifier.load`; explanations need its
``model``) or on LiteRT (:meth:`Classifier.load_lite`; ``model`` is None and
TensorFlow is never imported, for the inference queue). See ``ml.serving.runtime``.

A model admin may move a registered model to another operating point than the one its
card chose (and its softmax bias carries): :meth:`Classifier.with_offsets` gives the
same loaded model with the difference applied to its probabilities after each call
(:func:`shift_probabilities`), so no second copy of the weights is loaded.

A classifier is a served model (``ml.serving.protocol.ServedModel``): :meth:`Classifier.prepare`
is the one way its input is made (the lung-masked crop of a preprocessing-v2 model), and
every runner that feeds it (prediction, explanation, inspector) goes through it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ml.data.preprocess import Prepared, PreprocessSpec, prepare, to_unit_gray
from ml.models.artifacts import ArtifactIntegrityError, read_card, sha256_file
from ml.serving.runtime import KerasRunner, LiteRunner, load_lite_runner


def shift_probabilities(probs: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``softmax(log p + offsets)`` row by row: the probabilities a model whose softmax
    bias held ``offsets`` more would give (a change of class priors; the argmax moves as
    ``argmax(log p + offsets)``). Computed in float64, returned in ``probs``' dtype.

    A probability of exactly 0 (float32 underflow) stays ~0 for any offset within
    a few hundred nats.
    """
    p = np.asarray(probs)
    shift = np.asarray(offsets, dtype=np.float64)
    if p.ndim != 2 or shift.shape != (p.shape[-1],):
        raise ValueError(f"offsets of shape {shift.shape} for probabilities of shape {p.shape}")
    logits = np.log(np.clip(p.astype(np.float64), np.finfo(np.float64).tiny, None)) + shift
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    out /= out.sum(axis=1, keepdims=True)
    return out.astype(p.dtype if p.dtype.kind == "f" else np.float64)


@dataclass(frozen=True)
class Prediction:
    label: str
    probabilities: dict[str, float]
    preprocess_ms: float
    inference_ms: float
    segment_ms: float = 0.0
    lungs: Any = None  # ml.lungs.segmenter.LungResult for preprocessing v2 models
    prepared: Prepared | None = None


class Classifier:
    def __init__(
        self,
        model: Any,
        card: dict[str, Any],
        *,
        runner: LiteRunner | None = None,
        sha256: str | None = None,
    ) -> None:
        """``model``: a Keras model, or None with a LiteRT ``runner``; ``sha256``: the
        Keras artifact's (default: what the card records)."""
        self.model = model
        self.card = card
        self.sha256 = sha256 or str(card.get("sha256") or "")
        self.classes: tuple[str, ...] = tuple(card["classes"])
        self.spec = PreprocessSpec.from_dict(card["preprocessing"])
        self._segmenter: Any = None
        self._segmenter_source: Callable[[], Any] | None = None
        self.runtime = "keras" if runner is None else "litert"
        self._run: KerasRunner | LiteRunner = runner if runner is not None else KerasRunner(model)
        outputs = self._run.output_shape[-1]
        if outputs != len(self.classes):
            raise ValueError(
                f"Model has {outputs} outputs but its card lists {len(self.classes)} classes."
            )
        # Added to the log-probabilities after the model (empty: none); see with_offsets.
        self.offsets: dict[str, float] = {}
        self._offset_vector: np.ndarray | None = None
        self._base: Classifier = self
        self._views: dict[tuple[float, ...], Classifier] = {}

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        expected_sha256: str | None = None,
        card: dict[str, Any] | None = None,
    ) -> Classifier:
        """Load a ``.keras`` artifact, refusing one whose sha256 is not the recorded one."""
        import keras

        path = Path(path)
        actual = sha256_file(path)
        if expected_sha256 is not None and actual != expected_sha256:
            raise ArtifactIntegrityError(
                f"Artifact {path.name} has sha256 {actual}, the registry expects {expected_sha256}."
            )
        model = keras.saving.load_model(path, compile=False)
        return cls(model, card if card is not None else read_card(path), sha256=actual)

    @classmethod
    def load_lite(
        cls,
        lite_path: str | Path,
        *,
        card: dict[str, Any],
        source_sha256: str | None = None,
        num_threads: int | None = None,
        record: dict[str, Any] | None = None,
    ) -> Classifier:
        """A classifier on the LiteRT interpreter: ``lite_path`` converted by
        ``ml.serving.runtime.convert_to_lite`` from the Keras file ``source_sha256``
        (``record``: the conversion record, else the sidecar beside ``lite_path``).
        The lung segmenter of a v2 model runs on LiteRT too."""
        runner = load_lite_runner(
            lite_path, source_sha256=source_sha256, num_threads=num_threads, record=record
        )
        return cls(None, card, runner=runner, sha256=source_sha256)

    def with_offsets(self, offsets: Mapping[str, float] | None) -> Classifier:
        """This loaded model with ``offsets`` (class -> nats) added to its log-probabilities
        after every call (:func:`shift_probabilities`), instead of any it had.

        The view shares the model, runner and lung segmenter; it is made once per set of
        offsets and kept, so a worker switching back and forth loads nothing again. All
        zeros (or None) gives the model as loaded. ``model`` (what explanations run) is
        the unshifted Keras model: callers that pick a target class from it should take
        the shifted argmax of :meth:`predict_array` instead.
        """
        given = dict(offsets or {})
        unknown = set(given) - set(self.classes)
        if unknown:
            raise ValueError(f"offsets for unknown classes {sorted(unknown)}; {self.classes}")
        key = tuple(float(given.get(c, 0.0)) for c in self.classes)
        if not all(math.isfinite(v) for v in key):
            raise ValueError(f"offsets must be finite numbers, got {given}")
        base = self._base
        if not any(key):
            return base
        view = base._views.get(key)
        if view is None:
            view = copy.copy(base)
            view.offsets = dict(zip(self.classes, key, strict=True))
            view._offset_vector = np.asarray(key, dtype=np.float64)
            base._views[key] = view
        return view

    def predict_array(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities for a preprocessed batch, shape (n, n_classes), at this
        classifier's offsets (:meth:`with_offsets`)."""
        probs = self._run(batch)
        if self._offset_vector is not None:
            probs = shift_probabilities(probs, self._offset_vector)
        return probs

    def run(self, batch: np.ndarray, /) -> np.ndarray:
        """``ServedModel.run``: :meth:`predict_array`."""
        return self.predict_array(batch)

    @property
    def needs_lungs(self) -> bool:
        return self.spec.version >= 2

    @property
    def segmenter_record(self) -> dict[str, Any]:
        """The lung segmenter a v2 model's input is made with, as its card records it
        (``artifact``, ``sha256``, ``version``); empty for a v1 model."""
        return dict(self.card["preprocessing"].get("segmenter") or {})

    def uses_lungs_of(self, version: str) -> bool:
        """Whether lungs segmented by ``version`` ("lung-unet@<sha256 prefix>") are the
        ones this model's input is made with (its card's segmenter)."""
        sha = str(self.segmenter_record.get("sha256") or "")
        return bool(sha) and version.rpartition("@")[2] == sha[:12]

    def segmenter_from(self, source: Callable[[], Any]) -> None:
        """Take the lung segmenter from ``source`` (a worker's model cache, which checks
        it is the one the card records) instead of loading one of its own."""
        self._base._segmenter_source = source

    @property
    def segmenter(self) -> Any:
        """The lung segmenter of a v2 model: from :meth:`segmenter_from`'s source, else
        loaded once from beside the bundled models, checked against the card's hash;
        shared with the views of :meth:`with_offsets`."""
        if self._base is not self:
            return self._base.segmenter
        if self._segmenter_source is not None:
            return self._segmenter_source()
        if self._segmenter is None:
            from ml.lungs.segmenter import BUNDLED_LUNG_MODEL, LungSegmenter

            recorded = self.segmenter_record
            path = BUNDLED_LUNG_MODEL.parent / recorded.get("artifact", BUNDLED_LUNG_MODEL.name)
            if self.runtime == "litert":
                self._segmenter = LungSegmenter.load_lite(
                    path, expected_sha256=recorded.get("sha256")
                )
            else:
                self._segmenter = LungSegmenter.load(path, expected_sha256=recorded.get("sha256"))
        return self._segmenter

    def prepare(self, image: Image.Image, lungs: Any = None) -> tuple[Prepared, Any, float]:
        """The model input for one image, segmenting the lungs first for a v2 model: the
        one way every runner makes it.

        ``lungs`` (a ``LungResult``, or a stored mask with ``mask``, ``found`` and
        ``version``) that the caller already has saves a second segmentation; a v2 model
        takes them only when they are its own segmenter's (:meth:`uses_lungs_of`), else
        segments the image itself. A v1 model's input does not depend on them: their mask
        is only carried into its frame (``Prepared.lung_mask``).
        Returns the prepared input, the lung result (None for v1 without ``lungs``) and
        the segmentation ms.
        """
        gray = to_unit_gray(image)
        segment_ms = 0.0
        if self.needs_lungs and lungs is not None and not self.uses_lungs_of(lungs.version):
            lungs = None
        if self.needs_lungs and lungs is None:
            start = time.perf_counter()
            lungs = self.segmenter.segment_gray(gray)
            segment_ms = (time.perf_counter() - start) * 1000
        mask = lungs.mask if lungs is not None and lungs.found else None
        return prepare(gray, self.spec, mask), lungs, segment_ms

    def predict(self, image: Image.Image, *, lungs: Any = None) -> Prediction:
        start = time.perf_counter()
        prepared, lungs, segment_ms = self.prepare(image, lungs)
        middle = time.perf_counter()
        probs = self.predict_array(prepared.x[np.newaxis])[0].astype(np.float64)
        end = time.perf_counter()
        probabilities = {name: float(p) for name, p in zip(self.classes, probs, strict=True)}
        label = self.classes[int(np.argmax(probs))]
        return Prediction(
            label=label,
            probabilities=probabilities,
            preprocess_ms=(middle - start) * 1000 - segment_ms,
            inference_ms=(end - middle) * 1000,
            segment_ms=segment_ms,
            lungs=lungs,
            prepared=prepared,
        )
