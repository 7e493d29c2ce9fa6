"""The one per-process cache of loaded models (worker code only).

Loading a Keras model takes seconds; a worker loads each model once and keeps it. Every
model a worker serves (the classifier, the lung U-Net, the CT segmenter, the synthetic
X-ray generator: each an ``ml.serving.protocol.ServedModel``) is kept in one cache,
:func:`served`, keyed by what the model is (a registry version's artifact sha256 and
card, :func:`version_key`; a file's path and sha256 for a model that is not a registry
version) and its runtime, at most :data:`MAX_PER_KIND` of each kind (the production one
and the one it just replaced). A newly promoted model is picked up by the next task
without restarting the worker; a changed file (another sha256) or card is loaded again;
the same artifact and card registered again (another row, as after a database restore)
is the model already loaded.

Two runtimes (``ml.serving.runtime``): ``keras`` (explanations, training, the model
inspector: they need the Keras graph) and ``litert`` (the inference queue,
``CXR_INFERENCE_RUNTIME``): the ``.tflite`` file converted at registration and
recorded in ``version.card["lite"]``, run without importing TensorFlow.
This module imports ``ml`` lazily; only the Keras runtime imports TensorFlow.

Which model serves: the production version of its task (``ModelVersion.objects
.production``). The lung segmenter falls back to the file ``CXR_LUNG_MODEL`` names when
no lung segmentation version is registered (fresh clones, tests); a preprocessing-v2
classifier makes its input with the lung segmenter its card records (a registered
version with that sha256, else the bundled file), from the same cache.

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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from django.conf import settings

from apps.models.models import ModelVersion, Task

if TYPE_CHECKING:
    from ml.ct.segmenter import CTSegmenter
    from ml.generate.sampler import Generator
    from ml.lungs.segmenter import LungSegmenter
    from ml.serving.classifier import Classifier
    from ml.serving.protocol import ServedModel

log = logging.getLogger(__name__)

MAX_PER_KIND = 2  # of each kind of model: the production one and the one it just replaced
CacheKey = tuple[str, str, str]  # (what: a version's or a file's, its sha256, runtime)

M = TypeVar("M", bound="ServedModel")

_lock = threading.RLock()
_cache: OrderedDict[CacheKey, ServedModel] = OrderedDict()
_kinds: dict[CacheKey, str] = {}


def served(kind: str, key: CacheKey, load: Callable[[], M]) -> M:
    """The model cached under ``key``, else ``load()``-ed and kept: the one cache of every
    model this process serves. ``kind`` ("classifier", "lung segmenter", ...) bounds it:
    the least recently used model of a kind goes when a kind holds more than
    :data:`MAX_PER_KIND`, so a generator never pushes out the classifier."""
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return cast(M, _cache[key])
        model = load()
        _cache[key] = model
        _kinds[key] = kind
        same_kind = [k for k in _cache if _kinds[k] == kind]
        for old in same_kind[: max(0, len(same_kind) - MAX_PER_KIND)]:
            del _cache[old]
            del _kinds[old]
        return model


def version_key(version: ModelVersion) -> str:
    """What a registry version serves: its artifact's sha256 and a digest of its card
    (classes, preprocessing, postprocessing, the LiteRT file's hashes), leaving out where
    the registry stored its files (``card["lite"]["artifact"]``), which says nothing of
    the model. Versions with the same key give the same answers."""
    card = dict(version.card or {})
    if isinstance(card.get("lite"), dict):
        card["lite"] = {k: v for k, v in card["lite"].items() if k != "artifact"}
    digest = hashlib.sha256(json.dumps(card, sort_keys=True, default=str).encode()).hexdigest()
    return f"version:{version.sha256}:{digest}"


def clear_cache() -> None:
    """Forget every loaded model (tests)."""
    with _lock:
        _cache.clear()
        _kinds.clear()


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
    runtime = _runtime_of(version, runtime)
    with _lock:
        classifier = served(
            "classifier",
            (version_key(version), version.sha256, runtime),
            lambda: _load_classifier(version, runtime),
        )
        return classifier.with_offsets(offsets)


def _runtime_of(version: ModelVersion, runtime: str) -> str:
    """``runtime``, or Keras for a version asked for on LiteRT that has no LiteRT file."""
    if runtime not in ("keras", "litert"):
        raise ValueError(f"Unknown runtime {runtime!r}; expected 'keras' or 'litert'.")
    if runtime == "litert" and not (version.card or {}).get("lite"):
        log.warning(
            "model version %s has no LiteRT file (registered before conversion at "
            "registration? run `manage.py lite_convert`); serving it with Keras",
            version,
        )
        return "keras"
    return runtime


def _load_classifier(version: ModelVersion, runtime: str) -> Classifier:
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
    if classifier.needs_lungs:
        # Its input is made with the lung segmenter its card records, from this cache.
        record = classifier.segmenter_record
        classifier.segmenter_from(lambda: lung_segmenter_of(record, classifier.runtime))
    return classifier


# --- the lung segmenter --------------------------------------------------------------


def lung_segmenter(runtime: str | None = None) -> LungSegmenter | None:
    """The lung segmenter that computes the lung masks of predictions: the production
    lung segmentation version, else the file ``CXR_LUNG_MODEL`` names; None when that
    setting turns segmentation off. ``runtime`` defaults to ``CXR_INFERENCE_RUNTIME``."""
    if settings.CXR_LUNG_MODEL is None:
        return None
    runtime = runtime or settings.CXR_INFERENCE_RUNTIME
    version = ModelVersion.objects.production(task=Task.LUNG_SEGMENTATION)
    if version is not None:
        return lung_segmenter_for(version, runtime=runtime)
    return lung_segmenter_at(Path(settings.CXR_LUNG_MODEL), runtime=runtime)


def lung_segmenter_for(version: ModelVersion, *, runtime: str = "keras") -> LungSegmenter:
    """A registered lung segmentation version, loaded once per process and runtime (on
    LiteRT from the file converted at registration; Keras, with a warning, without one)."""
    runtime = _runtime_of(version, runtime)

    def load() -> LungSegmenter:
        from ml.lungs.segmenter import LungSegmenter

        log.info("loading lung segmenter version %s (%s)", version, runtime)
        lite_path = local_lite_path(version) if runtime == "litert" else None
        if lite_path is not None:
            return LungSegmenter.load_lite(
                Path(version.artifact.name or f"{version.sha256}.keras"),
                expected_sha256=version.sha256,
                num_threads=settings.CXR_INFERENCE_THREADS,
                card=version.card,
                lite_path=lite_path,
                record=version.card["lite"],
            )
        return LungSegmenter.load(
            local_artifact_path(version), expected_sha256=version.sha256, card=version.card
        )

    return served("lung segmenter", (version_key(version), version.sha256, runtime), load)


def lung_segmenter_at(
    path: Path, *, runtime: str = "keras", expected_sha256: str | None = None
) -> LungSegmenter:
    """The lung U-Net in the file ``path`` (with its card beside it), loaded once per
    process and runtime. The sha256 checked on load is ``expected_sha256``, else the
    card's, so a replaced or corrupted file is refused rather than used. Without a
    ``.tflite`` beside the model, LiteRT falls back to Keras with a warning."""
    from ml.models.artifacts import read_card
    from ml.serving.runtime import lite_path_for

    expected = expected_sha256 or read_card(path).get("sha256")
    if runtime == "litert" and not lite_path_for(path).is_file():
        log.warning(
            "no %s beside %s (`python -m ml lite convert`); segmenting with Keras",
            lite_path_for(path).name,
            path,
        )
        runtime = "keras"

    def load() -> LungSegmenter:
        from ml.lungs.segmenter import LungSegmenter

        log.info("loading the lung segmenter %s (%s)", path, runtime)
        if runtime == "litert":
            return LungSegmenter.load_lite(
                path, expected_sha256=expected, num_threads=settings.CXR_INFERENCE_THREADS
            )
        return LungSegmenter.load(path, expected_sha256=expected)

    return served("lung segmenter", (str(path), str(expected or ""), runtime), load)


def lung_segmenter_of(record: dict[str, Any], runtime: str) -> LungSegmenter:
    """The lung segmenter a preprocessing-v2 classifier's card records (``artifact``,
    ``sha256``): the registered lung segmentation version with that sha256, else the
    file of that name beside the bundled models."""
    from ml.lungs.segmenter import BUNDLED_LUNG_MODEL

    sha = str(record.get("sha256") or "")
    version = (
        ModelVersion.objects.filter(task=Task.LUNG_SEGMENTATION, sha256=sha).first()
        if sha
        else None
    )
    if version is not None:
        return lung_segmenter_for(version, runtime=runtime)
    path = BUNDLED_LUNG_MODEL.parent / str(record.get("artifact") or BUNDLED_LUNG_MODEL.name)
    return lung_segmenter_at(path, runtime=runtime, expected_sha256=sha or None)


# --- the CT segmenter and the generator -------------------------------------------------


def segmenter_for(version: ModelVersion) -> CTSegmenter:
    """The CT segmenter of a registered version, loaded once per process (like
    :func:`classifier_for`), with the card the registry keeps; its sha256 is checked on
    load: a replaced or corrupted file is refused rather than used."""

    def load() -> CTSegmenter:
        from ml.ct.segmenter import CTSegmenter

        log.info("loading CT segmenter version %s", version)
        return CTSegmenter.load(
            local_artifact_path(version), expected_sha256=version.sha256, card=version.card
        )

    # The card is part of the key: its postprocessing (thresholds) shapes the answers.
    return served("CT segmenter", (version_key(version), version.sha256, "keras"), load)


class _GeneratorFile(Protocol):
    sha256: str

    @property
    def path(self) -> Path: ...


def generator_for(version: _GeneratorFile) -> Generator:
    """A registered generator (``apps.generator``: a file by path and sha256), loaded once
    per process; a file whose sha256 is not the registered one is refused."""

    def load() -> Generator:
        from ml.generate.sampler import Generator

        log.info("loading generator %s", version)
        return Generator.load(version.path, expected_sha256=version.sha256)

    return served("generator", (str(version.path), version.sha256, "keras"), load)


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
