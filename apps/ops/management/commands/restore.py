from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.ops.backup import BackupError, restore


class Command(BaseCommand):
    help = (
        "Restore a backup made by `manage.py backup` into an EMPTY database and an EMPTY file "
        "storage; checks every file's sha256 and the row counts against its manifest."
    )

    def add_arguments(self, parser):
        parser.add_argument("source", type=Path, help="the backup folder")
        parser.add_argument(
            "--skip-media",
            action="store_true",
            help="the database only (restore the bucket with the provider's tools)",
        )

    def handle(self, *args, source: Path, skip_media: bool, **options):
        try:
            result = restore(source, media=not skip_media)
        except BackupError as exc:
            raise CommandError(str(exc)) from None
        rows = result["rows"]
        self.stdout.write(
            f"Restored {rows['cases.Case']} cases, {rows['cases.CaseImage']} images, "
            f"{rows['cases.ExpertLabel']} labels, {rows['registry.ModelVersion']} model versions "
            f"and {result['files']} files from {source}"
        )
