"""The reading room: a radiologist's worklist (their site's studies only, by the model's
priority), reading status, signed and versioned reports that the clinician sees, the
PDF, the reader's verdict entering labelling, and the upload-to-signed metric."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.cases.models import ExpertLabel
from apps.reading import services
from apps.reading.models import Reading, ReadingStatus, Report

pytestmark = pytest.mark.django_db


def test_worklist_lists_the_sites_studies_highest_priority_first(
    client, radiologist, owner, other_owner, study
):
    low = study(owner, (0.05, 0.05, 0.9), patient_ref="LOW-1")
    high = study(owner, (0.8, 0.1, 0.1), patient_ref="HIGH-1")
    middle = study(owner, (0.2, 0.2, 0.6), patient_ref="MID-1")
    waiting = study(owner, None, patient_ref="WAIT-1")
    elsewhere = study(other_owner, (0.9, 0.05, 0.05), patient_ref="ELSEWHERE-1")
    rows = services.worklist(radiologist, {})
    assert [row.case.pk for row in rows] == [high.pk, middle.pk, low.pk, waiting.pk]
    assert rows[0].priority.high
    assert not rows[2].priority.high
    newest = services.worklist(radiologist, {"order": "newest"})
    assert [row.case.pk for row in newest] == [waiting.pk, middle.pk, high.pk, low.pk]
    assert [r.case.pk for r in services.worklist(radiologist, {"priority": "high"})] == [high.pk]

    client.force_login(radiologist)
    page = client.get(reverse("reading:worklist")).content.decode()
    assert page.index("HIGH-1") < page.index("MID-1") < page.index("LOW-1")
    assert "ELSEWHERE-1" not in page
    assert f"Case {elsewhere.pk}<" not in page
    event = AuditEvent.objects.get(action="reading.worklist_viewed")
    assert set(event.after["cases"]) == {low.pk, high.pk, middle.pk, waiting.pk}


def test_site_operating_point_moves_the_priority(radiologist, owner, study, site):
    from apps.sites.models import SiteOperatingPoint

    case = study(owner, (0.3, 0.1, 0.6))
    prediction = case.images.get().predictions.get()
    before = services.priority_of(services.study_for(radiologist, case.pk))
    point = SiteOperatingPoint.objects.create(
        site=site,
        model_version=prediction.model_version,
        number=1,
        offsets={"covid19": 2.0, "pneumonia": 0.0, "normal": 0.0},
        target="covid19_sensitivity",
        goal=0.9,
        reached=True,
        n_images=10,
        active=True,
    )
    prediction.operating_point = point
    prediction.label = "covid19"
    prediction.save()
    after = services.priority_of(services.study_for(radiologist, case.pk))
    assert before.score is not None
    assert after.score is not None
    assert after.score > before.score
    assert after.high
    assert not before.high
    assert "site point" in after.reason


def test_status_filter_and_reading_status_follow_the_radiologist(client, radiologist, owner, study):
    case = study(owner)
    untouched = study(owner)
    client.force_login(radiologist)
    assert client.get(reverse("reading:study", args=[case.pk])).status_code == 200
    assert Reading.objects.get(case=case).status == ReadingStatus.IN_READING
    in_reading = services.worklist(radiologist, {"status": "in_reading"})
    assert [row.case.pk for row in in_reading] == [case.pk]
    assert [row.case.pk for row in services.worklist(radiologist, {"status": "new"})] == [
        untouched.pk
    ]
    assert AuditEvent.objects.filter(action="case.viewed", target_id=str(case.pk)).exists()


def test_a_radiologist_of_another_site_gets_404_everywhere(client, other_radiologist, owner, study):
    case = study(owner)
    image = case.images.get()
    client.force_login(other_radiologist)
    for url in (
        reverse("reading:study", args=[case.pk]),
        reverse("reading:report", args=[case.pk]),
        reverse("reading:image-file", args=[image.pk]),
        reverse("reading:values", args=[image.pk]),
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("reading:sign", args=[case.pk]), {}).status_code == 404
    assert client.get(f"/api/v1/reading/cases/{case.pk}/reports/").status_code in (401, 404)


def test_other_roles_cannot_open_the_worklist(client, owner):
    client.force_login(owner)
    assert client.get(reverse("reading:worklist")).status_code == 403


@pytest.mark.slow
def test_sign_amend_and_the_clinician_sees_the_report_and_its_pdf(
    client, radiologist, owner, study, django_capture_on_commit_callbacks
):
    case = study(owner, (0.7, 0.1, 0.2))
    client.force_login(radiologist)
    client.get(reverse("reading:study", args=[case.pk]))
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            reverse("reading:sign", args=[case.pk]),
            {"impression": "covid19", "text": "Bilateral GGO.", "urgency": "urgent"},
        )
    assert response.status_code == 302
    reading = Reading.objects.get(case=case)
    assert reading.status == ReadingStatus.REPORTED
    assert reading.upload_to_signed_seconds is not None
    assert reading.upload_to_signed_seconds >= 0
    # An amendment without a reason is refused; with one it adds version 2.
    client.post(reverse("reading:sign", args=[case.pk]), {"impression": "pneumonia"})
    assert Report.objects.filter(case=case).count() == 1
    client.post(
        reverse("reading:sign", args=[case.pk]),
        {"impression": "pneumonia", "urgency": "routine", "amendment_reason": "Second look."},
    )
    versions = list(Report.objects.filter(case=case).order_by("version"))
    assert [(r.version, r.impression) for r in versions] == [(1, "covid19"), (2, "pneumonia")]
    assert versions[0].text == "Bilateral GGO."  # history kept as signed
    assert AuditEvent.objects.filter(action="report.amended").count() == 1

    client.force_login(owner)
    page = client.get(reverse("reading:report", args=[case.pk])).content.decode()
    assert "Other pneumonia" in page
    assert "Second look." in page
    assert "Bilateral GGO." in page
    pdf = client.get(reverse("reading:report-pdf", args=[case.pk]))
    assert pdf.status_code == 200
    assert pdf["Content-Type"] == "application/pdf"
    assert b"".join(pdf.streaming_content if pdf.streaming else [pdf.content]).startswith(b"%PDF")


def test_another_clinician_does_not_see_the_report(client, radiologist, owner, study, site):
    from tests.reading.conftest import member

    case = study(owner)
    services.sign_report(actor=radiologist, case=case, impression="normal")
    stranger = member(site, username="dr-stranger", roles=["clinician"])
    client.force_login(stranger)
    assert client.get(reverse("reading:report", args=[case.pk])).status_code == 404


def test_the_report_enters_labelling_as_the_radiologists_verdict(radiologist, owner, study):
    case = study(owner, (0.7, 0.1, 0.2))
    image = case.images.get()
    _, verdicts = services.sign_report(actor=radiologist, case=case, impression="covid19")
    assert verdicts.entered == 1
    label = ExpertLabel.objects.get(image=image)
    assert (label.annotator_id, label.label) == (radiologist.pk, "covid19")
    # An amendment revises the same reader's verdict; "other finding" is no class.
    services.sign_report(
        actor=radiologist, case=case, impression="normal", amendment_reason="Artefact."
    )
    assert ExpertLabel.objects.get(image=image).label == "normal"
    other = study(owner)
    _, skipped = services.sign_report(actor=radiologist, case=other, impression="other")
    assert skipped.entered == 0
    assert not ExpertLabel.objects.filter(image__case=other).exists()


def test_upload_to_signed_is_a_metric(
    radiologist, owner, study, django_capture_on_commit_callbacks
):
    from prometheus_client import REGISTRY

    def count() -> float:
        value = REGISTRY.get_sample_value(
            "cxr_reading_upload_to_signed_seconds_count", {"modality": "xray"}
        )
        return value or 0.0

    case = study(owner)
    before = count()
    with django_capture_on_commit_callbacks(execute=True):
        services.sign_report(actor=radiologist, case=case, impression="normal")
    with django_capture_on_commit_callbacks(execute=True):
        services.sign_report(
            actor=radiologist, case=case, impression="normal", amendment_reason="typo"
        )
    assert count() == before + 1  # the first signature only


def test_unknown_impression_is_refused(radiologist, owner, study):
    case = study(owner)
    with pytest.raises(services.ReportRefused):
        services.sign_report(actor=radiologist, case=case, impression="maybe")
    assert not Report.objects.filter(case=case).exists()


def test_the_viewer_gets_the_heatmap_of_its_sites_studies_only(
    client, radiologist, other_radiologist, owner, study
):
    from tests.factories import ExplanationFactory

    case = study(owner)
    explanation = ExplanationFactory(image=case.images.get())
    url = reverse("reading:heat-layer", args=[explanation.pk])
    client.force_login(radiologist)
    page = client.get(reverse("reading:study", args=[case.pk])).content.decode()
    assert url in page  # the viewer's sources name it
    layer = client.get(url)
    assert layer.status_code == 200
    assert layer.content.startswith(b"\x89PNG")
    # The study page's view event named it: its fetch writes no event of its own.
    assert not AuditEvent.objects.filter(action="download.heatmap_layer").exists()
    client.force_login(other_radiologist)
    assert client.get(url).status_code == 404


def test_a_radiologists_home_page_leads_to_the_worklist(client, radiologist):
    client.force_login(radiologist)
    page = client.get(reverse("home")).content.decode()
    assert reverse("reading:worklist") in page
    assert "no role" not in page


def test_the_clinicians_case_page_links_the_signed_report(client, radiologist, owner, study):
    case = study(owner)
    client.force_login(owner)
    page = client.get(reverse("cases:detail", args=[case.pk])).content.decode()
    assert "data-radiology-report" not in page
    services.sign_report(actor=radiologist, case=case, impression="pneumonia")
    page = client.get(reverse("cases:detail", args=[case.pk])).content.decode()
    assert "Other pneumonia" in page
    assert reverse("reading:report", args=[case.pk]) in page
