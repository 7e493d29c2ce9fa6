"""Keep storage and database consistent when a write fails half-way."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from django.core.files.base import ContentFile
from django.core.files.storage import Storage, default_storage
from django.db import models

log = logging.getLogger(__name__)


class StoredFiles:
    """Names of files written to storage inside one unit of work."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.names: list[str] = []

    def add(self, name: str | None) -> None:
        """Record a written file by its storage name (a ``FieldFile.name``; None: no file)."""
        if name:
            self.names.append(name)

    def delete_all(self) -> None:
        for name in self.names:
            try:
                self.storage.delete(name)
            except OSError:  # pragma: no cover - logged, the original error matters more
                log.exception("could not delete %s after a failed write", name)


@contextmanager
def files_removed_on_error(storage: Storage | None = None) -> Iterator[StoredFiles]:
    """Delete every file recorded here if the block raises.

    Wrap it *around* ``transaction.atomic()``: storage is not transactional,
    so when the database rolls back, the files written in the same block
    must go too, or they become orphans that nothing references.
    """
    stored = StoredFiles(storage or default_storage)
    try:
        yield stored
    except BaseException:
        stored.delete_all()
        raise


def store_file(
    instance: models.Model, field: str, filename: str, content: bytes, stored: StoredFiles
) -> str:
    """Write ``content`` where ``instance``'s file field ``field`` keeps its files (its
    storage and ``upload_to``) and record it in ``stored``; the name it was stored under.

    The field itself is not set: the caller saves the name with the row, inside
    :func:`files_removed_on_error`, so a failed save deletes the file.
    """
    file = getattr(instance, field)
    name = file.storage.save(file.field.generate_filename(instance, filename), ContentFile(content))
    stored.add(name)
    return name
