"""The embedded demo's second site: a "Teaching hospital" with its own clinician and
labelled cases, so the local validation, operating point and drift pages have something
to show. Idempotent; DEBUG=1 only.

The site's clinician uploads the test fixture films through the upload service; each is
predicted in this process by the production classifier (the real prediction path, as the
worker would) and labelled by the demo annotator with the fixture's label. The later
films are the same ones "after a new detector" (less contrast, a blur): the drift page
shows the site moving away from the model's reference. Their drift features are dated
over the last three weeks and the daily drift checks computed for those days.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management.base import BaseCommand, CommandError
from django.utils import timezone

from apps.sites.models import DriftObservation, Site

SITE_NAME = "Teaching hospital"
SITE_SLUG = "teaching-hospital"
SITE_CLINICIAN = "teaching"
ANNOTATOR = "annotator"
DAYS = 21
SHIFTED = 12  # films uploaded again "after a new detector"


def _films() -> list[tuple[str, str]]:
    """(file name, label) of the test fixture films."""
    manifest = settings.BASE_DIR / "tests" / "fixtures" / "images" / "manifest.csv"
    with manifest.open(newline="") as fh:
        return [(row["path"], row["label"]) for row in csv.DictReader(fh)]


def _new_detector(data: bytes) -> bytes:
    """A film as a detector with less contrast and a softer image would give it (PNG)."""
    from PIL import Image, ImageEnhance, ImageFilter

    with Image.open(io.BytesIO(data)) as image:
        gray = image.convert("L")
        gray = ImageEnhance.Contrast(gray).enhance(0.55)
        gray = ImageEnhance.Brightness(gray).enhance(0.8)
        gray = gray.filter(ImageFilter.GaussianBlur(3))
        out = io.BytesIO()
        gray.save(out, format="PNG")
        return out.getvalue()


class Command(BaseCommand):
    help = (
        "Make the demo's second site (Teaching hospital) with a clinician and labelled, "
        "predicted cases, some of them shifted as by a new detector, and its drift checks "
        "of the last three weeks. Idempotent; DEBUG=1 only."
    )

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError(
                "seed_site_demo is for the embedded demo; it runs only with DEBUG=1."
            )
        from apps.models.models import ModelVersion, Task

        site = self._site()
        clinician = self._clinician(site)
        if site.cases.exists():
            self.stdout.write(f"{SITE_NAME}: it has cases already.")
            return
        version = ModelVersion.objects.production(task=Task.CLASSIFICATION)
        if version is None:
            raise CommandError("No production classifier: register one first (make demo does).")
        annotator = get_user_model().objects.filter(username=ANNOTATOR).first()
        if annotator is None:
            raise CommandError("Run `manage.py seed_demo` first (it creates the demo annotator).")
        films = _films()
        uploads: list[tuple[str, str, str | None]] = [(n, label, None) for n, label in films]
        uploads += [(name, label, "new detector") for name, label in films[:SHIFTED]]
        made = [self._predicted(clinician, annotator, *row) for row in uploads]
        self._date_and_check(site, version, [p for p in made if p is not None])

    def _site(self) -> Site:
        from apps.sites.services import create_site

        site = Site.objects.filter(slug=SITE_SLUG).first()
        if site is None:
            site = create_site(actor=None, name=SITE_NAME, slug=SITE_SLUG)
        return site

    def _clinician(self, site: Site):
        from django.contrib.auth.models import Group

        from apps.accounts.passwords import require_password_change
        from apps.accounts.roles import CLINICIAN as CLINICIAN_ROLE
        from apps.accounts.services import DEMO_PASSWORD_SUFFIX
        from apps.sites.services import set_site

        user, created = get_user_model().objects.get_or_create(username=SITE_CLINICIAN)
        password = f"{SITE_CLINICIAN}{DEMO_PASSWORD_SUFFIX}"
        if created:
            user.set_password(password)
            user.email = f"{SITE_CLINICIAN}@demo.invalid"
            user.save()
            user.groups.set([Group.objects.get(name=CLINICIAN_ROLE)])
            require_password_change(user, reason="demo password")
        set_site(actor=None, user=user, site=site)
        self.stdout.write(
            f"  clinician    username={SITE_CLINICIAN:<12} password={password} (at {site.name})"
        )
        return user

    def _predicted(self, clinician, annotator, name: str, label: str, shift: str | None):
        """Upload, predict (in this process) and label one film; None if refused."""
        from apps.cases.labelling import submit_label
        from apps.cases.models import Prediction
        from apps.cases.services import create_case
        from apps.cases.validation import UploadRejected
        from cxrplatform.jobs import run_job_now

        data = (settings.BASE_DIR / "tests" / "fixtures" / "images" / name).read_bytes()
        if shift:
            data, name = _new_detector(data), f"{name.rsplit('.', 1)[0]}-new-detector.png"
        upload = SimpleUploadedFile(name, data, "image/png" if shift else "image/jpeg")
        try:
            case = create_case(
                owner=clinician,
                files=[upload],
                patient_ref=f"TEACH-{name[:8]}",
                notes="Demo: teaching hospital" + (f" ({shift})" if shift else ""),
            )
        except UploadRejected as exc:
            self.stdout.write(f"{SITE_NAME}: {name} refused ({exc}).")
            return None
        prediction = Prediction.objects.get(image__case=case)
        run_job_now(Prediction, prediction.pk)
        prediction.refresh_from_db()
        if prediction.status != Prediction.Status.DONE:
            self.stdout.write(f"{SITE_NAME}: {name} not predicted ({prediction.error}).")
            return None
        submit_label(image=prediction.image, annotator=annotator, label=label)
        return prediction

    def _date_and_check(self, site: Site, version, predictions) -> None:
        """Spread the drift features over the last DAYS days (the shifted films last) and
        run the daily drift check of each day."""
        from apps.sites import drift

        now = timezone.now()
        observations = list(
            DriftObservation.objects.filter(prediction__in=predictions).order_by("prediction_id")
        )
        if not observations or drift.reference_for(version) is None:
            self.stdout.write(
                f"{SITE_NAME}: {len(predictions)} labelled cases; no drift reference for "
                f"{version.name}, so no drift checks."
            )
            return
        step = timedelta(days=DAYS) / len(observations)
        for i, observation in enumerate(observations):
            observation.created_at = now - timedelta(days=DAYS) + step * (i + 1)
            observation.save(update_fields=["created_at"])
        for day in range(DAYS, -1, -1):
            drift.check_site(site, version, at=now - timedelta(days=day), notify=day == 0)
        levels = {c.feature: c.level for c in drift.latest_checks(site, version)}
        self.stdout.write(
            f"{SITE_NAME}: {len(predictions)} labelled cases predicted by {version.name}; "
            f"drift now: {levels}"
        )
