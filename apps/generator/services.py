"""Registering generator versions and asking them for sample grids."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.db import transaction

from apps.accounts.models import record
from apps.generator.models import MAX_SAMPLES, GeneratorVersion, SampleGrid
from cxrplatform.errors import Refused
from cxrplatform.jobs import enqueue_job
from ml.data.labels import CLASSES

BUNDLED_GENERATOR = Path(settings.BASE_DIR) / "ml" / "bundled" / "generator" / "generator.keras"


class GeneratorUnavailable(Refused):
    pass


def _stored_path(path: Path) -> str:
    path = path.resolve()
    base = Path(settings.BASE_DIR).resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def register_generator(
    path: Path = BUNDLED_GENERATOR, *, actor=None
) -> tuple[GeneratorVersion, bool]:
    """Register a generator file by its sha256 (idempotent): (version, created)."""
    from ml.models.artifacts import card_path, sha256_file

    path = Path(path)
    if not path.is_file():
        raise GeneratorUnavailable(f"No generator file at {path} (make train-generator).")
    card_file = card_path(path)
    if not card_file.is_file():
        raise GeneratorUnavailable(f"No card beside {path.name} ({card_file.name}).")
    card = json.loads(card_file.read_text())
    if card.get("kind") != "generator":
        raise GeneratorUnavailable(f"{path.name} is not a generator (its card's kind).")
    digest = sha256_file(path)
    if card.get("sha256") and card["sha256"] != digest:
        raise GeneratorUnavailable(f"{path.name} does not match its card's sha256.")
    with transaction.atomic():
        version, created = GeneratorVersion.objects.get_or_create(
            sha256=digest,
            defaults={
                "name": str(card.get("name", "generator")),
                "artifact": _stored_path(path),
                "card": card,
                "registered_by": actor if getattr(actor, "is_authenticated", False) else None,
            },
        )
        if created:
            record(
                actor=actor,
                action="generator.register",
                target=version,
                after={"sha256": digest, "artifact": version.artifact},
            )
    return version, created


def request_grid(
    *, version: GeneratorVersion, label: str, n: int, seed: int, requested_by
) -> SampleGrid:
    """Queue a grid of ``n`` synthetic ``label`` samples (audited)."""
    if label not in CLASSES:
        raise GeneratorUnavailable(f"Unknown class {label!r}.")
    if not 1 <= n <= MAX_SAMPLES:
        raise GeneratorUnavailable(f"Ask for 1 to {MAX_SAMPLES} samples.")
    if seed < 0:
        raise GeneratorUnavailable("The seed must be 0 or more.")
    with transaction.atomic():
        grid = SampleGrid.objects.create(
            version=version, label=label, n=n, seed=seed, requested_by=requested_by
        )
        record(
            actor=requested_by,
            action="generator.sample",
            target=grid,
            after={"version": version.pk, "label": label, "n": n, "seed": seed},
        )
        enqueue_job(grid)
    return grid
