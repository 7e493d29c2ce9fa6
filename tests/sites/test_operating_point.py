"""A site operating point: proposed from the site's confirmed labels for a target, applied
for that site only (the real prediction path labels that site's new predictions at it and
no other site's), audited, numbered, rolled back; bad input writes nothing."""

from __future__ import annotations

import numpy as np
import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.cases import services as cases
from apps.cases.models import Prediction
from apps.sites import services
from apps.sites.models import SiteOperatingPoint
from cxrplatform.jobs import run_job_now
from ml.models.local_validation import labels_at
from tests.conftest import upload_of

# At site A the model calls COVID-19 images normal: their COVID-19 probability is low but
# far above a true normal's. Only a normal offset of -2 (the grid's end) finds every one
# of them (ln(0.13 / 0.85) = -1.88), and the normals stay normal there.
MISSED_COVID = [("covid19", (0.13, 0.02, 0.85))] * 8
CLEAR_NORMAL = [("normal", (0.01, 0.01, 0.98))] * 8
CLASSES = ["covid19", "pneumonia", "normal"]


@pytest.fixture(autouse=True)
def _fewer_resamples(monkeypatch):
    monkeypatch.setattr(services, "N_BOOTSTRAP", 100)


@pytest.fixture
def labelled_a(site_a, clinician_a, version, labelled):
    return labelled(clinician_a, version, MISSED_COVID + CLEAR_NORMAL)


def _post(client, site, version, **data):
    url = reverse("sites:operating-point", args=[site.pk, version.pk])
    return client.post(url, data)


def _nothing_written() -> bool:
    return (
        not SiteOperatingPoint.objects.exists()
        and not AuditEvent.objects.filter(action__startswith="site.point").exists()
    )


@pytest.mark.slow
def test_a_proposal_reaches_the_target_and_writes_nothing(site_a, version, labelled_a):
    proposal = services.propose(
        site=site_a, version=version, target="covid19_sensitivity", goal=0.9
    )
    assert proposal.reached
    assert proposal.offsets == {"covid19": 0.0, "pneumonia": 0.0, "normal": -2.0}
    assert proposal.figure.value == 1.0
    assert proposal.validation.figures["normal_called_normal"].value == 1.0
    assert _nothing_written()


@pytest.mark.slow
def test_apply_then_roll_back_through_the_page_is_numbered_and_audited(
    client, site_a, version, labelled_a, model_admin
):
    client.force_login(model_admin)
    proposed = _post(
        client, site_a, version, action="propose", target="covid19_sensitivity", goal="0.9"
    )
    assert proposed.status_code == 200
    page = proposed.content.decode()
    assert 'data-reached="yes"' in page
    assert 'name="offset-normal" value="-2.0"' in page
    assert _nothing_written()

    applied = _post(
        client, site_a, version, action="apply", target="covid19_sensitivity", goal="0.9",
        **{"offset-covid19": "0.0", "offset-pneumonia": "0.0", "offset-normal": "-2.0"},
    )  # fmt: skip
    assert applied.status_code == 302
    first = services.active_point(site_a, version)
    assert first is not None
    assert (first.number, first.previous, first.created_by) == (1, None, model_admin)
    assert first.offsets["normal"] == -2.0
    assert first.figures["figure"]["value"] == 1.0
    event = AuditEvent.objects.get(action="site.point_applied")
    assert event.actor == model_admin
    assert event.target_id == str(first.pk)
    assert event.before == {"point": None, "offsets": None}
    assert event.after["site"] == site_a.pk
    assert event.after["offsets"]["normal"] == -2.0

    # A second point for another target replaces the first and remembers it.
    _post(client, site_a, version, action="apply", target="normal_called_normal", goal="0.9")
    second = services.active_point(site_a, version)
    assert second is not None
    assert second.number == 2
    assert second.previous == first
    first.refresh_from_db()
    assert not first.active

    rolled = _post(client, site_a, version, action="rollback")
    assert rolled.status_code == 302
    assert services.active_point(site_a, version) == first
    second.refresh_from_db()
    assert second.rolled_back_at is not None
    assert second.rolled_back_by == model_admin
    event = AuditEvent.objects.get(action="site.point_rolled_back")
    assert event.after["point"] == first.pk
    assert event.before["point"] == second.pk

    _post(client, site_a, version, action="rollback")  # back to the model's own point
    assert services.active_point(site_a, version) is None
    refused = _post(client, site_a, version, action="rollback")
    assert refused.status_code == 409
    assert "no site point to roll back" in refused.content.decode()
    assert AuditEvent.objects.filter(action="site.point_rolled_back").count() == 2
    history = client.get(reverse("sites:operating-point", args=[site_a.pk, version.pk]))
    assert history.content.decode().count("data-point=") == 2


@pytest.mark.slow
def test_an_apply_is_refused_when_the_labels_moved_the_proposal(
    client, site_a, version, labelled_a, model_admin
):
    client.force_login(model_admin)
    stale = _post(
        client, site_a, version, action="apply", target="covid19_sensitivity", goal="0.9",
        **{"offset-covid19": "0.0", "offset-pneumonia": "0.0", "offset-normal": "-1.0"},
    )  # fmt: skip
    assert stale.status_code == 409
    assert "labels changed since this proposal" in stale.content.decode()
    assert _nothing_written()


@pytest.mark.parametrize(
    ("target", "goal", "message"),
    [
        ("covid19_magic", "0.9", "Select a valid choice"),
        ("covid19_sensitivity", "0", "The goal must be a share in (0, 1]"),
        ("covid19_sensitivity", "1.5", "The goal must be a share in (0, 1]"),
        ("covid19_sensitivity", "lots", "Enter a number"),
    ],
)
@pytest.mark.slow
def test_bad_input_is_a_clear_400_and_writes_nothing(
    client, api_client_of, site_a, version, labelled_a, model_admin, target, goal, message
):
    client.force_login(model_admin)
    for action in ("propose", "apply"):
        response = _post(client, site_a, version, action=action, target=target, goal=goal)
        assert response.status_code == 400
        assert message in response.content.decode()
    api = api_client_of(model_admin)
    base = f"/api/v1/sites/{site_a.pk}/models/{version.pk}/operating-points/"
    for url in (base, base + "propose/"):
        answer = api.post(url, {"target": target, "goal": goal}, format="json")
        assert answer.status_code == 400, answer.json()
        assert answer.json()["error"]["fields"]
    assert _nothing_written()
    with pytest.raises(services.SiteInputError, match="Unknown target"):
        services.propose(site=site_a, version=version, target="covid19_magic", goal=0.9)
    with pytest.raises(services.SiteInputError, match=r"\(0, 1\]"):
        services.apply_point(
            actor=model_admin, site=site_a, version=version, target="covid19_sensitivity", goal=0
        )
    assert _nothing_written()


@pytest.mark.slow
def test_a_site_without_labelled_images_is_refused_and_nothing_is_written(
    client, api_client_of, site_b, version, labelled_a, model_admin
):
    client.force_login(model_admin)
    for action in ("propose", "apply"):
        response = _post(
            client, site_b, version, action=action, target="covid19_sensitivity", goal="0.9"
        )
        assert response.status_code == 409
        assert "Hospital B has no image with a confirmed label" in response.content.decode()
    base = f"/api/v1/sites/{site_b.pk}/models/{version.pk}/operating-points/"
    body = {"target": "covid19_sensitivity", "goal": 0.9}
    api = api_client_of(model_admin)
    assert api.post(base, body, format="json").status_code == 409
    assert api.post(base + "propose/", body, format="json").status_code == 409
    assert api.post(base + "rollback/").status_code == 409
    assert _nothing_written()


def test_a_target_with_no_images_of_its_kind_is_refused(
    site_a, clinician_a, version, labelled, model_admin
):
    labelled(clinician_a, version, CLEAR_NORMAL)
    with pytest.raises(services.SiteRefused, match="no labelled COVID-19 images"):
        services.apply_point(
            actor=model_admin, site=site_a, version=version, target="covid19_sensitivity", goal=0.9
        )
    assert _nothing_written()


@pytest.mark.slow
def test_the_api_applies_lists_and_rolls_back(
    api_client_of, site_a, version, labelled_a, model_admin
):
    api = api_client_of(model_admin)
    base = f"/api/v1/sites/{site_a.pk}/models/{version.pk}/operating-points/"
    proposal = api.post(
        base + "propose/", {"target": "covid19_sensitivity", "goal": 0.9}, format="json"
    ).json()
    assert proposal["reached"]
    assert proposal["offsets"]["normal"] == -2.0
    created = api.post(
        base,
        {"target": "covid19_sensitivity", "goal": 0.9, "offsets": proposal["offsets"]},
        format="json",
    )
    assert created.status_code == 201
    point = created.json()
    assert point["active"]
    assert point["number"] == 1
    assert point["created_by"] == model_admin.username
    listed = api.get(base).json()
    assert listed["active"]["id"] == point["id"]
    assert [p["id"] for p in listed["history"]] == [point["id"]]
    rolled = api.post(base + "rollback/")
    assert rolled.status_code == 200
    assert rolled.json() == {"active": None}
    assert api.get(base).json()["active"] is None
    assert AuditEvent.objects.filter(action__startswith="site.point").count() == 2


def _predict(owner, name: str) -> Prediction:
    """The real upload and prediction path (the tiny model, in this process)."""
    case = cases.create_case(owner=owner, files=[upload_of(name)], patient_ref="SITE-TEST")
    prediction = Prediction.objects.get(image__case=case)
    run_job_now(Prediction, prediction.pk)
    prediction.refresh_from_db()
    assert prediction.status == Prediction.Status.DONE, prediction.error
    return prediction


@pytest.mark.slow
def test_an_applied_point_labels_that_sites_new_predictions_only_and_rolls_back(
    client, site_a, site_b, clinician_a, clinician_b, production_model, labelled, model_admin
):
    """The real prediction path: the site's point changes site A's label of an image the
    model calls normal (COVID-19 0.15, normal 0.81), never site B's; the probabilities
    stay the model's; rolling back gives site A the model's own label again."""
    labelled(clinician_a, production_model, MISSED_COVID + CLEAR_NORMAL)
    image = "00001280_004.jpg"
    before_a = _predict(clinician_a, image)
    assert before_a.operating_point is None
    point = services.apply_point(
        actor=model_admin,
        site=site_a,
        version=production_model,
        target="covid19_sensitivity",
        goal=0.9,
    )
    at_a, at_b = _predict(clinician_a, image), _predict(clinician_b, image)
    assert at_a.image.case.site == site_a
    assert at_b.image.case.site == site_b
    # The probabilities are the model's, the same at both sites.
    assert at_a.probabilities == pytest.approx(at_b.probabilities)
    assert at_a.probabilities == pytest.approx(before_a.probabilities)
    probs = np.asarray([[at_a.probabilities[c] for c in CLASSES]])
    raw = CLASSES[int(probs.argmax())]
    assert at_b.label == raw == before_a.label == "normal"
    assert at_b.operating_point is None
    assert at_a.operating_point == point
    assert at_a.label == CLASSES[int(labels_at(probs, CLASSES, point.offsets)[0])] == "covid19"

    # The case page says which point made the label.
    client.force_login(clinician_a)
    page = client.get(reverse("cases:detail", args=[at_a.image.case_id])).content.decode()
    assert "data-operating-point" in page
    assert "point 1" in page
    client.force_login(clinician_b)
    page = client.get(reverse("cases:detail", args=[at_b.image.case_id])).content.decode()
    assert "model's own operating point" in page

    services.roll_back(actor=model_admin, site=site_a, version=production_model)
    after = _predict(clinician_a, image)
    assert after.operating_point is None
    assert after.label == raw
    at_a.refresh_from_db()  # a made prediction keeps the label and point it was made at
    assert at_a.label == "covid19"
    assert at_a.operating_point == point
