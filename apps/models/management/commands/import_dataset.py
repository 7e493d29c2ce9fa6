from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.models.datasets import import_reference_dataset

LAYOUTS = {
    "covid-chestxray": "covid-chestxray",
    "pediatric": "pediatric",
    "nih": "nih",
    "generic": "generic",
    "auto": "auto",
}


class Command(BaseCommand):
    help = "Import a seed data set as labelled reference images (idempotent by sha256)."

    def add_arguments(self, parser):
        parser.add_argument("directory", type=Path)
        parser.add_argument("--layout", choices=sorted(LAYOUTS), default="auto")

    def handle(self, *args, directory: Path, layout: str, **options):
        try:
            result = import_reference_dataset(directory, LAYOUTS[layout])
        except (FileNotFoundError, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"{directory}: {result['created']} imported, {result['already_present']} already "
            f"present, {result['unreadable']} unreadable, {result['excluded_by_mapping']} rows "
            f"excluded by the label mapping, {result['synthetic_refused']} refused as synthetic"
        )
