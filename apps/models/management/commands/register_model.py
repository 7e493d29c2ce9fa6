import json
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.models.models import TASKS, ModelVersion, Task
from apps.models.services import RegistryError, card_task, register_artifact
from apps.models.services import promote as promote_version


class Command(BaseCommand):
    help = (
        "Register a .keras artifact (with its .card.json beside it) in the model registry. "
        "With --bundled, registers the model shipped in ml/bundled/ for the task "
        "(classification: CXR_BUNDLED_MODEL; ct_segmentation: CXR_BUNDLED_CT_MODEL; "
        "lung_segmentation: CXR_LUNG_MODEL). The classifier's first-start registration "
        "(--bundled with --if-no-production or --if-never-promoted) also registers the "
        "lung U-Net that CXR_LUNG_MODEL names as the production lung segmenter, when none "
        "is registered yet."
    )

    def add_arguments(self, parser):
        parser.add_argument("artifact", nargs="?", type=Path)
        parser.add_argument("--bundled", action="store_true", help="use the task's bundled model")
        parser.add_argument(
            "--task",
            choices=Task.values,
            help="what the model does (default: what its card says; classification for "
            "cards without a task)",
        )
        parser.add_argument(
            "--promote",
            action="store_true",
            help="make it the production version of its task",
        )
        parser.add_argument(
            "--if-no-production",
            action="store_true",
            help="promote only when its task has no production version yet (first start)",
        )
        parser.add_argument(
            "--if-never-promoted",
            action="store_true",
            help="promote it only if it never served before (the demo's first start: the "
            "version it replaces stays as the rollback target; later starts keep whatever "
            "a model admin chose)",
        )
        parser.add_argument(
            "--if-present",
            action="store_true",
            help="with --bundled: a missing bundled model is reported, not an error",
        )
        parser.add_argument("--name")

    def handle(
        self,
        *args,
        artifact=None,
        bundled=False,
        task=None,
        promote=False,
        if_no_production=False,
        if_never_promoted=False,
        if_present=False,
        name=None,
        **options,
    ):
        first_start = (
            bundled
            and task in (None, Task.CLASSIFICATION)
            and (if_no_production or if_never_promoted)
        )
        if bundled == (artifact is not None):
            raise CommandError("Give either an artifact path or --bundled.")
        if bundled:
            spec = TASKS[task or Task.CLASSIFICATION]
            setting = getattr(settings, spec.bundled_setting)
            if setting is None:  # CXR_LUNG_MODEL=off
                self.stdout.write(f"{spec.bundled_setting} is off; nothing registered.")
                return
            path = Path(setting)
            if if_present and not path.is_file():
                self.stdout.write(
                    f"No bundled {spec.noun} at {path}{spec.make_hint}; nothing registered. "
                    f"{spec.waits}"
                )
                return
        else:
            path = artifact
        try:
            if task is None and path is not None and Path(path).is_file():
                from ml.models.artifacts import card_path

                cpath = card_path(Path(path))
                if cpath.is_file():
                    task = card_task(json.loads(cpath.read_text()))
            no_production = (
                ModelVersion.objects.production(task=task or Task.CLASSIFICATION) is None
            )
            make_production = promote or (if_no_production and no_production)
            version = register_artifact(
                artifact_path=path, name=name, make_production=make_production, task=task
            )
            if if_never_promoted and version.promoted_at is None:
                version = promote_version(
                    version=version, reason="registered: first start, replaces the earlier one"
                )
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Model version #{version.pk} ({version.get_task_display()}): {version}")
        if first_start:
            self._first_lung_segmenter()

    def _first_lung_segmenter(self) -> None:
        """The platform's first start: the lung U-Net that CXR_LUNG_MODEL names becomes
        the production lung segmenter, unless one is registered already (or segmentation
        is off, or the file is missing: lung masks then keep coming from the setting)."""
        task = Task.LUNG_SEGMENTATION
        if ModelVersion.objects.production(task=task) is not None:
            return
        setting = settings.CXR_LUNG_MODEL
        if setting is None or not Path(setting).is_file():
            self.stdout.write(f"No lung segmenter registered: CXR_LUNG_MODEL is {setting}.")
            return
        try:
            version = register_artifact(
                artifact_path=Path(setting), make_production=True, task=task
            )
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"Model version #{version.pk} ({version.get_task_display()}): {version}")
