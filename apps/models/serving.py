"""Per-process cache of loaded classifiers (worker code only).

Loading a Keras model takes seconds; a worker loads each model version once
and keeps it. The cache is keyed by version and sha256, so a newly promoted
model is picked up by the next task without restarting the worker.
This module imports ``ml.serving.classifier`` (and so TensorFlow) lazily.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings

from apps.models.models import ModelVersion

if TYPE_CHECKING:
    from ml.serving.classifier import Classifier

log = logging.getLogger(__name__)

_MAX_MODELS = 2  # the production model and the one it just replaced
_lock = threading.Lock()
_cache: OrderedDict[tuple[int, str], Classifier] = OrderedDict()


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


def classifier_for(version: ModelVersion) -> Classifier:
    key = (version.pk, version.sha256)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        from ml.serving.classifier import Classifier

        log.info("loading model version %s", version)
        classifier = Classifier.load(
            local_artifact_path(version), expected_sha256=version.sha256, card=version.card
        )
        _cache[key] = classifier
        while len(_cache) > _MAX_MODELS:
            _cache.popitem(last=False)
        return classifier


def warm_up() -> None:
    """Load the production model now (worker start); failures are logged, not fatal."""
    from apps.cases.lungs import warm_up as warm_up_lungs

    warm_up_lungs()  # every prediction also segments the lungs (logs its own failures)
    try:
        version = ModelVersion.objects.production()
        if version is None:
            log.warning("no production model to warm up")
            return
        classifier_for(version)
    except Exception:
        log.exception("could not warm up the production model; tasks will load it on demand")
