"""The read path under load: a fixed number of queries per page whatever the number of
cases, cached case summaries that a change replaces at once, conditional GET (ETag /
Last-Modified -> 304) for what clients and the live pages poll, gzip for JSON."""

from __future__ import annotations

import gzip
import json

import pytest
from django.utils import timezone

from apps.cases.models import Case, ExpertLabel, Prediction
from tests.conftest import clear_own_cache
from tests.factories import (
    CaseFactory,
    CaseImageFactory,
    ExplanationFactory,
    ModelVersionFactory,
    PredictionFactory,
    UserFactory,
)

# Authentication (knox: the token, its user; the user's roles) is 3 queries.
AUTH = 3
# A page of the API case list: the count, the page's rows, and for the cases whose
# summary is not cached, their rows and one query per prefetched relation (images,
# predictions, their model versions, segmentations, explanations, expert labels).
LIST_WARM = AUTH + 2
LIST_COLD = LIST_WARM + 7
# One case: its row (id, updated_at), its case.viewed audit event; not cached: the case
# and the same six prefetches.
DETAIL_WARM = AUTH + 2
DETAIL_COLD = DETAIL_WARM + 7


@pytest.fixture(autouse=True)
def empty_cache():
    clear_own_cache()
    yield
    clear_own_cache()


@pytest.fixture
def version(db):
    return ModelVersionFactory(production=True)


def _cases(owner, version, n: int, *, pending: bool = False) -> list[Case]:
    cases = []
    for _ in range(n):
        case = CaseFactory(owner=owner)
        image = CaseImageFactory(case=case)
        if pending:
            PredictionFactory(image=image, pending=True)
        else:
            PredictionFactory(image=image, model_version=version)
            ExplanationFactory(image=image, model_version=version)
        cases.append(case)
    return cases


@pytest.mark.parametrize("n", [1, 12])
@pytest.mark.slow
def test_a_page_of_cases_costs_the_same_queries_whatever_it_holds(
    n, clinician, version, api_as, django_assert_num_queries
):
    _cases(clinician, version, n)
    client = api_as(clinician)
    with django_assert_num_queries(LIST_COLD):
        first = client.get("/api/v1/cases/")
    assert first.status_code == 200
    assert first.json()["count"] == n
    with django_assert_num_queries(LIST_WARM):
        second = client.get("/api/v1/cases/")
    assert second.json() == first.json()


@pytest.mark.parametrize("n_images", [1, 4])
def test_one_case_costs_the_same_queries_whatever_it_holds(
    n_images, clinician, version, api_as, django_assert_num_queries
):
    case = CaseFactory(owner=clinician)
    for _ in range(n_images):
        image = CaseImageFactory(case=case)
        PredictionFactory(image=image, model_version=version)
        ExplanationFactory(image=image, model_version=version)
    client = api_as(clinician)
    with django_assert_num_queries(DETAIL_COLD):
        body = client.get(f"/api/v1/cases/{case.pk}/").json()
    assert len(body["images"]) == n_images
    with django_assert_num_queries(DETAIL_WARM):
        assert client.get(f"/api/v1/cases/{case.pk}/").json() == body


def test_a_cached_summary_is_replaced_as_soon_as_a_job_changes(clinician, api_as, version):
    (case,) = _cases(clinician, version, 1, pending=True)
    client = api_as(clinician)
    before = client.get("/api/v1/cases/").json()["results"][0]
    assert before["status"] == "pending" or before["status"] == "processing"
    assert before["images"][0]["prediction"]["status"] == "pending"
    assert client.get(f"/api/v1/cases/{case.pk}/").json() == before  # both cached now

    # What the worker does: the job's own save, in its own transaction.
    prediction = Prediction.objects.get(image__case=case)
    prediction.mark_running()
    prediction.mark_done(
        model_version_id=version.pk,
        label="normal",
        probabilities={"covid19": 0.1, "pneumonia": 0.2, "normal": 0.7},
        preprocess_ms=1.0,
        inference_ms=1.0,
    )
    after = client.get("/api/v1/cases/").json()["results"][0]
    assert after["status"] == "done"
    assert after["images"][0]["prediction"]["label"] == "normal"
    assert client.get(f"/api/v1/cases/{case.pk}/").json()["status"] == "done"


@pytest.mark.parametrize(
    "change",
    ["prediction", "explanation", "verdict", "image", "notes"],
)
def test_every_change_of_what_a_case_shows_moves_its_version(change, clinician, version):
    (case,) = _cases(clinician, version, 1)
    image = case.images.get()
    before = Case.objects.get(pk=case.pk).updated_at
    if change == "prediction":
        PredictionFactory(image=image, model_version=version)
    elif change == "explanation":
        ExplanationFactory(image=image, model_version=version, method="occlusion")
    elif change == "verdict":
        ExpertLabel.objects.create(image=image, annotator=UserFactory(), label="normal")
    elif change == "image":
        image.confirmed_label = "normal"
        image.confirmed_at = timezone.now()
        image.save()
    else:
        case.notes = "seen"
        case.save()
    assert Case.objects.get(pk=case.pk).updated_at > before


def test_case_detail_answers_304_while_unchanged(clinician, version, api_as):
    (case,) = _cases(clinician, version, 1, pending=True)
    client = api_as(clinician)
    first = client.get(f"/api/v1/cases/{case.pk}/")
    etag, modified = first["ETag"], first["Last-Modified"]
    assert etag
    assert modified

    again = client.get(f"/api/v1/cases/{case.pk}/", HTTP_IF_NONE_MATCH=etag)
    assert again.status_code == 304
    assert again.content == b""
    since = client.get(f"/api/v1/cases/{case.pk}/", HTTP_IF_MODIFIED_SINCE=modified)
    assert since.status_code == 304

    Prediction.objects.get(image__case=case).mark_running()
    changed = client.get(f"/api/v1/cases/{case.pk}/", HTTP_IF_NONE_MATCH=etag)
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    assert changed.json()["images"][0]["prediction"]["status"] == "running"


def test_an_etag_is_not_shared_between_users(clinician, version, api_as):
    (case,) = _cases(clinician, version, 1)
    etag = api_as(clinician).get(f"/api/v1/cases/{case.pk}/")["ETag"]
    other = UserFactory(username="dr-c", roles=["clinician"])
    # Another clinician's case stays a 404, whatever ETag is sent.
    response = api_as(other).get(f"/api/v1/cases/{case.pk}/", HTTP_IF_NONE_MATCH=etag)
    assert response.status_code == 404


def test_json_is_gzipped_for_clients_that_accept_it(clinician, version, api_as):
    _cases(clinician, version, 5)
    client = api_as(clinician)
    plain = client.get("/api/v1/cases/")
    zipped = client.get("/api/v1/cases/", HTTP_ACCEPT_ENCODING="gzip")
    assert "Content-Encoding" not in plain
    assert zipped["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped["Vary"]
    body = gzip.decompress(zipped.content)
    assert json.loads(body) == plain.json()
    assert len(zipped.content) < len(plain.content) / 3


def test_html_pages_are_not_gzipped(clinician, version, login):
    _cases(clinician, version, 5)
    page = login(clinician).get("/cases/", HTTP_ACCEPT_ENCODING="gzip")
    assert page.status_code == 200
    assert "Content-Encoding" not in page


def test_me_is_the_user_and_roles(clinician, api_as):
    assert api_as(clinician).get("/api/v1/me/").json() == {
        "username": clinician.username,
        "roles": ["clinician"],
    }


# -- the live refreshes of the case pages ------------------------------------------------

LIVE = {"HTTP_X_LIVE_REFRESH": "1"}


def test_a_live_refresh_of_an_unchanged_case_page_is_a_304(
    clinician, version, login, django_assert_max_num_queries
):
    (case,) = _cases(clinician, version, 1, pending=True)
    client = login(clinician)
    url = f"/cases/{case.pk}/"
    assert "ETag" not in client.get(url)  # a normal page load: no conditional answer
    first = client.get(url, **LIVE)
    etag = first["ETag"]
    assert first.status_code == 200
    # session, user, password state, roles, the case's version, the session's idle clock
    with django_assert_max_num_queries(8):
        unchanged = client.get(url, HTTP_IF_NONE_MATCH=etag, **LIVE)
    assert unchanged.status_code == 304
    # Without the live header, the same ETag gets the whole page.
    assert client.get(url, HTTP_IF_NONE_MATCH=etag).status_code == 200

    prediction = Prediction.objects.get(image__case=case)
    prediction.mark_running()
    changed = client.get(url, HTTP_IF_NONE_MATCH=etag, **LIVE)
    assert changed.status_code == 200
    assert changed["ETag"] != etag
    assert b"running" in changed.content


def test_a_live_refresh_of_an_unchanged_case_list_is_a_304(clinician, version, login):
    cases = _cases(clinician, version, 3, pending=True)
    client = login(clinician)
    etag = client.get("/cases/", **LIVE)["ETag"]
    assert client.get("/cases/", HTTP_IF_NONE_MATCH=etag, **LIVE).status_code == 304
    # Another filter is another page.
    assert client.get("/cases/?status=done", HTTP_IF_NONE_MATCH=etag, **LIVE).status_code == 200
    Prediction.objects.get(image__case=cases[1]).mark_running()
    assert client.get("/cases/", HTTP_IF_NONE_MATCH=etag, **LIVE).status_code == 200


@pytest.mark.parametrize("n", [1, 10])
@pytest.mark.slow
def test_the_case_list_page_costs_the_same_queries_whatever_it_holds(
    n, clinician, version, login, django_assert_num_queries
):
    _cases(clinician, version, n)
    client = login(clinician)
    client.get("/cases/")  # the session's first request may write it
    # session, user, password state, roles, the list's version (count, newest change), the
    # page's rows, one per prefetched relation (6), the session's idle clock (its UPDATE
    # in a savepoint: the test runs in a transaction).
    with django_assert_num_queries(15):
        page = client.get("/cases/")
    assert page.content.count(b'data-live="case-') == n


@pytest.mark.parametrize("n_images", [1, 4])
def test_the_case_page_costs_the_same_queries_whatever_it_holds(
    n_images, clinician, version, login, django_assert_num_queries
):
    case = CaseFactory(owner=clinician)
    for _ in range(n_images):
        image = CaseImageFactory(case=case)
        PredictionFactory(image=image, model_version=version)
        ExplanationFactory(image=image, model_version=version)
    client = login(clinician)
    client.get(f"/cases/{case.pk}/")
    # session, user, password state, roles, the case's version, the case, one per
    # prefetched relation (6), its radiology reports (one), its case.viewed audit event,
    # the session's idle clock (3, as above).
    with django_assert_num_queries(17):
        page = client.get(f"/cases/{case.pk}/")
    assert page.content.count(b'data-live="image-') == n_images
