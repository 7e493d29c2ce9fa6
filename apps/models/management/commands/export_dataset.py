from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.models.export import ExportError, export_to_folder, export_to_zip
from apps.models.models import DatasetSnapshot


class Command(BaseCommand):
    help = (
        "Export a dataset snapshot (or every confirmed clinical label) as a folder or a zip "
        "that `python -m ml classifier train --data` reads: labels.csv, images/, manifest.json."
    )

    def add_arguments(self, parser):
        parser.add_argument("out", type=Path, help="a new folder, or a file name ending in .zip")
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--snapshot", type=int, help="snapshot id (default: the newest)")
        which.add_argument(
            "--confirmed",
            action="store_true",
            help="every clinical image with a confirmed label now, without a split",
        )

    def handle(self, *args, out: Path, snapshot: int | None, confirmed: bool, **options):
        chosen = None
        if not confirmed:
            query = DatasetSnapshot.objects.all()
            chosen = query.filter(pk=snapshot).first() if snapshot else query.first()
            if chosen is None:
                raise CommandError(
                    f"No snapshot {snapshot}." if snapshot else "No snapshot yet; use --confirmed."
                )
        try:
            if out.suffix.lower() == ".zip":
                if out.exists():
                    raise ExportError(f"{out} exists; choose a new file name.")
                partial = out.with_name(f".{out.name}.partial")
                try:
                    with partial.open("wb") as fh:
                        manifest = export_to_zip(snapshot=chosen, fh=fh)
                    partial.replace(out)
                finally:
                    partial.unlink(missing_ok=True)
            else:
                manifest = export_to_folder(snapshot=chosen, out=out)
        except ExportError as exc:
            raise CommandError(str(exc)) from exc
        what = f"snapshot {chosen.pk}" if chosen else "confirmed labels"
        folder = f"FOLDER (unzip {out} there)" if out.suffix.lower() == ".zip" else out
        self.stdout.write(
            f"{out}: {manifest['counts']['total']} images ({what}); "
            f"train with: python -m ml classifier train --data {folder} --out OUT"
        )
