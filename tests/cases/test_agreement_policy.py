"""Agreement policies (unanimous, majority of k readers, adjudication), revising a
verdict from the web, a third reading, and a labelling page that does not anchor
the reader on the model's answer."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.cases import labelling
from apps.cases.access import image_ref
from apps.cases.models import Adjudication, CaseImage, ExpertLabel
from tests.factories import PredictionFactory, UserFactory
from tests.test_settings_env import _import_settings

pytestmark = pytest.mark.django_db


def _readers(n: int) -> list:
    return [UserFactory(username=f"reader-{i}", roles=["annotator"]) for i in range(n)]


@pytest.fixture
def image() -> CaseImage:
    # The model says "normal" (0.7): the largest of the factory's probabilities.
    return PredictionFactory().image


@pytest.fixture
def adjudicator():
    return UserFactory(username="senior", roles=["adjudicator"])


def _confirmed(image: CaseImage) -> str:
    image.refresh_from_db()
    return image.confirmed_label


# -- policies ---------------------------------------------------------------------


def test_unanimous_policy_never_confirms_a_disputed_image_on_a_third_reading(image, settings):
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "unanimous", 2
    a, b, c = _readers(3)
    labelling.submit_label(image=image, annotator=a, label="pneumonia")
    labelling.submit_label(image=image, annotator=b, label="covid19")
    assert list(labelling.disagreements()) == [image]
    assert labelling.labelling_queue(annotator=c)[0] == image  # a third reading is offered
    labelling.submit_label(image=image, annotator=c, label="pneumonia")
    assert _confirmed(image) == ""


def test_majority_policy_waits_for_k_readers_then_a_third_reading_breaks_the_tie(image, settings):
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "majority", 2
    a, b, c = _readers(3)
    labelling.submit_label(image=image, annotator=a, label="pneumonia")
    assert _confirmed(image) == ""  # one reader of two
    assert list(labelling.disagreements()) == []
    labelling.submit_label(image=image, annotator=b, label="covid19")
    assert _confirmed(image) == ""
    assert list(labelling.disagreements()) == [image]  # k readers, no majority
    assert labelling.labelling_queue(annotator=c) == [image]
    labelling.submit_label(image=image, annotator=c, label="pneumonia")
    assert _confirmed(image) == "pneumonia"  # 2 of 3
    assert list(labelling.disagreements()) == []


def test_majority_of_three_confirms_two_against_one(image, settings):
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "majority", 3
    a, b, c = _readers(3)
    labelling.submit_label(image=image, annotator=a, label="normal")
    labelling.submit_label(image=image, annotator=b, label="normal")
    assert _confirmed(image) == ""  # two readings of the three the policy asks for
    labelling.submit_label(image=image, annotator=c, label="unusable")
    assert _confirmed(image) == "normal"


def test_adjudicator_sees_all_verdicts_with_notes_and_decides_audited(
    image, settings, client, adjudicator
):
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "adjudication", 2
    a, b = _readers(2)
    labelling.submit_label(image=image, annotator=a, label="pneumonia", note="left lower lobe")
    labelling.submit_label(image=image, annotator=b, label="covid19", note="bilateral GGO")
    assert _confirmed(image) == ""

    client.force_login(adjudicator)
    listing = client.get(reverse("cases:adjudication"))
    assert listing.status_code == 200
    assert f'data-image="{image_ref(image)}"' in listing.content.decode()
    page = client.get(reverse("cases:adjudicate", args=[image_ref(image)])).content.decode()
    for text in ("reader-0", "reader-1", "left lower lobe", "bilateral GGO"):
        assert text in page
    assert "Model says" not in page  # the adjudicator is blind to the model too

    response = client.post(
        reverse("cases:adjudicate", args=[image_ref(image)]),
        {"label": "covid19", "note": "GGO pattern typical"},
    )
    assert response.status_code == 302
    assert _confirmed(image) == "covid19"
    decision = Adjudication.objects.get(image=image)
    assert (decision.adjudicator, decision.label) == (adjudicator, "covid19")
    event = AuditEvent.objects.get(action="label.adjudicate")
    assert event.actor == adjudicator
    assert event.after["label"] == "covid19"
    assert {v["label"] for v in event.before["verdicts"]} == {"pneumonia", "covid19"}
    # Each verdict's note as its length and keyed hash, never its text.
    assert {v["note_chars"] for v in event.before["verdicts"]} == {15, 13}
    assert "left lower lobe" not in str(event.before)
    assert list(labelling.disagreements()) == []
    # The readers' verdicts stay as given, and can no longer change.
    assert ExpertLabel.objects.get(image=image, annotator=a).label == "pneumonia"
    with pytest.raises(labelling.LabelRejected, match="adjudicated"):
        labelling.submit_label(image=image, annotator=a, label="covid19")


def test_adjudication_is_refused_with_a_clear_reason(image, settings, adjudicator):
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "adjudication", 2
    a, b = _readers(2)
    labelling.submit_label(image=image, annotator=a, label="pneumonia")
    with pytest.raises(labelling.LabelRejected, match="not disputed"):
        labelling.adjudicate(image=image, adjudicator=adjudicator, label="pneumonia")
    labelling.submit_label(image=image, annotator=b, label="normal")
    with pytest.raises(labelling.LabelRejected, match="Unknown label"):
        labelling.adjudicate(image=image, adjudicator=adjudicator, label="flu")
    with pytest.raises(labelling.LabelRejected, match="as a reader"):
        labelling.adjudicate(image=image, adjudicator=a, label="normal")
    settings.CXR_LABEL_POLICY = "majority"
    with pytest.raises(labelling.LabelRejected, match="policy is majority"):
        labelling.adjudicate(image=image, adjudicator=adjudicator, label="normal")
    assert not Adjudication.objects.exists()
    assert not AuditEvent.objects.filter(action="label.adjudicate").exists()
    assert _confirmed(image) == ""


def test_only_adjudicators_open_the_adjudication_pages(image, client, settings):
    settings.CXR_LABEL_POLICY = "adjudication"
    for role in ("annotator", "model_admin", "clinician"):
        client.force_login(UserFactory(roles=[role]))
        assert client.get(reverse("cases:adjudication")).status_code == 403
        assert (
            client.post(
                reverse("cases:adjudicate", args=[image_ref(image)]), {"label": "normal"}
            ).status_code
            == 403
        )


def test_a_note_longer_than_the_limit_is_refused_and_nothing_is_written(image):
    (reader,) = _readers(1)
    with pytest.raises(labelling.LabelRejected, match="at most 2000"):
        labelling.submit_label(image=image, annotator=reader, label="normal", note="x" * 2001)
    assert not ExpertLabel.objects.exists()
    assert _confirmed(image) == ""


@pytest.mark.parametrize("value", ["unanimity", "vote", "2"])
@pytest.mark.slow
def test_an_unknown_policy_stops_the_process_with_a_message(tmp_path, value):
    result = _import_settings(DEBUG="1", CXR_VAR_DIR=str(tmp_path), CXR_LABEL_POLICY=value)
    assert result.returncode != 0
    assert "CXR_LABEL_POLICY" in result.stderr
    assert "unanimous, majority or adjudication" in result.stderr


# -- revising from the web ---------------------------------------------------------


def test_reader_revises_own_verdict_from_the_web(image, client, settings):
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "unanimous", 1
    (reader,) = _readers(1)
    client.force_login(reader)
    client.post(reverse("cases:label", args=[image_ref(image)]), {"label": "pneumonia"})
    assert _confirmed(image) == "pneumonia"
    mine = client.get(reverse("cases:my-verdicts")).content.decode()
    assert reverse("cases:label", args=[image_ref(image)]) in mine
    page = client.get(reverse("cases:label", args=[image_ref(image)])).content.decode()
    assert 'data-your-verdict="pneumonia"' in page
    response = client.post(
        reverse("cases:label", args=[image_ref(image)]),
        {"label": "normal", "note": "second look", "from": "review"},
    )
    assert response.status_code == 302
    assert response.url == reverse("cases:label", args=[image_ref(image)])
    assert ExpertLabel.objects.get(image=image, annotator=reader).label == "normal"
    assert _confirmed(image) == "normal"
    change = AuditEvent.objects.get(action="label.change")
    assert (change.before["label"], change.after["label"]) == ("pneumonia", "normal")


# -- anchoring ----------------------------------------------------------------------


def _buttons(html: str) -> str:
    return html[html.index('id="label-form"') :]


def test_queue_does_not_show_or_preselect_the_model_answer_by_default(image, client, settings):
    assert settings.CXR_LABEL_SHOW_MODEL is False
    (reader,) = _readers(1)
    client.force_login(reader)
    html = client.get(reverse("cases:label-queue")).content.decode()
    assert f'data-image="{image_ref(image)}"' in html
    assert "Model says" not in html
    assert "Confirm:" not in html
    assert 'class="primary"' not in _buttons(html)
    assert "Class probabilities" not in html
    assert "<script>" not in html  # the keyboard shortcuts are a static file (CSP)
    assert re.search(r'<script src="[^"]*js/labelling\.js"', html)
    # Without the setting, the review page after an answer does not show it either.
    client.post(reverse("cases:label", args=[image_ref(image)]), {"label": "pneumonia"})
    assert (
        "Model says"
        not in client.get(reverse("cases:label", args=[image_ref(image)])).content.decode()
    )


def test_setting_shows_the_model_only_after_the_first_answer(image, client, settings):
    settings.CXR_LABEL_SHOW_MODEL = True
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "unanimous", 2
    (reader,) = _readers(1)
    client.force_login(reader)
    before = client.get(reverse("cases:label", args=[image_ref(image)])).content.decode()
    assert "Model says" not in before
    assert "Model says" not in client.get(reverse("cases:label-queue")).content.decode()
    response = client.post(reverse("cases:label", args=[image_ref(image)]), {"label": "pneumonia"})
    assert response.url == reverse(
        "cases:label", args=[image_ref(image)]
    )  # to see the model's answer
    after = client.get(response.url).content.decode()
    assert "Model says" in after
    assert 'data-label="normal"' in after
    assert 'data-your-verdict="pneumonia"' in after
    # The first answer was recorded before the model was shown.
    assert AuditEvent.objects.get(action="label.create").after["label"] == "pneumonia"


def test_api_answers_409_for_a_verdict_on_an_adjudicated_image(image, settings, adjudicator):
    from rest_framework.test import APIClient

    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "adjudication", 2
    a, b, c = _readers(3)
    labelling.submit_label(image=image, annotator=a, label="pneumonia")
    labelling.submit_label(image=image, annotator=b, label="normal")
    labelling.adjudicate(image=image, adjudicator=adjudicator, label="normal")
    api = APIClient()
    api.force_authenticate(c)
    url = f"/api/v1/labelling/images/{image_ref(image)}/labels/"
    response = api.post(url, {"label": "covid19"}, format="json")
    assert response.status_code == 409
    assert "adjudicated" in response.json()["error"]["message"]
    assert not ExpertLabel.objects.filter(annotator=c).exists()
    assert _confirmed(image) == "normal"
