"""Per-process cache of loaded classifiers (worker code only).

Loading a Keras model takes seconds; a worker loads each model version once
and keeps it. The cache is keyed by version, sha256 and runtime, so a newly
promoted model is picked up by the next task without restarting the worker.

Two runtimes (``ml.serving.runtime``): ``keras`` (explanations, training, the model
inspector: they need the Keras graph) and ``litert`` (the inference queue,
``CXR_INFERENCE_RUNTIME``): the ``.tflite`` file converted at registration and
recorded in ``version.card["lite"]``, run without importing TensorFlow.
This module imports ``ml.serving.classifier`` lazily; only the Keras runtime imports
TensorFlow.

A version serves at its active operating point: the artifact carries the card's, and a
point a model admin chose instead (``version.operating_point``) is applied after the
model (:func:`serving_offsets`). The loaded model stays cached; the offsets are read
from the version row each time, so the next task after a change uses the new point.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from apps.models.models import ModelVersion

if TYPE_CHECKING:
    from ml.ct.segmenter import CTSegmenter
    from ml.serving.classifier import Classifier

log = logging.getLogger(__name__)

_MAX_MODELS = 2  # the production model and the one it just replaced
_lock = threading.Lock()
_cache: OrderedDict[tuple[int, str, str], Classifier] = OrderedDict()
_ct_cache: OrderedDict[tuple[int, str], CTSegmenter] = OrderedDict()


def local_file_path(field_file, directory: Path, name: str | None = None) -> Path:
    """A local path for a stored file: its own on local disk, else a download."""
    try:
        return Path(field_file.path)
    except NotImplementedError:
        target = directory / (name or Path(field_file.name).name)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(target.suffix + ".part")
            with field_file.open("rb") as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
        return target


def local_artifact_path(version: ModelVersion) -> Path:
    """A local file path for the artifact (cached by sha256 when storage is remote)."""
    return local_file_path(
        version.artifact, Path(settings.VAR_DIR) / "model-cache", f"{version.sha256}.keras"
    )


def local_lite_path(version: ModelVersion) -> Path | None:
    """A local path for the version's converted ``.tflite`` file, None when it has none."""
    record = (version.card or {}).get("lite")
    if not record:
        return None
    storage = version.artifact.storage
    name = str(record["artifact"])
    try:
        return Path(storage.path(name))
    except NotImplementedError:
        target = Path(settings.VAR_DIR) / "model-cache" / f"{record['sha256']}.tflite"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(f".{os.getpid()}.part")
            with storage.open(name, "rb") as src, partial.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            partial.replace(target)
        return target


def serving_offsets(version: ModelVersion) -> dict[str, float] | None:
    """The offsets to add after the model so that ``version`` serves at its chosen
    operating point: the change from the card's point (which the artifact's softmax bias
    carries) to the chosen one; None when it serves at the card's point."""
    if not version.operating_point:
        return None
    from ml.models.operating_point import OperatingPoint, offset_change

    card = OperatingPoint.from_dict(version.card_point) if version.card_point else None
    return offset_change(card, OperatingPoint.from_dict(version.operating_point)).offsets


def classifier_for(version: ModelVersion, *, runtime: str = "keras") -> Classifier:
    """The version's classifier, loaded once per process and runtime, at the version's
    active operating point (:func:`serving_offsets`).

    ``runtime="litert"`` serves the converted file recorded in ``version.card["lite"]``
    (its sha256 and the Keras artifact's it was made from are checked on load); a
    version without one is served by Keras, with a warning.
    """
    offsets = serving_offsets(version)
    with _lock:
        return _loaded(version, runtime).with_offsets(offsets)


def _loaded(version: ModelVersion, runtime: str) -> Classifier:
    """The version's model as its artifact answers (the cache's entry). Call under _lock."""
    if runtime not in ("keras", "litert"):
        raise ValueError(f"Unknown runtime {runtime!r}; expected 'keras' or 'litert'.")
    if runtime == "litert" and not (version.card or {}).get("lite"):
        log.warning(
            "model version %s has no LiteRT file (registered before conversion at "
            "registration? run `manage.py lite_convert`); serving it with Keras",
            version,
        )
        runtime = "keras"
    key = (version.pk, version.sha256, runtime)
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    from ml.serving.classifier import Classifier

    log.info("loading model version %s (%s)", version, runtime)
    lite_path = local_lite_path(version) if runtime == "litert" else None
    if lite_path is not None:
        classifier = Classifier.load_lite(
            lite_path,
            card=version.card,
            source_sha256=version.sha256,
            record=version.card["lite"],
            num_threads=settings.CXR_INFERENCE_THREADS,
        )
    else:
        classifier = Classifier.load(
            local_artifact_path(version), expected_sha256=version.sha256, card=version.card
        )
    _cache[key] = classifier
    while len(_cache) > _MAX_MODELS:
        _cache.popitem(last=False)
    return classifier


def segmenter_for(version: ModelVersion) -> CTSegmenter:
    """The CT segmenter of a registered version, loaded once per process (like
    :func:`classifier_for`).

    ``CTSegmenter.load`` reads the card beside the ``.keras`` file; the registry keeps
    the card in the database, so the artifact is placed with its card in a cache folder
    of its own (``var/model-cache/ct-<sha256>/``) and its sha256 checked there: a
    replaced or corrupted file is refused rather than used.
    """
    # The card is part of the key: its postprocessing (thresholds) shapes the answers.
    card_digest = hashlib.sha256(json.dumps(version.card, sort_keys=True).encode()).hexdigest()
    key = (version.pk, f"{version.sha256}:{card_digest}")
    with _lock:
        if key in _ct_cache:
            _ct_cache.move_to_end(key)
            return _ct_cache[key]
        from ml.ct.segmenter import CTSegmenter
        from ml.models.artifacts import card_path

        folder = Path(settings.VAR_DIR) / "model-cache" / f"ct-{version.sha256}"
        path = folder / "ct-seg.keras"
        folder.mkdir(parents=True, exist_ok=True)
        if not path.exists():  # partial files of its own: other workers may copy too
            partial = path.with_suffix(f".{os.getpid()}.part")
            shutil.copyfile(local_artifact_path(version), partial)
            partial.replace(path)
        card = card_path(path).with_suffix(f".{os.getpid()}.part")
        card.write_text(json.dumps(version.card, indent=2))
        card.replace(card_path(path))
        log.info("loading CT segmenter version %s", version)
        try:
            segmenter = CTSegmenter.load(path, expected_sha256=version.sha256)
        except Exception:
            path.unlink(missing_ok=True)  # a damaged copy is made again next time
            raise
        _ct_cache[key] = segmenter
        while len(_ct_cache) > _MAX_MODELS:
            _ct_cache.popitem(last=False)
        return segmenter


def consumed_queues() -> set[str]:
    """The queues this worker process consumes (``-Q``; every queue when none was named).

    The worker's main process selects them before it forks the pool processes, which
    inherit the selection."""
    from cxrplatform.celery import QUEUES, app

    selected = app.amqp.queues.consume_from
    return set(selected) & set(QUEUES) if selected else set(QUEUES)


def warm_up() -> None:
    """Load the production models of the queues this worker consumes (worker start):
    the classifier and lung segmenter on the inference runtime for ``inference``, the CT
    segmenter for ``segmentation``. A lean inference worker thus never imports
    TensorFlow. Failures are logged, not fatal."""
    from apps.cases.lungs import warm_up as warm_up_lungs
    from apps.models.models import Task

    queues = consumed_queues()
    if "inference" in queues:
        warm_up_lungs()  # every prediction also segments the lungs (logs its own failures)
        try:
            version = ModelVersion.objects.production()
            if version is None:
                log.warning("no production model to warm up")
            else:
                classifier_for(version, runtime=settings.CXR_INFERENCE_RUNTIME)
        except Exception:
            log.exception("could not warm up the production model; tasks will load it on demand")
    if "segmentation" in queues:
        try:
            ct_version = ModelVersion.objects.production(task=Task.CT_SEGMENTATION)
            if ct_version is not None:
                segmenter_for(ct_version)
        except Exception:
            log.exception("could not warm up the CT segmenter; tasks will load it on demand")
