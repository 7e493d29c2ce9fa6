from django.core.management.base import BaseCommand, CommandError

from apps.models.models import ModelVersion, Task
from apps.models.services import add_lite


class Command(BaseCommand):
    help = (
        "Convert registered classification versions for the inference queue's LiteRT "
        "runtime (versions registered before conversion at registration): the .tflite is "
        "stored beside the .keras artifact and recorded in the version's card. Versions "
        "that have one are skipped unless --force."
    )

    def add_arguments(self, parser):
        parser.add_argument("versions", nargs="*", type=int, help="version ids (default: all)")
        parser.add_argument("--force", action="store_true", help="convert again")

    def handle(self, *args, versions, force, **options):
        queryset = ModelVersion.objects.filter(task=Task.CLASSIFICATION).order_by("pk")
        if versions:
            queryset = queryset.filter(pk__in=versions)
            missing = sorted(set(versions) - set(queryset.values_list("pk", flat=True)))
            if missing:
                raise CommandError(
                    f"No classification version with id {', '.join(map(str, missing))}."
                )
        failed = []
        for version in queryset:
            if version.card.get("lite") and not force:
                self.stdout.write(f"#{version.pk} {version.name}: has its LiteRT file")
                continue
            if add_lite(version, force=force):
                self.stdout.write(
                    f"#{version.pk} {version.name}: {version.card['lite']['artifact']}"
                )
            else:
                failed.append(version.pk)
                self.stderr.write(f"#{version.pk} {version.name}: conversion failed (see log)")
        if failed:
            raise CommandError(
                f"{len(failed)} version(s) not converted; the inference queue serves them "
                "with Keras."
            )
