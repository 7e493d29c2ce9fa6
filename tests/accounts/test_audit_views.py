"""An audit log that can be read. One ``case.viewed`` /
``image.viewed`` event per page view, naming the files the page loads (their fetches
write no events of their own), while every other fetch of patient pixels is still a
``download.*`` event; and the audit page's categories (patient-data access vs
administrative actions)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings
from django.core.files.base import ContentFile
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from apps.accounts.audit import VIEW_WINDOW_SECONDS
from apps.accounts.audit_log import CATEGORIES
from apps.accounts.models import AuditEvent
from apps.cases.access import image_ref
from apps.cases.models import ExpertLabel, Segmentation
from tests.conftest import clear_own_cache
from tests.factories import (
    CaseFactory,
    CaseImageFactory,
    ExplanationFactory,
    ModelVersionFactory,
    PredictionFactory,
    mask_png,
)

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_cache():
    clear_own_cache()  # the grants of page views live in the cache
    yield
    clear_own_cache()


def _xray_case(owner, n_images: int = 3):
    """A case of X-rays, each with a finished prediction with lungs and a Grad-CAM."""
    case = CaseFactory(owner=owner)
    version = ModelVersionFactory()
    for _ in range(n_images):
        image = CaseImageFactory(case=case)
        PredictionFactory(image=image, model_version=version, with_lungs=True)
        ExplanationFactory(image=image, model_version=version)
    return case


def _events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(action=action).order_by("pk"))


def _downloads() -> list[tuple[str, str, str]]:
    return list(
        AuditEvent.objects.filter(action__startswith="download.")
        .order_by("pk")
        .values_list("action", "target_id", "after__via")
    )


def _img_sources(page: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r'<img[^>]*\bsrc="([^"]+)"', page)))


def _fetch(client, url: str) -> int:
    response = client.get(url)
    if getattr(response, "streaming", False):
        b"".join(response.streaming_content)
    return response.status_code


def _files(event: AuditEvent) -> list[tuple[str, int, int]]:
    return [(f["kind"], f["id"], f["image"]) for f in event.after["files"]]


def test_a_case_of_three_images_is_one_event_naming_every_file_the_page_loads(client, clinician):
    case = _xray_case(clinician)
    client.force_login(clinician)
    before = AuditEvent.objects.count()
    page = client.get(reverse("cases:detail", args=[case.pk]))
    assert page.status_code == 200
    (view,) = _events("case.viewed")
    assert (view.actor, view.target_type, view.target_id) == (clinician, "cases.Case", str(case.pk))
    assert view.after["via"] == "web"
    images = list(case.images.order_by("pk"))
    assert view.after["images"] == [image.pk for image in images]
    expected = []
    for image in images:
        prediction, explanation = image.predictions.get(), image.explanations.get()
        expected += [
            ("image", image.pk, image.pk),
            ("lung_outline", prediction.pk, image.pk),
            ("heatmap_layer", explanation.pk, image.pk),
        ]
    assert sorted(_files(view)) == sorted(expected)

    # The browser loads every <img> of the page: no event of their own, all 200.
    sources = _img_sources(page.content.decode())
    assert len(sources) == 9
    for url in sources:
        assert _fetch(client, url) == 200, url
        assert _fetch(client, url) == 200, url  # and again (a live refresh's new <img>)
    assert _downloads() == []
    assert AuditEvent.objects.count() == before + 1


def test_the_download_links_of_a_viewed_page_are_still_audited(client, clinician):
    case = _xray_case(clinician, n_images=1)
    image = case.images.get()
    explanation = image.explanations.get()
    prediction = image.predictions.get()
    client.force_login(clinician)
    page = client.get(reverse("cases:detail", args=[case.pk])).content.decode()
    overlay = reverse("explain:overlay", args=[explanation.pk])
    raw = reverse("explain:heatmap", args=[explanation.pk])
    assert overlay in page
    assert raw in page
    for url in (overlay, raw, reverse("cases:lung-file", args=[image.pk, "mask"])):
        assert _fetch(client, url) == 200, url
    # Not loaded by the page (links, a mask it does not show): one event each.
    assert _downloads() == [
        ("download.overlay", str(explanation.pk), "web"),
        ("download.heatmap", str(explanation.pk), "web"),
        ("download.lung_mask", str(prediction.pk), "web"),
    ]


def test_a_file_fetched_outside_a_page_view_is_its_own_event(client, clinician):
    from knox.models import AuthToken

    case = _xray_case(clinician, n_images=1)
    image = case.images.get()
    url = reverse("cases:image-file", args=[image.pk])
    client.force_login(clinician)
    # A direct link, no page viewed: audited.
    assert _fetch(client, url) == 200
    assert _downloads() == [("download.image", str(image.pk), "web")]
    # The page grants its files to this session only: another session of the same user
    # (another browser) fetching the same file is audited.
    client.get(reverse("cases:detail", args=[case.pk]))
    other = Client()
    other.force_login(clinician)
    assert _fetch(other, url) == 200
    # And the API never folds: each file fetch there is asked for on purpose.
    api = APIClient()
    _, token = AuthToken.objects.create(user=clinician)
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    assert api.get(f"/api/v1/images/{image.pk}/file/").status_code == 200
    assert _downloads() == [
        ("download.image", str(image.pk), "web"),
        ("download.image", str(image.pk), "web"),
        ("download.image", str(image.pk), "api"),
    ]
    actors = AuditEvent.objects.filter(action__startswith="download.").values_list("actor")
    assert set(actors) == {(clinician.pk,)}


def test_after_the_window_a_file_of_a_viewed_page_is_its_own_event_again(client, clinician):
    case = _xray_case(clinician, n_images=1)
    image = case.images.get()
    client.force_login(clinician)
    client.get(reverse("cases:detail", args=[case.pk]))
    assert 60 <= VIEW_WINDOW_SECONDS <= 900  # minutes, not the session's life
    clear_own_cache()  # what the window's end (or a flushed cache) leaves
    assert _fetch(client, reverse("cases:image-file", args=[image.pk])) == 200
    assert _downloads() == [("download.image", str(image.pk), "web")]


def test_a_live_refresh_records_only_files_it_brings(client, clinician):
    case = _xray_case(clinician, n_images=1)
    image = case.images.get()
    client.force_login(clinician)
    url = reverse("cases:detail", args=[case.pk])
    client.get(url)
    live = {"HTTP_X_LIVE_REFRESH": "1"}
    # Nothing new on the page: no event (rendered or 304).
    etag = client.get(url, **live)["ETag"]
    assert client.get(url, HTTP_IF_NONE_MATCH=etag, **live).status_code == 304
    assert len(_events("case.viewed")) == 1
    # A second method finishes while the page is open: the refresh names its layer only.
    occlusion = ExplanationFactory(
        image=image, model_version=image.predictions.get().model_version, method="occlusion"
    )
    assert client.get(url, HTTP_IF_NONE_MATCH=etag, **live).status_code == 200
    first, refresh = _events("case.viewed")
    assert "refresh" not in first.after
    assert refresh.after["refresh"] is True
    assert _files(refresh) == [("heatmap_layer", occlusion.pk, image.pk)]
    assert _fetch(client, reverse("explain:layer", args=[occlusion.pk])) == 200
    assert _downloads() == []


def test_the_ct_case_page_names_its_slices_and_mask_layers(client, clinician):
    case = CaseFactory(owner=clinician, modality="ct")
    version = ModelVersionFactory()
    segmentations = []
    for _ in range(2):
        image = CaseImageFactory(case=case)
        masks = {
            field: ContentFile(mask_png(), name=f"{field}.png")
            for field in ("lung_mask", "ggo_mask", "consolidation_mask", "infection_mask")
        }
        segmentations.append(
            Segmentation.objects.create(
                image=image,
                model_version=version,
                status="done",
                lungs_found=True,
                lung_outline=ContentFile(mask_png(), name="outline.png"),
                **masks,
            )
        )
    client.force_login(clinician)
    page = client.get(reverse("cases:detail", args=[case.pk])).content.decode()
    (view,) = _events("case.viewed")
    named = {(f["kind"], f["id"], f.get("name", "")) for f in view.after["files"]}
    assert named == {
        (kind, target, name)
        for segmentation in segmentations
        for kind, target, name in [
            ("image", segmentation.image_id, ""),
            ("ct_layer", segmentation.pk, "ggo"),
            ("ct_layer", segmentation.pk, "consolidation"),
            ("ct_layer", segmentation.pk, "lung_outline"),
        ]
    }
    sources = _img_sources(page)  # the slice strip's thumbnails and the viewers
    assert len(sources) == 8
    for url in sources:
        assert _fetch(client, url) == 200, url
    assert _downloads() == []
    # A mask the page does not lay over the slice is its own event, naming the mask.
    infection = reverse("cases:ct-layer", args=[segmentations[0].image_id, "infection"])
    assert _fetch(client, infection) == 200
    event = AuditEvent.objects.get(action="download.ct_layer")
    assert (event.target_id, event.after["name"]) == (str(segmentations[0].pk), "infection")


def test_a_readers_page_is_one_image_view_without_the_models_files(client, annotator):
    case = _xray_case(CaseFactory().owner, n_images=1)
    image = case.images.get()
    client.force_login(annotator)
    page = client.get(reverse("cases:label-queue")).content.decode()
    (view,) = _events("image.viewed")
    assert (view.actor, view.target_type, view.target_id) == (
        annotator,
        "cases.CaseImage",
        str(image.pk),
    )
    prediction = image.predictions.get()
    assert _files(view) == [
        ("image", image.pk, image.pk),
        ("lung_outline", prediction.pk, image.pk),
    ]
    sources = _img_sources(page)
    assert len(sources) == 2  # blind: no heatmap layer
    for url in sources:
        assert _fetch(client, url) == 200, url
    assert _downloads() == []
    # The heatmap layer was not on the page, and the model's answer is not the reader's
    # before their verdict: by the image's reference it is a 404, by id not theirs (403).
    explanation = image.explanations.get()
    ref = image_ref(image)
    assert _fetch(client, reverse("explain:reader-layer", args=[ref, explanation.method])) == 404
    assert _fetch(client, reverse("explain:layer", args=[explanation.pk])) == 403
    assert _downloads() == []


def test_a_readers_page_after_the_verdict_names_the_heatmaps_it_loads(client, annotator, settings):
    settings.CXR_LABEL_SHOW_MODEL = True
    case = _xray_case(CaseFactory().owner, n_images=1)
    image = case.images.get()
    ExpertLabel.objects.create(image=image, annotator=annotator, label="normal")
    client.force_login(annotator)
    page = client.get(reverse("cases:label", args=[image_ref(image)])).content.decode()
    (view,) = _events("image.viewed")
    explanation = image.explanations.get()
    assert ("heatmap_layer", explanation.pk, image.pk) in _files(view)
    sources = _img_sources(page)
    assert len(sources) == 3  # the image, its lung outline and the heatmap layer
    for url in sources:
        assert _fetch(client, url) == 200, url
    assert _downloads() == []
    # A link the page offers (the overlay as a file): its own event.
    overlay = reverse("explain:reader-overlay-download", args=[image_ref(image), "gradcam"])
    assert overlay in page
    assert _fetch(client, overlay) == 200
    assert _downloads() == [("download.overlay", str(explanation.pk), "web")]


def test_the_api_case_and_image_answers_are_view_events(clinician):
    from knox.models import AuthToken

    case = _xray_case(clinician, n_images=2)
    api = APIClient()
    _, token = AuthToken.objects.create(user=clinician)
    api.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    answer = api.get(f"/api/v1/cases/{case.pk}/")
    assert answer.status_code == 200
    # A conditional GET that changes nothing delivers nothing: no event.
    again = api.get(f"/api/v1/cases/{case.pk}/", HTTP_IF_NONE_MATCH=answer["ETag"])
    assert again.status_code == 304
    (view,) = _events("case.viewed")
    assert view.after["via"] == "api"
    assert sorted(view.after["images"]) == sorted(case.images.values_list("pk", flat=True))
    assert view.after["files"] == []  # each file fetch there is a download event
    image = case.images.first()
    assert api.get(f"/api/v1/images/{image.pk}/").status_code == 200
    (image_view,) = _events("image.viewed")
    assert (image_view.target_id, image_view.after["via"]) == (str(image.pk), "api")


# --- the audit page's categories ------------------------------------------------------------


@pytest.fixture
def mixed_trail(clinician, model_admin):
    actions = [
        (clinician, "case.viewed"),
        (clinician, "download.overlay"),
        (model_admin, "dataset.export"),
        (model_admin, "inspector.image_viewed"),
        (model_admin, "model.promote"),
        (model_admin, "training.start"),
        (model_admin, "user.roles"),
        (model_admin, "retention.erasure"),
        (clinician, "case.create"),
        (clinician, "label.create"),
    ]
    return {
        action: AuditEvent.objects.create(
            actor=actor, action=action, target_type="cases.Case", target_id="1"
        )
        for actor, action in actions
    }


def _page_actions(response) -> list[str]:
    return re.findall(r"<td><code>([^<]+)</code></td>", response.content.decode())


def test_the_audit_page_filters_patient_data_access_from_administrative_actions(
    client, model_admin, mixed_trail
):
    client.force_login(model_admin)
    url = reverse("audit-log")
    page = client.get(url).content.decode()
    assert 'name="category"' in page
    assert "Patient-data access" in page
    assert "Administrative actions" in page
    access = _page_actions(client.get(url, {"category": "patient_data"}))
    assert sorted(access) == sorted(
        ["case.viewed", "download.overlay", "dataset.export", "inspector.image_viewed"]
    )
    admin = _page_actions(client.get(url, {"category": "admin"}))
    assert sorted(admin) == sorted(
        ["model.promote", "training.start", "user.roles", "retention.erasure"]
    )
    # With the other filters, and in the CSV export.
    mine = _page_actions(client.get(url, {"category": "patient_data", "actor": "admin-a"}))
    assert sorted(mine) == ["dataset.export", "inspector.image_viewed"]
    export = client.get(url, {"category": "admin", "format": "csv"})
    rows = b"".join(export.streaming_content).decode().splitlines()[1:]
    # The export's own event is administrative too (written before the rows are read).
    assert sorted(row.split(",")[2] for row in rows) == sorted([*admin, "audit.export"])
    assert AuditEvent.objects.get(action="audit.export").after["filters"] == {"category": "admin"}
    assert client.get(url, {"category": "everything"}).status_code == 400


def test_every_documented_action_is_in_exactly_one_category():
    doc = (Path(settings.BASE_DIR) / "docs" / "operations.md").read_text()
    table = doc.split("## Audit log", 1)[1].split("**Reading it**", 1)[0]
    actions = set(re.findall(r"`([a-z_]+\.[a-z_]+)`", table))
    assert {"case.viewed", "download.image", "model.promote", "auth.login"} <= actions
    for action in sorted(actions):
        homes = [
            category
            for category, (_label, patterns) in CATEGORIES.items()
            if any(action == p or (p.endswith(".") and action.startswith(p)) for p in patterns)
        ]
        assert len(homes) == 1, (action, homes)
