"""Erasure requests: a hospital patient ID finds every DICOM case of the patient (also
where the clinician typed their own reference), a typed reference finds the rest, the
page says what each found and what it did not; every search and erasure is audited with
keyed hashes (never a bare SHA-256), and readers' notes do not outlive the erased images
in the audit log or in snapshot records."""

from __future__ import annotations

import hashlib
import importlib
import json

import pytest
from django.apps import apps as django_apps
from django.contrib.messages import get_messages
from django.urls import reverse

from apps.accounts.models import AuditEvent, keyed_digest
from apps.cases import labelling, retention, services
from apps.cases.deidentify import pseudonym_for
from apps.cases.models import Case
from apps.models.models import DatasetSnapshot, SnapshotItem
from tests.cases.test_input_safety import make_dicom
from tests.conftest import upload_of
from tests.factories import CaseFactory, CaseImageFactory, PredictionFactory, UserFactory

pytestmark = pytest.mark.django_db

HOSPITAL_ID = "MRN-4711-SECRET"  # the PatientID make_dicom writes


def _dicom_case(owner, *, patient_ref: str = "", patient_id: str = HOSPITAL_ID) -> Case:
    dicom = make_dicom(PatientID=patient_id)
    return services.create_case(
        owner=owner, files=[upload_of("study.dcm", dicom)], patient_ref=patient_ref
    )


def _messages(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def _audit_text(action: str) -> str:
    events = AuditEvent.objects.filter(action=action).values("before", "after", "target_id")
    return json.dumps(list(events))


@pytest.mark.slow
def test_erasure_by_hospital_id_finds_a_dicom_case_whose_clinician_typed_a_reference(
    client, clinician, other_clinician, model_admin, settings, django_capture_on_commit_callbacks
):
    typed = _dicom_case(clinician, patient_ref="MY-REF-1")
    untyped = _dicom_case(other_clinician)
    someone_else = _dicom_case(clinician, patient_id="MRN-0000-OTHER")
    pseudonym = pseudonym_for(HOSPITAL_ID, key=settings.CXR_PSEUDONYM_KEY)
    # The typed reference wins on the case; the DICOM pseudonym is kept beside it.
    assert (typed.patient_ref, typed.patient_pseudonym) == ("MY-REF-1", pseudonym)
    assert (untyped.patient_ref, untyped.patient_pseudonym) == (pseudonym, pseudonym)

    client.force_login(model_admin)
    found = client.post(reverse("cases:erasure"), {"hospital_id": HOSPITAL_ID})
    assert found.status_code == 200
    assert b'data-found-cases="2"' in found.content
    assert Case.objects.filter(pk=typed.pk).exists()  # finding erases nothing
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("cases:erasure"), {"hospital_id": HOSPITAL_ID, "confirm": "on"}, follow=True
        )
    assert not Case.all_objects.filter(pk__in=[typed.pk, untyped.pk]).exists()
    assert Case.objects.filter(pk=someone_else.pk).exists()
    assert any("2 cases found by the hospital patient ID" in m for m in _messages(response))


def test_the_page_says_what_each_identifier_found_and_what_it_did_not(
    client, clinician, model_admin
):
    dicom = _dicom_case(clinician, patient_ref="MY-REF-1")
    png = CaseFactory(owner=clinician, patient_ref="CLINIC-77")  # a PNG upload: no pseudonym
    CaseImageFactory(case=png)
    client.force_login(model_admin)
    page = client.post(
        reverse("cases:erasure"), {"hospital_id": HOSPITAL_ID, "patient_ref": "CLINIC-77"}
    ).content.decode()
    assert 'data-found-cases="2"' in page
    assert 'data-found-by="hospital_id" data-cases="1"' in page
    assert 'data-found-by="patient_ref" data-cases="1"' in page
    response = client.post(
        reverse("cases:erasure"),
        {"hospital_id": HOSPITAL_ID, "patient_ref": "CLINIC-77", "confirm": "on"},
        follow=True,
    )
    assert not Case.all_objects.filter(pk__in=[dicom.pk, png.pk]).exists()
    (message,) = _messages(response)
    assert "1 case found by the hospital patient ID" in message
    assert "1 case found by the patient reference" in message
    assert "Erased 2 case(s)" in message

    # Nothing left: said, not reported as a success.
    again = client.post(
        reverse("cases:erasure"),
        {"hospital_id": HOSPITAL_ID, "patient_ref": "CLINIC-77", "confirm": "on"},
        follow=True,
    )
    (message,) = _messages(again)
    assert "No case was found by the hospital patient ID" in message
    assert "No case was found by the patient reference" in message
    assert "Nothing was erased" in message
    assert "Erased" not in message


def test_every_lookup_is_audited_with_keyed_hashes_and_counts(client, clinician, model_admin):
    _dicom_case(clinician, patient_ref="MY-REF-1")
    client.force_login(model_admin)
    client.post(reverse("cases:erasure"), {"hospital_id": HOSPITAL_ID})
    client.post(reverse("cases:erasure"), {"patient_ref": "NOBODY"})
    first, second = AuditEvent.objects.filter(action="retention.lookup").order_by("pk")
    assert first.actor == model_admin
    assert first.after["hospital_id_hmac"] == keyed_digest("erasure-hospital_id", HOSPITAL_ID)
    assert (first.after["cases"], first.after["images"]) == (1, 1)
    assert first.after["found"] == {"hospital_id": 1}
    assert second.after["patient_ref_hmac"] == keyed_digest("erasure-patient_ref", "NOBODY")
    assert (second.after["cases"], second.after["images"]) == (0, 0)
    text = _audit_text("retention.lookup")
    for secret in (HOSPITAL_ID, "MY-REF-1", "NOBODY", Case.objects.get().patient_pseudonym):
        assert secret not in text
    assert not AuditEvent.objects.filter(action="retention.erasure").exists()


def test_the_erasure_event_keeps_a_keyed_hash_not_a_bare_sha256(client, settings, model_admin):
    reference = "1234567"  # a 7-digit reference: every candidate hashes in half a second
    case = CaseFactory(patient_ref=reference)
    client.force_login(model_admin)
    client.post(reverse("cases:erasure"), {"patient_ref": reference, "confirm": "on"})
    assert not Case.all_objects.filter(pk=case.pk).exists()
    event = AuditEvent.objects.get(action="retention.erasure")
    text = json.dumps(event.after)
    assert hashlib.sha256(reference.encode()).hexdigest() not in text
    assert reference not in text
    digest = event.after["patient_ref_hmac"]
    assert digest == keyed_digest("erasure-patient_ref", reference)
    settings.CXR_PSEUDONYM_KEY = "another-key-of-another-deployment-0123456789"
    assert keyed_digest("erasure-patient_ref", reference) != digest  # needs the key
    assert event.after["found"] == {"patient_ref": [case.pk]}


def test_readers_notes_do_not_survive_erasure_in_the_audit_log_or_snapshot_records(
    client, model_admin, settings, django_capture_on_commit_callbacks
):
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "adjudication", 1
    image = PredictionFactory(image__case__patient_ref="PSEUDO-NOTES").image
    first = UserFactory(roles=["annotator"])
    second = UserFactory(roles=["annotator"])
    adjudicator = UserFactory(roles=["adjudicator"])
    notes = ("patient Jane Roe, bed 12", "old fracture left 5th rib", "agree with reader two")
    labelling.submit_label(image=image, annotator=first, label="normal", note=notes[0])
    labelling.submit_label(image=image, annotator=second, label="pneumonia", note=notes[1])
    labelling.adjudicate(image=image, adjudicator=adjudicator, label="pneumonia", note=notes[2])
    # A snapshot record frozen with the notes' texts (as snapshots were made before).
    item = SnapshotItem.objects.create(
        snapshot=DatasetSnapshot.objects.create(content_hash="with-notes"),
        case_image=image,
        label="pneumonia",
        split="train",
        patient="p",
        source="clinical",
        pixel_sha256="cd" * 32,
        provenance={
            "kind": "clinical",
            "verdicts": [{"reader": "reader-1", "label": "normal", "note": notes[0]}],
            "adjudication": {"adjudicator": "reader-3", "label": "pneumonia", "note": notes[2]},
        },
    )
    label_event = AuditEvent.objects.get(action="label.create", actor=first)
    assert label_event.after["note_chars"] == len(notes[0])
    assert label_event.after["note_hmac"] == keyed_digest("note", notes[0])

    client.force_login(model_admin)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("cases:erasure"), {"patient_ref": "PSEUDO-NOTES", "confirm": "on"})
    assert not Case.all_objects.filter(pk=image.case_id).exists()
    everything = json.dumps(list(AuditEvent.objects.values("before", "after")))
    item.refresh_from_db()
    for note in notes:
        assert note not in everything
        assert note not in json.dumps(item.provenance)
    assert item.is_withdrawn
    assert item.provenance["verdicts"] == [{"reader": "reader-1", "label": "normal"}]


def test_the_migration_turns_old_audit_notes_into_lengths_and_keyed_hashes(db):
    migration = importlib.import_module("apps.accounts.migrations.0007_audit_label_notes_keyed")
    event = AuditEvent.objects.create(
        action="label.adjudicate",
        target_type="cases.Adjudication",
        target_id="1",
        before={"verdicts": [{"reader": 1, "label": "normal", "note": "Jane Roe"}]},
        after={"label": "normal", "note": "", "confirmed": "normal"},
    )
    migration.keyed_notes(django_apps, None)
    event.refresh_from_db()
    assert event.before["verdicts"] == [
        {
            "reader": 1,
            "label": "normal",
            "note_chars": 8,
            "note_hmac": keyed_digest("note", "Jane Roe"),
        }
    ]
    assert event.after == {"label": "normal", "note_chars": 0, "confirmed": "normal"}


@pytest.mark.slow
def test_the_migration_fills_the_pseudonym_of_cases_stored_before(clinician, settings):
    migration = importlib.import_module(
        "apps.cases.migrations.0010_case_patient_pseudonym_backfill"
    )
    typed = _dicom_case(clinician, patient_ref="MY-REF-1")
    untyped = _dicom_case(clinician)
    png = CaseFactory(owner=clinician, patient_ref="CLINIC-77")
    CaseImageFactory(case=png)
    unreadable = _dicom_case(clinician, patient_ref="MY-REF-2")
    original = unreadable.images.get().original
    original.storage.delete(str(original.name))
    Case.all_objects.update(patient_pseudonym="")  # as the column was added
    migration.backfill_patient_pseudonym(django_apps, None)
    pseudonym = pseudonym_for(HOSPITAL_ID, key=settings.CXR_PSEUDONYM_KEY)
    stored = dict(Case.all_objects.values_list("pk", "patient_pseudonym"))
    assert stored == {typed.pk: pseudonym, untyped.pk: pseudonym, png.pk: "", unreadable.pk: ""}
    found = retention.find_patient(hospital_id=HOSPITAL_ID)
    assert found.cases == sorted([typed.pk, untyped.pk])
