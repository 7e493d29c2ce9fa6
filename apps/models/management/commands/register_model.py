from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.models.models import ModelVersion
from apps.models.services import RegistryError, register_artifact


class Command(BaseCommand):
    help = (
        "Register a .keras artifact (with its .card.json beside it) in the model registry. "
        "With --bundled, registers the model shipped in ml/bundled/."
    )

    def add_arguments(self, parser):
        parser.add_argument("artifact", nargs="?", type=Path)
        parser.add_argument("--bundled", action="store_true", help="use settings.CXR_BUNDLED_MODEL")
        parser.add_argument(
            "--promote",
            action="store_true",
            help="make it the production version",
        )
        parser.add_argument(
            "--if-no-production",
            action="store_true",
            help="promote only when no production version exists yet (first start)",
        )
        parser.add_argument("--name")

    def handle(
        self,
        *args,
        artifact=None,
        bundled=False,
        promote=False,
        if_no_production=False,
        name=None,
        **options,
    ):
        if bundled == (artifact is not None):
            raise CommandError("Give either an artifact path or --bundled.")
        path = Path(settings.CXR_BUNDLED_MODEL) if bundled else artifact
        no_production = ModelVersion.objects.production() is None
        make_production = promote or (if_no_production and no_production)
        try:
            version = register_artifact(
                artifact_path=path, name=name, make_production=make_production
            )
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Model version #{version.pk}: {version}")
