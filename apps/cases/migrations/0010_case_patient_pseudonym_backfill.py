"""Keep each case's DICOM pseudonym in a column of its own (``Case.patient_pseudonym``),
so that an erasure request by hospital patient ID finds a case whose clinician typed their
own reference over the pseudonym; and fill it for the cases stored before, where the
pseudonym is known:

1. a case with a de-identified DICOM file: the file's PatientID is the pseudonym (read
   from storage, the header only). A file that is missing or unreadable leaves its case
   as it was (logged): such a case is found by its reference only, as before;
2. any other case whose reference is a pseudonym (``PX-`` and 20 hex digits: its
   clinician typed no reference of their own).

Going back drops the column.
"""

import logging
import re

from django.db import migrations, models

log = logging.getLogger(__name__)

PSEUDONYM = re.compile(r"^PX-[0-9A-F]{20}$")


def _dicom_patient_id(field) -> str:
    import pydicom

    with field.open("rb") as fh:
        dataset = pydicom.dcmread(fh, stop_before_pixels=True, specific_tags=["PatientID"])
    return str(dataset.get("PatientID") or "").strip()


def backfill_patient_pseudonym(apps, schema_editor):
    Case = apps.get_model("cases", "Case")  # the historical manager: deleted cases too
    CaseImage = apps.get_model("cases", "CaseImage")
    filled: set[int] = set()
    unreadable = 0
    dicoms = (
        CaseImage.objects.filter(source_format="dicom", case__patient_pseudonym="")
        .exclude(original="")
        .order_by("case_id", "pk")
    )
    for image in dicoms.iterator():
        if image.case_id in filled:
            continue
        try:
            patient_id = _dicom_patient_id(image.original)
        except Exception:  # noqa: BLE001 - one unreadable file must not stop the migration
            unreadable += 1
            continue
        if PSEUDONYM.match(patient_id):
            Case.objects.filter(pk=image.case_id).update(patient_pseudonym=patient_id)
            filled.add(image.case_id)
    for pk, reference in Case.objects.filter(
        patient_pseudonym="", patient_ref__startswith="PX-"
    ).values_list("pk", "patient_ref"):
        if PSEUDONYM.match(reference):
            Case.objects.filter(pk=pk).update(patient_pseudonym=reference)
            filled.add(pk)
    log.info("patient pseudonyms filled for %d case(s)", len(filled))
    if unreadable:
        log.warning("%d DICOM file(s) could not be read: their cases keep no pseudonym", unreadable)


class Migration(migrations.Migration):
    dependencies = [
        ("cases", "0009_label_policy"),
    ]

    operations = [
        migrations.AddField(
            model_name="case",
            name="patient_pseudonym",
            field=models.CharField(
                blank=True,
                db_index=True,
                help_text="The DICOM files' pseudonym of the hospital patient ID (a keyed hash, CXR_PSEUDONYM_KEY), kept when the clinician typed their own reference; empty for PNG and JPEG uploads. Erasure by hospital ID finds the case by it.",
                max_length=64,
            ),
        ),
        migrations.RunPython(backfill_patient_pseudonym, migrations.RunPython.noop),
    ]
