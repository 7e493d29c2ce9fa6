"""The audit trail a hospital auditor asks for, and the audit log page.

Log-ins and failed log-ins, case creation, explanation requests, every download of an
image, lung mask or outline, overlay, heatmap layer or raw heatmap (web and API), no edits
of cases and labels in the Django admin, and a model admin's audit log page with filters
and a CSV export. Token issue/revoke and lockouts: tests/api/test_tokens.py,
tests/accounts/test_lockout.py.
"""

from __future__ import annotations

import csv
import io
from datetime import timedelta

import pytest
from django.contrib.auth.models import User
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from apps.accounts.models import AuditEvent
from apps.cases import services as case_services
from apps.cases.models import Case, ExpertLabel
from apps.explain import services as explain_services
from apps.explain.models import Explanation
from tests.conftest import upload_of
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db


def _actions(**filters) -> list[str]:
    return list(
        AuditEvent.objects.filter(**filters).order_by("pk").values_list("action", flat=True)
    )


# --- log-ins --------------------------------------------------------------------------------


def test_web_log_in_log_out_and_a_failed_log_in_are_audited(client, clinician):
    bad = client.post(reverse("login"), {"username": clinician.username, "password": "wrong"})
    assert bad.status_code == 200  # the form again, with its error
    failed = AuditEvent.objects.get(action="auth.login_failed")
    assert failed.actor is None
    assert failed.target_id == str(clinician.pk)
    assert failed.after["username"] == clinician.username
    assert failed.after["address"] == "127.0.0.1"
    assert failed.after["via"] == "web"
    assert "wrong" not in str(failed.after)  # never the password

    good = client.post(reverse("login"), {"username": clinician.username, "password": PASSWORD})
    assert good.status_code == 302
    login = AuditEvent.objects.get(action="auth.login")
    assert (login.actor, login.target_id) == (clinician, str(clinician.pk))
    client.post(reverse("logout"))
    assert _actions(actor=clinician) == ["auth.login", "auth.logout"]


def test_failed_log_ins_for_unknown_users_and_at_the_admin_and_token_endpoint(client):
    client.post(reverse("admin-login"), {"username": "nobody", "password": "x"})
    APIClient().post("/api/v1/auth/token/", {"username": "ghost", "password": "x"}, format="json")
    events = AuditEvent.objects.filter(action="auth.login_failed").order_by("pk")
    assert [(e.after["username"], e.after["via"], e.target_id) for e in events] == [
        ("nobody", "web", ""),
        ("ghost", "api", ""),
    ]


# --- case creation and explanation requests -------------------------------------------------


@pytest.mark.slow
def test_case_creation_is_audited_without_file_names_or_patient_reference(clinician):
    case = case_services.create_case(
        owner=clinician,
        files=[upload_of("2168a917.jpg", content=None)],
        patient_ref="DOE-JOHN-4711",
    )
    event = AuditEvent.objects.get(action="case.create")
    assert event.actor == clinician
    assert (event.target_type, event.target_id) == ("cases.Case", str(case.pk))
    assert event.after["images"] == [case.images.get().pk]
    assert event.after["formats"] == ["jpeg"]
    assert len(event.after["uploads"]) == 1
    assert "2168a917" not in str(event.after)
    assert "DOE-JOHN" not in str(event.after)


def test_a_refused_upload_creates_no_case_event(clinician):
    from apps.cases.validation import UploadRejected

    with pytest.raises(UploadRejected):
        case_services.create_case(owner=clinician, files=[upload_of("x.png", content=b"no")])
    assert not AuditEvent.objects.filter(action="case.create").exists()
    assert not Case.objects.exists()


@pytest.fixture
def predicted_image(clinician, production_model):
    from apps.cases.models import Prediction
    from cxrplatform.jobs import run_job_now

    case = case_services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")])
    prediction = Prediction.objects.get(image__case=case)
    run_job_now(Prediction, prediction.pk)
    return prediction.image


@pytest.mark.slow
def test_every_explanation_request_by_a_user_is_audited(clinician, predicted_image):
    first = explain_services.request_explanation(
        image=predicted_image, method="occlusion", requested_by=clinician
    )
    again = explain_services.request_explanation(
        image=predicted_image, method="occlusion", requested_by=clinician
    )
    assert again == first
    events = AuditEvent.objects.filter(action="explanation.request").order_by("pk")
    assert [(e.actor, e.target_id, e.after["method"], e.after["queued"]) for e in events] == [
        (clinician, str(first.pk), "occlusion", True),
        (clinician, str(first.pk), "occlusion", False),
    ]
    # The automatic Grad-CAM after each prediction is the system's, not a request.
    explain_services.request_explanation(image=predicted_image, method="gradcam")
    assert events.count() == 2


# --- downloads ------------------------------------------------------------------------------


@pytest.fixture
def explained_image(predicted_image):
    from cxrplatform.jobs import run_job_now

    explanation = explain_services.request_explanation(image=predicted_image, method="gradcam")
    if explanation.status != Explanation.Status.DONE:
        run_job_now(Explanation, explanation.pk)
    explanation.refresh_from_db()
    assert explanation.status == Explanation.Status.DONE
    return predicted_image, explanation


def _downloads():
    return list(
        AuditEvent.objects.filter(action__startswith="download.")
        .order_by("pk")
        .values_list("action", "target_type", "target_id", "after__via")
    )


@pytest.mark.slow
def test_every_web_download_of_patient_data_is_audited(client, clinician, explained_image):
    from apps.cases.lungs import lung_prediction

    image, explanation = explained_image
    lungs = lung_prediction(image)
    client.force_login(clinician)
    urls = [
        reverse("cases:image-file", args=[image.pk]),
        reverse("explain:overlay", args=[explanation.pk]),
        reverse("explain:layer", args=[explanation.pk]),
        reverse("explain:heatmap", args=[explanation.pk]),
    ]
    if lungs is not None:
        urls += [
            reverse("cases:lung-file", args=[image.pk, "mask"]),
            reverse("cases:lung-file", args=[image.pk, "outline"]),
        ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 200, url
        if response.streaming:
            b"".join(response.streaming_content)
    expected = [
        ("download.image", "cases.CaseImage", str(image.pk), "web"),
        ("download.overlay", "explain.Explanation", str(explanation.pk), "web"),
        ("download.heatmap_layer", "explain.Explanation", str(explanation.pk), "web"),
        ("download.heatmap", "explain.Explanation", str(explanation.pk), "web"),
    ]
    if lungs is not None:
        expected += [
            ("download.lung_mask", "cases.Prediction", str(lungs.pk), "web"),
            ("download.lung_outline", "cases.Prediction", str(lungs.pk), "web"),
        ]
    assert _downloads() == expected
    assert set(
        AuditEvent.objects.filter(action__startswith="download.").values_list("actor", flat=True)
    ) == {clinician.pk}


def _api_as(user) -> APIClient:
    from knox.models import AuthToken

    client = APIClient()
    _, token = AuthToken.objects.create(user=user)  # a fixture's token, not an audited issue
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client


@pytest.mark.slow
def test_every_api_download_is_audited_and_a_refused_one_is_not(clinician, explained_image):
    image, explanation = explained_image
    client = _api_as(clinician)
    for url in (
        f"/api/v1/images/{image.pk}/file/",
        f"/api/v1/explanations/{explanation.pk}/overlay/",
        f"/api/v1/explanations/{explanation.pk}/heatmap/",
    ):
        response = client.get(url)
        assert response.status_code == 200, url
    stranger = _api_as(UserFactory(roles=["clinician"]))
    assert stranger.get(f"/api/v1/images/{image.pk}/file/").status_code == 404
    assert _downloads() == [
        ("download.image", "cases.CaseImage", str(image.pk), "api"),
        ("download.overlay", "explain.Explanation", str(explanation.pk), "api"),
        ("download.heatmap", "explain.Explanation", str(explanation.pk), "api"),
    ]


# --- the Django admin cannot change cases or labels -----------------------------------------


@pytest.mark.slow
def test_admin_shows_cases_and_labels_but_cannot_change_or_delete_them(
    client, clinician, annotator, predicted_image
):
    superuser = User.objects.create_superuser("root", "root@example.org", PASSWORD)
    label = ExpertLabel.objects.create(image=predicted_image, annotator=annotator, label="normal")
    case = predicted_image.case
    client.force_login(superuser)
    for model, obj in (("case", case), ("expertlabel", label), ("prediction", None)):
        listing = client.get(reverse(f"admin:cases_{model}_changelist"))
        assert listing.status_code == 200
        if obj is None:
            continue
        page = client.get(reverse(f"admin:cases_{model}_change", args=[obj.pk]))
        assert page.status_code == 200
        assert b'type="submit"' not in page.content.split(b'id="content-main"')[1]
        posted = client.post(reverse(f"admin:cases_{model}_change", args=[obj.pk]), {})
        assert posted.status_code == 403
        deleted = client.post(
            reverse(f"admin:cases_{model}_delete", args=[obj.pk]), {"post": "yes"}
        )
        assert deleted.status_code == 403
    assert client.get(reverse("admin:cases_case_add")).status_code == 403
    label.refresh_from_db()
    assert label.label == "normal"
    assert Case.objects.filter(pk=case.pk).exists()


# --- the audit log page ---------------------------------------------------------------------


@pytest.fixture
def trail(clinician, annotator):
    """Events of two actors, on three days."""
    now = timezone.now()
    rows = [
        (clinician, "case.create", now - timedelta(days=2)),
        (annotator, "download.image", now - timedelta(days=1)),
        (clinician, "download.overlay", now - timedelta(days=1)),
        (None, "auth.login_failed", now),
    ]
    events = []
    for actor, action, at in rows:
        event = AuditEvent.objects.create(
            actor=actor, action=action, target_type="cases.Case", target_id="7",
            after={"username": "=cmd|' /C calc'!A0"} if actor is None else {},
        )  # fmt: skip
        AuditEvent.objects.filter(pk=event.pk).update(at=at)
        events.append(event)
    return events


def test_only_model_admins_read_the_audit_log(client, clinician, annotator, model_admin):
    url = reverse("audit-log")
    assert client.get(url).status_code == 302  # to the log-in page
    for user in (clinician, annotator):
        client.force_login(user)
        assert client.get(url).status_code == 403
    client.force_login(model_admin)
    assert client.get(url).status_code == 200


def _rows(response) -> list[str]:
    import re

    return re.findall(r'data-event="(\d+)"', response.content.decode())


def test_the_audit_log_filters_by_actor_action_and_date(client, model_admin, clinician, trail):
    client.force_login(model_admin)
    url = reverse("audit-log")
    login = AuditEvent.objects.get(action="auth.login", actor=model_admin)
    newest_first = [str(login.pk)] + [str(e.pk) for e in reversed(trail)]
    assert _rows(client.get(url)) == newest_first
    assert _rows(client.get(url, {"actor": clinician.username})) == [
        str(trail[2].pk),
        str(trail[0].pk),
    ]
    assert _rows(client.get(url, {"actor": "system"})) == [str(trail[3].pk)]
    # An exact action, or a group of them by its prefix.
    assert _rows(client.get(url, {"action": "download.image"})) == [str(trail[1].pk)]
    assert _rows(client.get(url, {"action": "download"})) == [str(trail[2].pk), str(trail[1].pk)]
    yesterday = (timezone.now() - timedelta(days=1)).date().isoformat()
    assert _rows(client.get(url, {"since": yesterday, "until": yesterday})) == [
        str(trail[2].pk),
        str(trail[1].pk),
    ]
    refused = client.get(url, {"since": "yesterday"})
    assert refused.status_code == 400
    assert "Enter a valid date" in refused.content.decode()


def test_the_audit_log_exports_the_filtered_events_as_csv(client, model_admin, trail):
    # Usernames may start with + - @, which a spreadsheet would run as a formula.
    plus = User.objects.create_user("+1+cmd")
    AuditEvent.objects.create(actor=plus, action="auth.logout", target_type="x", target_id="")
    client.force_login(model_admin)
    response = client.get(reverse("audit-log"), {"action": "auth", "format": "csv"})
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    assert "no-store" in response["Cache-Control"]
    body = b"".join(response.streaming_content).decode()
    rows = list(csv.reader(io.StringIO(body)))
    assert rows[0] == ["at", "actor", "action", "target_type", "target_id", "before", "after"]
    # The "auth" group, newest first: the model admin's own log-in, the log-out, then the
    # trail's failed log-in; a cell a spreadsheet would run as a formula is text ('+...).
    assert [(row[1], row[2]) for row in rows[1:]] == [
        (model_admin.username, "auth.login"),
        ("'+1+cmd", "auth.logout"),
        ("", "auth.login_failed"),  # the system: no actor
    ]
    assert '"username": "=cmd' in rows[3][6]  # inside a JSON object: not a formula
    export = AuditEvent.objects.get(action="audit.export")
    assert export.actor == model_admin
    assert export.after["filters"] == {"action": "auth"}
    assert export.after["rows"] == 3
    refused = client.get(reverse("audit-log"), {"until": "13/13/2026", "format": "csv"})
    assert refused.status_code == 400
