"""Backups and restores: the database dump and every stored file, in one folder.

``manage.py backup DIR`` (``make backup``) writes::

    DIR/db.dump          PostgreSQL: pg_dump --format=custom (SQLite: DIR/db.sqlite3)
    DIR/media/...        every file of the default storage (local MEDIA_ROOT or the bucket)
    DIR/manifest.json    when, which database, each file's sha256, row counts, migrations

``manage.py restore DIR`` (``make restore``) loads it into an **empty** database and an
**empty** storage (it refuses anything else: a restore never merges into live data),
checks every file's sha256 against the manifest and the row counts against the
manifest's, and says what it restored.

The database is dumped first, then the files: a file stored after the dump started is
copied too but named by no row (harmless); every row of the dump names a file that
exists by the time it is copied. Files are copied through Django's storage API, so the
same command backs up a local ``MEDIA_ROOT`` and an S3 bucket; for a large bucket, sync
it with the provider's tools instead (``--skip-media``; docs/operations.md "Backups").
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.apps import apps
from django.core.files import File
from django.core.files.storage import Storage, default_storage
from django.db import connection
from django.db.migrations.recorder import MigrationRecorder
from django.utils import timezone

MANIFEST = "manifest.json"
FORMAT = 1
# Scratch files of the readiness check (cxrplatform.health): never part of a backup.
SKIPPED_PREFIXES = ("health/",)
# Rows counted into the manifest and checked after a restore.
COUNTED = (
    "auth.User",
    "accounts.AuditEvent",
    "cases.Case",
    "cases.CaseImage",
    "cases.Prediction",
    "cases.ExpertLabel",
    "cases.Adjudication",
    "explain.Explanation",
    "registry.ModelVersion",
    "registry.ReferenceImage",
    "registry.DatasetSnapshot",
    "registry.SnapshotItem",
    "registry.TrainingRun",
)


class BackupError(Exception):
    pass


@dataclass(frozen=True)
class Database:
    vendor: str
    name: str
    env: dict[str, str]


def _database() -> Database:
    settings_dict = connection.settings_dict
    vendor = connection.vendor
    if vendor == "sqlite":
        return Database(vendor, str(settings_dict["NAME"]), {})
    if vendor != "postgresql":
        raise BackupError(f"Backups support PostgreSQL and SQLite, not {vendor}.")
    env = dict(os.environ)
    # libpq's variables: the password never appears on a command line.
    for key, variable in (
        ("HOST", "PGHOST"),
        ("PORT", "PGPORT"),
        ("USER", "PGUSER"),
        ("PASSWORD", "PGPASSWORD"),
        ("NAME", "PGDATABASE"),
    ):
        value = settings_dict.get(key)
        if value:
            env[variable] = str(value)
        else:
            env.pop(variable, None)
    return Database(vendor, str(settings_dict["NAME"]), env)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            f"{name} is not installed: install the PostgreSQL client tools (Debian: "
            "apt-get install postgresql-client), the same major version as the server or newer."
        )
    return path


def _run(command: list[str], env: dict[str, str]) -> None:
    result = subprocess.run(  # noqa: S603 - fixed argument lists, no shell
        command, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise BackupError(f"{Path(command[0]).name} failed: {result.stderr.strip()[-2000:]}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def stored_names(storage: Storage, folder: str = "") -> Iterator[str]:
    """Every file name in ``storage``, depth first (Storage.listdir works for local
    folders and S3 prefixes alike)."""
    try:
        folders, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    for name in sorted(files):
        path = f"{folder}/{name}" if folder else name
        if not path.startswith(SKIPPED_PREFIXES):
            yield path
    for sub in sorted(folders):
        yield from stored_names(storage, f"{folder}/{sub}" if folder else sub)


def row_counts() -> dict[str, int]:
    return {
        label: apps.get_model(label)._base_manager.count()  # deleted cases too
        for label in COUNTED
    }


def _applied_migrations() -> dict[str, str]:
    latest: dict[str, str] = {}
    for app_label, name in MigrationRecorder(connection).applied_migrations():
        latest[app_label] = max(latest.get(app_label, ""), name)
    return dict(sorted(latest.items()))


@contextmanager
def _private_files() -> Iterator[None]:
    """Files and folders created inside are readable by their owner only (0600/0700):
    a backup holds every patient's images and the whole database. The mask is the
    process's, restored on the way out (the command runs in its own process)."""
    previous = os.umask(0o077)
    try:
        yield
    finally:
        os.umask(previous)


def backup(out: Path, *, media: bool = True, storage: Storage | None = None) -> dict[str, Any]:
    """Write a backup into ``out`` (a new or empty folder, made 0700, every file in it
    0600); returns the manifest."""
    with _private_files():
        return _backup(out, media=media, storage=storage)


def _backup(out: Path, *, media: bool, storage: Storage | None) -> dict[str, Any]:
    storage = storage or default_storage
    if out.exists() and any(out.iterdir()):
        raise BackupError(f"{out} is not empty: back up into a new folder.")
    out.mkdir(parents=True, exist_ok=True)
    out.chmod(0o700)  # an empty folder made beforehand keeps its own mode otherwise
    database = _database()
    started = timezone.now()
    if database.vendor == "postgresql":
        dump = out / "db.dump"
        _run(
            [
                _tool("pg_dump"),
                "--format=custom",
                "--no-owner",
                "--no-privileges",
                f"--file={dump}",
            ],
            database.env,
        )
    else:
        dump = out / "db.sqlite3"
        source = sqlite3.connect(database.name)
        target = sqlite3.connect(dump)
        try:
            source.backup(target)  # a consistent copy while the demo runs
        finally:
            target.close()
            source.close()
    files: dict[str, str] = {}
    total_bytes = 0
    if media:
        for name in stored_names(storage):
            target_path = out / "media" / name
            target_path.parent.mkdir(parents=True, exist_ok=True)
            with storage.open(name, "rb") as src, target_path.open("wb") as dst:
                shutil.copyfileobj(src, dst)
            files[name] = _sha256(target_path)
            total_bytes += target_path.stat().st_size
    manifest = {
        "format": FORMAT,
        "started_at": started.isoformat(),
        "finished_at": timezone.now().isoformat(),
        "database": {"vendor": database.vendor, "file": dump.name, "sha256": _sha256(dump)},
        "media": {"included": media, "files": len(files), "bytes": total_bytes},
        "files": files,
        "rows": row_counts(),
        "migrations": _applied_migrations(),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def _read_manifest(source: Path) -> dict[str, Any]:
    path = source / MANIFEST
    if not path.is_file():
        raise BackupError(f"{source} holds no {MANIFEST}: not a backup made by `manage.py backup`.")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise BackupError(f"{path}: unknown backup format {manifest.get('format')!r}.")
    dump = source / manifest["database"]["file"]
    if not dump.is_file() or _sha256(dump) != manifest["database"]["sha256"]:
        raise BackupError(f"{dump} is missing or does not match the manifest's sha256.")
    return manifest


def _check_empty_targets(storage: Storage, media: bool) -> None:
    tables = connection.introspection.table_names()
    if tables:
        raise BackupError(
            f"The database {connection.settings_dict['NAME']!r} is not empty ({len(tables)} "
            "tables): restore into a new, empty database (createdb), never over live data."
        )
    if media and next(stored_names(storage), None) is not None:
        raise BackupError("The file storage is not empty: restore into an empty MEDIA_ROOT/bucket.")


def restore(source: Path, *, media: bool = True, storage: Storage | None = None) -> dict[str, Any]:
    """Load the backup in ``source`` into the (empty) database and storage; returns what
    was restored. Raises BackupError, having written nothing, when a target is not empty
    or the backup does not match its manifest."""
    storage = storage or default_storage
    manifest = _read_manifest(source)
    database = _database()
    if database.vendor != manifest["database"]["vendor"]:
        raise BackupError(
            f"This backup is of a {manifest['database']['vendor']} database; the configured "
            f"one is {database.vendor}."
        )
    _check_empty_targets(storage, media and bool(manifest["files"]))
    if media:  # every file is checked before anything is written
        for name, sha256 in manifest["files"].items():
            path = source / "media" / name
            if not path.is_file() or _sha256(path) != sha256:
                raise BackupError(f"media/{name} is missing or does not match the manifest.")
    dump = source / manifest["database"]["file"]
    if database.vendor == "postgresql":
        connection.close()
        _run(
            [
                _tool("pg_restore"),
                "--no-owner",
                "--no-privileges",
                "--exit-on-error",
                "--single-transaction",
                f"--dbname={database.name}",
                str(dump),
            ],
            database.env,
        )
    else:
        connection.close()
        source_db = sqlite3.connect(dump)
        target_db = sqlite3.connect(database.name)
        try:
            source_db.backup(target_db)
        finally:
            target_db.close()
            source_db.close()
    restored_files = 0
    if media:
        for name in manifest["files"]:
            with (source / "media" / name).open("rb") as fh:
                saved = storage.save(name, File(fh, name=name))
            if saved != name:
                raise BackupError(f"The storage stored {name} as {saved}: is it really empty?")
            restored_files += 1
    rows = row_counts()
    if rows != manifest["rows"]:
        differ = {
            k: (manifest["rows"].get(k), v) for k, v in rows.items() if manifest["rows"].get(k) != v
        }
        raise BackupError(f"Row counts after the restore differ from the manifest: {differ}")
    return {"rows": rows, "files": restored_files, "migrations": manifest["migrations"]}
