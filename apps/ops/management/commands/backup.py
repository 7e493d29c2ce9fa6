from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.ops.backup import BackupError, backup


class Command(BaseCommand):
    help = (
        "Back up the database (pg_dump, or the SQLite file) and every stored file into a new "
        "folder with a manifest of sha256s and row counts (apps/ops/backup.py)."
    )

    def add_arguments(self, parser):
        parser.add_argument("out", type=Path, help="a new (or empty) folder")
        parser.add_argument(
            "--skip-media",
            action="store_true",
            help="the database only (the bucket is synced with the provider's tools)",
        )

    def handle(self, *args, out: Path, skip_media: bool, **options):
        try:
            manifest = backup(out, media=not skip_media)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        rows = manifest["rows"]
        self.stdout.write(
            f"Backed up {manifest['database']['vendor']} ({rows['cases.Case']} cases, "
            f"{rows['cases.CaseImage']} images, {rows['registry.ModelVersion']} model versions) "
            f"and {manifest['media']['files']} files ({manifest['media']['bytes']} bytes) "
            f"into {out}"
        )
