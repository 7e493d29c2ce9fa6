"""Model artifacts: a ``.keras`` file plus a model card JSON beside it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

CARD_SUFFIX = ".card.json"


class ArtifactIntegrityError(RuntimeError):
    """The artifact on disk is not the one the registry recorded."""


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def card_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name.removesuffix(".keras") + CARD_SUFFIX)


def read_card(artifact: str | Path) -> dict[str, Any]:
    path = card_path(artifact)
    if not path.exists():
        raise FileNotFoundError(f"Model card {path} not found beside artifact {artifact}.")
    card: dict[str, Any] = json.loads(path.read_text())
    return card


def write_card(artifact: str | Path, card: dict[str, Any]) -> Path:
    path = card_path(artifact)
    path.write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return path
