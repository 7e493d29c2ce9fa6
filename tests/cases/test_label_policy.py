"""The label agreement policy is a setting in the database that model admins change on
the web (audited), not only an environment variable: with adjudication chosen there, a
disagreement goes to the adjudicator."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.cases import labelling
from apps.cases.access import image_ref
from apps.cases.models import CaseImage, LabelPolicy
from tests.factories import PredictionFactory, UserFactory

pytestmark = pytest.mark.django_db

URL = reverse("cases:label-policy")


@pytest.fixture
def environment_policy(settings):
    """What the environment says: one reader confirms alone (the default)."""
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "unanimous", 1


@pytest.fixture
def model_admin_user():
    return UserFactory(username="admin-of-models", roles=["model_admin"])


def _readers(n: int) -> list:
    return [UserFactory(username=f"reader-{i}", roles=["annotator"]) for i in range(n)]


def test_without_a_row_the_environment_decides(environment_policy, settings):
    policy = labelling.current_policy()
    assert (policy.name, policy.readers, policy.source) == ("unanimous", 1, "environment")
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "majority", 3
    assert (labelling.current_policy().name, labelling.current_policy().readers) == (
        "majority",
        3,
    )


def test_model_admin_changes_the_policy_on_the_page_audited(
    client, environment_policy, model_admin_user
):
    client.force_login(model_admin_user)
    page = client.get(URL)
    assert page.status_code == 200
    html = page.content.decode()
    assert 'data-policy="unanimous"' in html
    assert "from the environment" in html

    response = client.post(URL, {"policy": "majority", "readers": "3"})
    assert response.status_code == 302
    row = LabelPolicy.objects.get()
    assert (row.policy, row.readers, row.updated_by) == ("majority", 3, model_admin_user)
    assert (labelling.current_policy().name, labelling.current_policy().readers) == (
        "majority",
        3,
    )
    event = AuditEvent.objects.get(action="labels.policy")
    assert event.actor == model_admin_user
    assert event.before == {"policy": "unanimous", "readers": 1, "source": "environment"}
    assert event.after == {"policy": "majority", "readers": 3}
    html = client.get(URL).content.decode()
    assert 'data-policy="majority"' in html
    assert "set here by admin-of-models" in html

    # A second change is audited with the first as its "before".
    client.post(URL, {"policy": "adjudication", "readers": "2"})
    latest = AuditEvent.objects.filter(action="labels.policy").order_by("-pk").first()
    assert latest is not None
    assert latest.before == {"policy": "majority", "readers": 3, "source": "web"}
    assert latest.after == {"policy": "adjudication", "readers": 2}
    assert LabelPolicy.objects.count() == 1


@pytest.mark.parametrize("role", ["clinician", "annotator", "adjudicator", "site_admin"])
def test_only_model_admins_open_or_change_the_policy(client, role, environment_policy):
    client.force_login(UserFactory(roles=[role]))
    assert client.get(URL).status_code == 403
    assert client.post(URL, {"policy": "adjudication", "readers": "2"}).status_code == 403
    assert not LabelPolicy.objects.exists()
    assert not AuditEvent.objects.filter(action="labels.policy").exists()
    assert labelling.current_policy().name == "unanimous"


def test_anonymous_goes_to_the_login_page(client):
    response = client.post(URL, {"policy": "adjudication", "readers": "2"})
    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))
    assert not LabelPolicy.objects.exists()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"policy": "vote", "readers": "2"}, "Unknown policy &#x27;vote&#x27;"),
        ({"policy": "", "readers": "2"}, "Unknown policy"),
        ({"policy": "majority", "readers": "0"}, "0 is out of range"),
        ({"policy": "majority", "readers": "11"}, "11 is out of range"),
        ({"policy": "majority", "readers": "two"}, "must be a whole number from 1 to 10"),
        ({"policy": "majority"}, "must be a whole number"),
    ],
)
def test_invalid_input_is_refused_with_a_reason_and_nothing_is_written(
    client, environment_policy, model_admin_user, data, message
):
    client.force_login(model_admin_user)
    response = client.post(URL, data)
    assert response.status_code == 400
    html = response.content.decode()
    assert message in html
    assert "Nothing was changed." in html
    assert not LabelPolicy.objects.exists()
    assert not AuditEvent.objects.filter(action="labels.policy").exists()
    assert labelling.current_policy().source == "environment"


def test_an_invalid_change_keeps_the_policy_set_before(model_admin_user, environment_policy):
    labelling.set_policy(actor=model_admin_user, policy="majority", readers=3)
    with pytest.raises(labelling.PolicyRejected):
        labelling.set_policy(actor=model_admin_user, policy="adjudication", readers=42)
    row = LabelPolicy.objects.get()
    assert (row.policy, row.readers) == ("majority", 3)
    assert AuditEvent.objects.filter(action="labels.policy").count() == 1


def test_adjudication_chosen_on_the_web_sends_a_disagreement_to_the_adjudicator(
    client, environment_policy, model_admin_user
):
    image: CaseImage = PredictionFactory().image
    adjudicator = UserFactory(username="senior", roles=["adjudicator"])
    a, b = _readers(2)

    # Before: the environment's policy; the adjudicator is told who can change it.
    client.force_login(adjudicator)
    hint = client.get(reverse("cases:adjudication")).content.decode()
    assert 'data-policy="unanimous"' in hint
    assert "CXR_LABEL_POLICY" not in hint
    assert "Ask a model admin to choose adjudication" in hint
    # A model admin reaches the settings page from the reader agreement page.
    client.force_login(model_admin_user)
    assert client.get(reverse("cases:agreement")).status_code == 200
    assert f'href="{URL}"' in client.get(reverse("cases:agreement")).content.decode()

    assert client.post(URL, {"policy": "adjudication", "readers": "2"}).status_code == 302

    labelling.submit_label(image=image, annotator=a, label="pneumonia", note="right base")
    labelling.submit_label(image=image, annotator=b, label="normal")
    image.refresh_from_db()
    assert image.confirmed_label == ""  # disputed: not confirmed by either reader
    assert list(labelling.disagreements()) == [image]

    client.force_login(adjudicator)
    listing = client.get(reverse("cases:adjudication")).content.decode()
    assert f'data-image="{image_ref(image)}"' in listing
    response = client.post(
        reverse("cases:adjudicate", args=[image_ref(image)]),
        {"label": "pneumonia", "note": "agreed"},
    )
    assert response.status_code == 302
    image.refresh_from_db()
    assert image.confirmed_label == "pneumonia"
    assert AuditEvent.objects.get(action="label.adjudicate").actor == adjudicator
    assert list(labelling.disagreements()) == []


def test_one_reader_confirms_alone_until_the_policy_asks_for_two(
    environment_policy, model_admin_user
):
    first, second = PredictionFactory().image, PredictionFactory().image
    (reader,) = _readers(1)
    labelling.submit_label(image=first, annotator=reader, label="normal")
    first.refresh_from_db()
    assert first.confirmed_label == "normal"
    labelling.set_policy(actor=model_admin_user, policy="unanimous", readers=2)
    labelling.submit_label(image=second, annotator=reader, label="normal")
    second.refresh_from_db()
    assert second.confirmed_label == ""  # one of the two readers now asked for
    first.refresh_from_db()
    assert first.confirmed_label == "normal"  # confirmed before: it stays


def test_snapshots_and_statistics_state_the_policy_in_force(environment_policy, model_admin_user):
    from apps.cases import agreement
    from apps.cases.provenance import label_provenance

    image = PredictionFactory().image
    labelling.set_policy(actor=model_admin_user, policy="majority", readers=3)
    record = label_provenance(image)
    assert (record["policy"], record["readers_required"]) == ("majority", 3)
    stats = agreement.compute(resamples=100)
    assert (stats.policy, stats.readers_needed) == ("majority", 3)
