"""Run as ``python -m tests.ops.backup_world populate|describe`` by the backup test, in its
own process against the database in DATABASE_URL and the files in MEDIA_ROOT:
``populate`` stores a small world (users, cases, images, predictions, labels, an
explanation, model versions with artifact files); ``describe`` prints, as JSON, what a
restore must give back, images and artifacts by the sha256 of their stored bytes."""

from __future__ import annotations

import hashlib
import json
import sys


def _digest(field_file) -> str:
    with field_file.open("rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


def populate() -> None:
    from django.conf import settings
    from django.core.files.base import ContentFile

    from apps.cases.models import ExpertLabel
    from apps.models.models import ModelVersion
    from tests.factories import (
        CaseFactory,
        CaseImageFactory,
        ExplanationFactory,
        PredictionFactory,
        UserFactory,
    )

    artifact = settings.CXR_BUNDLED_MODEL.read_bytes()
    production = ModelVersion.objects.create(
        name="cxr-tiny",
        artifact=ContentFile(artifact, name="cxr-tiny.keras"),
        sha256=hashlib.sha256(artifact).hexdigest(),
        status=ModelVersion.Status.PRODUCTION,
        card={"classes": ["covid19", "pneumonia", "normal"]},
    )
    candidate_bytes = artifact + b"candidate"
    ModelVersion.objects.create(
        name="candidate",
        artifact=ContentFile(candidate_bytes, name="candidate.keras"),
        sha256=hashlib.sha256(candidate_bytes).hexdigest(),
        status=ModelVersion.Status.CANDIDATE,
    )
    clinician = UserFactory(username="dr-backup", roles=["clinician"])
    annotator = UserFactory(username="reader-backup", roles=["annotator"])
    fixtures = [("2168a917.jpg", "IM-0117-0001.jpeg"), ("00001280_004.jpg",)]
    for n, names in enumerate(fixtures):
        case = CaseFactory(owner=clinician, patient_ref=f"PSEUDO-B{n}", notes=f"case {n}")
        for name in names:
            image = CaseImageFactory(case=case, fixture=name)
            PredictionFactory(image=image, model_version=production)
            ExpertLabel.objects.create(image=image, annotator=annotator, label="normal")
        ExplanationFactory(image=image, model_version=production)


def describe() -> dict:
    from django.contrib.auth import get_user_model

    from apps.cases.models import Case, CaseImage, ExpertLabel
    from apps.explain.models import Explanation
    from apps.models.models import ModelVersion

    return {
        "users": sorted(
            (u.username, sorted(u.groups.values_list("name", flat=True)))
            for u in get_user_model().objects.all()
        ),
        "cases": [
            (c.pk, c.owner.username, c.patient_ref, c.notes, c.modality)
            for c in Case.all_objects.order_by("pk")
        ],
        "images": [
            (i.pk, i.case_id, i.file.name, i.sha256, _digest(i.file), i.width, i.height)
            for i in CaseImage.all_objects.order_by("pk")
        ],
        "labels": sorted(
            (label.image_id, label.annotator.username, label.label)
            for label in ExpertLabel.objects.all()
        ),
        "model_versions": [
            (v.pk, v.name, v.status, v.sha256, _digest(v.artifact))
            for v in ModelVersion.objects.order_by("pk")
        ],
        "explanations": [
            (e.pk, e.image_id, _digest(e.heatmap), _digest(e.overlay))
            for e in Explanation.objects.order_by("pk")
        ],
    }


if __name__ == "__main__":
    import django

    django.setup()
    if sys.argv[1] == "populate":
        populate()
    else:
        print(json.dumps(describe()))
