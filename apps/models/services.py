"""Model registry services: register an artifact, make it the production model."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from django.core.files import File
from django.db import transaction
from django.utils import timezone

from apps.models.models import ModelVersion
from cxrplatform.files import files_removed_on_error

log = logging.getLogger(__name__)


class RegistryError(Exception):
    pass


def get_production_version() -> ModelVersion | None:
    return ModelVersion.objects.filter(status=ModelVersion.Status.PRODUCTION).first()


@transaction.atomic
def promote(*, version: ModelVersion) -> ModelVersion:
    """Archive the current production version and promote ``version``, in one transaction.

    The partial unique constraint guarantees that a concurrent promotion
    cannot leave two production rows: one of the two transactions fails.
    """
    version = ModelVersion.objects.select_for_update().get(pk=version.pk)
    if version.status == ModelVersion.Status.PRODUCTION:
        return version
    if version.status not in {ModelVersion.Status.CANDIDATE, ModelVersion.Status.ARCHIVED}:
        raise RegistryError(f"A {version.status} model version cannot be promoted.")
    ModelVersion.objects.select_for_update().filter(status=ModelVersion.Status.PRODUCTION).update(
        status=ModelVersion.Status.ARCHIVED
    )
    version.status = ModelVersion.Status.PRODUCTION
    version.promoted_at = timezone.now()
    version.save(update_fields=["status", "promoted_at"])
    log.info("promoted model version %s", version)
    return version


def register_artifact(
    *, artifact_path: Path, name: str | None = None, make_production: bool = False
) -> ModelVersion:
    """Copy a ``.keras`` artifact and its model card into the registry (idempotent by sha256).

    The card's recorded sha256 must match the file: a card that describes a
    different artifact is refused rather than registered with wrong metadata.
    """
    # Lightweight: hashing lives in ml.artifacts, which does not import TensorFlow.
    from ml.artifacts import card_path, sha256_file

    artifact_path = Path(artifact_path)
    if not artifact_path.is_file():
        raise RegistryError(f"Model artifact {artifact_path} does not exist.")
    cpath = card_path(artifact_path)
    if not cpath.is_file():
        raise RegistryError(f"Model card {cpath} is missing; every artifact needs one.")
    card = json.loads(cpath.read_text())
    digest = sha256_file(artifact_path)
    if card.get("sha256") not in (None, digest):
        raise RegistryError(
            f"Model card {cpath.name} records sha256 {card['sha256']}, "
            f"but the artifact's is {digest}."
        )
    for key in ("classes", "preprocessing"):
        if key not in card:
            raise RegistryError(f"Model card {cpath.name} lacks {key!r}.")
    with files_removed_on_error() as stored, transaction.atomic():
        version = ModelVersion.objects.filter(sha256=digest).first()
        if version is None:
            version = ModelVersion(
                name=name or card.get("name") or artifact_path.stem,
                sha256=digest,
                card=card,
                status=ModelVersion.Status.CANDIDATE,
            )
            with artifact_path.open("rb") as fh:
                version.artifact.save(artifact_path.name, File(fh), save=False)
            stored.add(version.artifact.name)
            version.save()
        if make_production:
            version = promote(version=version)
    return version
