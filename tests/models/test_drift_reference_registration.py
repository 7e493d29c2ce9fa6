"""Registering a model stores its drift reference beside the stored artifact."""

from __future__ import annotations

import json
import shutil
from pathlib import Path, PurePosixPath

from django.conf import settings

from apps.models.services import register_artifact
from apps.sites import drift
from ml.models.artifacts import sha256_file


def _copy_model(folder: Path) -> Path:
    bundled = Path(settings.CXR_BUNDLED_MODEL)
    for path in bundled.parent.glob(f"{bundled.stem}.*"):
        if path.suffix in {".keras", ".json", ".tflite"} or path.name.endswith(".tflite.json"):
            shutil.copy(path, folder / path.name)
    return folder / bundled.name


SHIPPED = Path(__file__).resolve().parents[2] / "ml/bundled/cxr-lite0/drift-reference.json"


def _reference_for(artifact: Path, sha256: str | None = None) -> None:
    """A reference beside ``artifact``: the shipped one's values, made (it says) from
    the artifact, or from ``sha256``."""
    reference = json.loads(SHIPPED.read_text())
    reference["model_sha256"] = sha256 or sha256_file(artifact)
    (artifact.parent / "drift-reference.json").write_text(json.dumps(reference))


def test_the_reference_made_from_the_artifact_is_stored_with_it(db, tmp_path, monkeypatch):
    artifact = _copy_model(tmp_path)
    _reference_for(artifact)
    # Only the copy may answer: no fallback to the bundled model's folder.
    monkeypatch.setattr(settings, "CXR_BUNDLED_MODEL", None)
    monkeypatch.setattr(drift, "_references", {})

    version = register_artifact(artifact_path=artifact)

    assert version.artifact.name is not None
    stored = PurePosixPath(version.artifact.name)
    expected = str(stored.with_name(f"{stored.stem}.drift-reference.json"))
    assert version.artifact.storage.exists(expected)
    reference = drift.reference_for(version)
    assert reference is not None
    assert reference.source == expected
    assert reference.n == 293


def test_a_reference_of_another_model_is_not_stored(db, tmp_path, monkeypatch):
    artifact = _copy_model(tmp_path)
    _reference_for(artifact, sha256="0" * 64)
    monkeypatch.setattr(settings, "CXR_BUNDLED_MODEL", None)
    monkeypatch.setattr(drift, "_references", {})

    version = register_artifact(artifact_path=artifact)

    assert version.artifact.name is not None
    stored = PurePosixPath(version.artifact.name)
    assert not version.artifact.storage.exists(
        str(stored.with_name(f"{stored.stem}.drift-reference.json"))
    )
    assert drift.reference_for(version) is None
