"""`manage.py backup` / `restore` (make backup / make restore) with the
real PostgreSQL tools: a backup of a database and media folder, restored into an empty
database and an empty media folder, gives back the same cases, images (by the sha256 of
their stored bytes), labels and model versions; a restore refuses a database or storage
that is not empty and a backup whose files do not match its manifest.

Needs PostgreSQL (the server of DATABASE_URL, else 127.0.0.1:5432 as postgres) and
pg_dump/pg_restore; skipped without them, unless CXR_REQUIRE_POSTGRES=1 (.ci/run)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, stored_files

pytestmark = pytest.mark.xdist_group("processes")


def _server() -> dict:
    import dj_database_url

    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        config = dj_database_url.parse(url)
    else:
        config = dj_database_url.parse("postgres://postgres@127.0.0.1:5432/postgres")
    return {
        "host": config.get("HOST") or "127.0.0.1",
        "port": int(config.get("PORT") or 5432),
        "user": config.get("USER") or "postgres",
        "password": config.get("PASSWORD") or "",
    }


def _unavailable(reason: str):
    if os.environ.get("CXR_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"CXR_REQUIRE_POSTGRES=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture
def postgres_databases():
    """Two new, empty PostgreSQL databases (source and target), dropped afterwards."""
    import psycopg2

    for tool in ("pg_dump", "pg_restore"):
        if shutil.which(tool) is None:
            _unavailable(f"{tool} is not installed (apt-get install postgresql-client)")
    server = _server()
    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=5, **server)
    except psycopg2.OperationalError as exc:
        _unavailable(f"PostgreSQL is not reachable: {exc}")
    admin.autocommit = True
    suffix = uuid.uuid4().hex[:8]
    names = (f"cxr_backup_src_{suffix}", f"cxr_backup_dst_{suffix}")
    with admin.cursor() as cursor:
        for name in names:
            cursor.execute(f'CREATE DATABASE "{name}"')
    password = f":{server['password']}" if server["password"] else ""
    urls = [
        f"postgres://{server['user']}{password}@{server['host']}:{server['port']}/{name}"
        for name in names
    ]
    try:
        yield urls
    finally:
        with admin.cursor() as cursor:
            for name in names:
                cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _run(args: list[str], *, database_url: str, media: Path, var: Path, check=True):
    env = dict(os.environ)
    env.update(
        DJANGO_SETTINGS_MODULE="tests.settings",
        DATABASE_URL=database_url,
        MEDIA_ROOT=str(media),
        CXR_VAR_DIR=str(var),
        CELERY_BROKER_URL="filesystem://",
    )
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow  # the real pg_dump and pg_restore on two databases
@pytest.mark.django_db
def test_backup_restores_into_an_empty_database_and_media_folder(postgres_databases, tmp_path):
    source_url, target_url = postgres_databases
    source_media, target_media = tmp_path / "media-source", tmp_path / "media-target"
    source_media.mkdir()
    target_media.mkdir()
    var = tmp_path / "var"
    var.mkdir()
    source = {"database_url": source_url, "media": source_media, "var": var}
    target = {"database_url": target_url, "media": target_media, "var": var}

    _run(["manage.py", "migrate", "--noinput"], **source)
    _run(["-m", "tests.ops.backup_world", "populate"], **source)
    before = json.loads(_run(["-m", "tests.ops.backup_world", "describe"], **source).stdout)
    assert len(before["cases"]) == 2
    assert len(before["images"]) == 3
    assert len(before["labels"]) == 3
    assert len(before["model_versions"]) == 2

    backup = tmp_path / "backup"
    made = _run(["manage.py", "backup", str(backup)], **source)
    assert "Backed up postgresql (2 cases, 3 images, 2 model versions)" in made.stdout
    manifest = json.loads((backup / "manifest.json").read_text())
    assert (backup / "db.dump").read_bytes()[:5] == b"PGDMP"  # pg_dump's custom format
    assert (
        len(manifest["files"]) == len(stored_files(source_media)) == 3 + 2 + 2 * 2
    )  # images, artifacts, 2 heatmaps + overlays
    assert manifest["rows"]["cases.Case"] == 2
    # Every patient's images and the whole database: the owner's eyes only.
    written = [backup, *backup.rglob("*")]
    assert {oct(p.stat().st_mode & 0o777) for p in written if p.is_dir()} == {"0o700"}
    assert {oct(p.stat().st_mode & 0o777) for p in written if p.is_file()} == {"0o600"}

    # Refusals, each before anything is written.
    into_live = _run(["manage.py", "restore", str(backup)], **source, check=False)
    assert into_live.returncode != 0
    assert "is not empty" in into_live.stderr
    (target_media / "stray.txt").write_text("not empty")
    into_full_media = _run(["manage.py", "restore", str(backup)], **target, check=False)
    assert "file storage is not empty" in into_full_media.stderr
    (target_media / "stray.txt").unlink()
    one_file = backup / "media" / before["images"][0][2]
    original = one_file.read_bytes()
    one_file.write_bytes(original + b"x")
    tampered = _run(["manage.py", "restore", str(backup)], **target, check=False)
    assert "does not match the manifest" in tampered.stderr
    one_file.write_bytes(original)
    assert stored_files(target_media) == []

    restored = _run(["manage.py", "restore", str(backup)], **target)
    assert "Restored 2 cases, 3 images, 3 labels, 2 model versions and 9 files" in restored.stdout
    after = json.loads(_run(["-m", "tests.ops.backup_world", "describe"], **target).stdout)
    assert after == before
    # The restored database is fully migrated (the same schema, ready to serve).
    _run(["manage.py", "migrate", "--check"], **target)
