"""The embedded demo's CT case: the bundled CT segmenter as production for its task and
one CT case of the demo clinician, uploaded through the same service as the page."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand, CommandError

from apps.cases.kinds import KINDS
from apps.cases.models import Case, Modality
from apps.cases.validation import UploadRejected
from apps.models.models import ModelVersion

DEMO_CLINICIAN = "clinician"
FIXTURE_SLICES = ("zenodo/images/0313.jpg", "zenodo/images/1004.jpg", "medseg/images/slice-062.jpg")


def shared_ct_folder() -> Path | None:
    """The shared ct-covid-seg folder (CXR_SHARED_DATASETS, else ../shared/datasets)."""
    root = os.environ.get("CXR_SHARED_DATASETS") or str(
        settings.BASE_DIR.parent / "shared" / "datasets"
    )
    folder = Path(root) / "ct-covid-seg"
    return folder if (folder / "zenodo" / "slices.csv").is_file() else None


def demo_slices(folder: Path | None, count: int = 3) -> list[Path]:
    """Held-out zenodo slices (the CT model's test volume groups), the most infected
    slice of each of ``count`` groups; the test fixtures' slices without shared data."""
    if folder is None:
        fixtures = settings.BASE_DIR / "tests" / "fixtures" / "ct"
        return [fixtures / name for name in FIXTURE_SLICES if (fixtures / name).is_file()]
    from ml.ct.data import zenodo_samples

    test_groups = {s.group for s in zenodo_samples(folder / "zenodo") if s.split == "test"}
    with (folder / "zenodo" / "slices.csv").open(newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if row["volume_group"] in test_groups]
    best: dict[str, dict[str, str]] = {}
    for row in rows:
        group = row["volume_group"]
        if group not in best or int(row["infection_pixels"]) > int(best[group]["infection_pixels"]):
            best[group] = row
    chosen = sorted(best.values(), key=lambda r: -int(r["infection_pixels"]))[:count]
    return [folder / "zenodo" / row["image"] for row in chosen]


class Command(BaseCommand):
    help = (
        "Register the bundled CT segmenter (CXR_BUNDLED_CT_MODEL) as production for CT when "
        "there is none, and give the demo clinician one CT case (held-out slices of the "
        "shared data when present, else the test fixtures' slices). Idempotent; DEBUG=1 only."
    )

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError("seed_ct_demo is for the embedded demo; it runs only with DEBUG=1.")
        self._register_model()
        self._seed_case()

    def _register_model(self) -> None:
        from apps.models.services import RegistryError, register_artifact

        path = Path(settings.CXR_BUNDLED_CT_MODEL)
        task = KINDS[Modality.CT].task  # the model registry task that serves CT cases
        if ModelVersion.objects.production(task=task) is not None:
            self.stdout.write("CT segmenter: a production version is registered already.")
            return
        if not path.is_file():
            self.stdout.write(
                f"CT segmenter: no bundled model at {path} (make it with `python -m ml ct "
                "train`). The demo CT case is made anyway; its segmentations fail with "
                "'No production CT segmentation model' until one is registered and promoted "
                "(then retry them: POST /api/v1/images/<id>/segmentation/retry/)."
            )
            return
        try:
            version = register_artifact(artifact_path=path, make_production=True, task=task)
        except RegistryError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"CT segmenter: #{version.pk} {version.name} serves CT slices.")

    def _seed_case(self) -> None:
        from django.contrib.auth import get_user_model

        from apps.cases.services import create_case

        owner = get_user_model().objects.filter(username=DEMO_CLINICIAN).first()
        if owner is None:
            raise CommandError("Run `manage.py seed_demo` first (it creates the demo clinician).")
        if Case.objects.filter(owner=owner, modality=Modality.CT).exists():
            self.stdout.write("Demo CT case: there is one already.")
            return
        folder = shared_ct_folder()
        slices = demo_slices(folder)
        if not slices:
            self.stdout.write("Demo CT case: no CT slices found; none made.")
            return
        files = [
            SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/jpeg")
            for path in slices
        ]
        try:
            case = create_case(
                owner=owner,
                files=files,
                modality=Modality.CT,
                patient_ref="DEMO-CT",
                notes="Demo: axial chest CT slices"
                + (" of held-out zenodo volumes." if folder else " (test fixtures)."),
            )
        except UploadRejected as exc:
            raise CommandError(f"The demo CT slices were refused: {exc}") from exc
        where = "shared data (held-out zenodo volumes)" if folder else "test fixtures"
        self.stdout.write(
            f"Demo CT case {case.pk}: {len(files)} slices from the {where}; the worker "
            "segments them when the demo starts."
        )
