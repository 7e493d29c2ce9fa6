"""The readers' web pages (labelling queue and page, their verdicts, adjudication) name an
image by its opaque reference (``apps.cases.access.image_ref``), as the readers' API
does: no image id or case id in a URL or a page, nothing to count or to group by case;
the id-keyed routes are the case owner's."""

from __future__ import annotations

import re

import pytest
from django.urls import reverse

from apps.accounts.models import AuditEvent
from apps.cases import labelling
from apps.cases.access import image_ref
from apps.cases.models import Adjudication, CaseImage, ExpertLabel
from tests.factories import (
    CaseFactory,
    CaseImageFactory,
    ExplanationFactory,
    ModelVersionFactory,
    PredictionFactory,
    UserFactory,
)

pytestmark = pytest.mark.django_db

# Ids no page would print by chance (a page's other numbers are small).
IMAGE_ID, CASE_ID, EXPLANATION_ID = 987654, 876543, 765432


@pytest.fixture
def image(clinician) -> CaseImage:
    """An X-ray with a finished prediction, lung fields and a Grad-CAM, at ids of its own."""
    image = CaseImageFactory(pk=IMAGE_ID, case=CaseFactory(pk=CASE_ID, owner=clinician))
    version = ModelVersionFactory()
    PredictionFactory(image=image, model_version=version, with_lungs=True)
    ExplanationFactory(pk=EXPLANATION_ID, image=image, model_version=version)
    return image


@pytest.fixture
def adjudicator():
    return UserFactory(username="senior", roles=["adjudicator"])


def _no_ids(text: str) -> None:
    for number in (IMAGE_ID, CASE_ID, EXPLANATION_ID):
        assert str(number) not in text, number


def _img_sources(page: str) -> list[str]:
    return list(dict.fromkeys(re.findall(r'<img[^>]*\bsrc="([^"]+)"', page)))


def _links(page: str) -> list[str]:
    return re.findall(r'\bhref="([^"]+)"', page)


@pytest.mark.slow
def test_the_labelling_pages_carry_no_image_or_case_id(client, annotator, image, settings):
    settings.CXR_LABEL_SHOW_MODEL = True
    ref = image_ref(image)
    client.force_login(annotator)
    queue = client.get(reverse("cases:label-queue"))
    assert queue.status_code == 200
    html = queue.content.decode()
    _no_ids(html)
    assert f"Image {ref[:6]}…" in html
    assert f'data-image="{ref}"' in html
    url = reverse("cases:label", args=[ref])
    assert url == f"/cases/labelling/{ref}/"
    assert f'action="{url}"' in html
    assert f"?after={ref}" in html  # the skip link
    for src in _img_sources(html):
        _no_ids(src)
        assert client.get(src).status_code == 200, src

    # The verdict, then the page with the model's answer and its heatmap: still no id.
    response = client.post(url, {"label": "pneumonia"})
    assert response.status_code == 302
    assert response.url == url
    page = client.get(url).content.decode()
    assert "Model says" in page
    _no_ids(page)
    assert re.search(rf"<title>Image {ref[:6]}…: your verdict", page)
    assert f"<h1>Image {ref[:6]}… <small>" in page
    sources = _img_sources(page)
    assert len(sources) == 3  # the image, its heatmap layer, its lung outline
    for link in [*sources, *_links(page)]:
        _no_ids(link)
    for src in sources:
        assert client.get(src).status_code == 200, src
    download = client.get(reverse("explain:reader-overlay-download", args=[ref, "gradcam"]))
    assert download.status_code == 200
    _no_ids(download["Content-Disposition"])
    assert ref[:6] in download["Content-Disposition"]
    raw = client.get(reverse("explain:reader-heatmap", args=[ref, "gradcam"]))
    assert raw.status_code == 200
    _no_ids(raw["Content-Disposition"])

    mine = client.get(reverse("cases:my-verdicts")).content.decode()
    _no_ids(mine)
    assert f'href="{url}"' in mine
    assert f"Image {ref[:6]}…" in mine


def test_the_models_maps_by_reference_wait_for_the_readers_verdict(
    client, annotator, image, settings
):
    settings.CXR_LABEL_SHOW_MODEL = True
    ref = image_ref(image)
    client.force_login(annotator)
    names = ("reader-layer", "reader-overlay", "reader-overlay-download", "reader-heatmap")
    for name in names:
        assert client.get(reverse(f"explain:{name}", args=[ref, "gradcam"])).status_code == 404
    labelling.submit_label(image=image, annotator=annotator, label="normal")
    for name in names:
        assert client.get(reverse(f"explain:{name}", args=[ref, "gradcam"])).status_code == 200
    assert client.get(reverse("explain:reader-layer", args=[ref, "occlusion"])).status_code == 404
    # Without the setting, never.
    settings.CXR_LABEL_SHOW_MODEL = False
    assert client.get(reverse("explain:reader-layer", args=[ref, "gradcam"])).status_code == 404


@pytest.mark.parametrize("ref", ["0" * 24, "f" * 24, str(IMAGE_ID), "mine-" + "a" * 19])
def test_an_unknown_reference_is_a_404(client, annotator, adjudicator, image, ref):
    client.force_login(annotator)
    for url in (
        reverse("cases:label", args=[ref]),
        reverse("cases:reader-image-file", args=[ref]),
        reverse("cases:reader-lung-file", args=[ref, "outline"]),
        reverse("explain:reader-layer", args=[ref, "gradcam"]),
    ):
        assert client.get(url).status_code == 404, url
    assert client.post(reverse("cases:label", args=[ref]), {"label": "normal"}).status_code == 404
    assert not ExpertLabel.objects.exists()
    client.force_login(adjudicator)
    assert client.get(reverse("cases:adjudicate", args=[ref])).status_code == 404


def test_an_image_held_for_review_is_a_404_by_its_reference(client, annotator, adjudicator, image):
    labelling.submit_label(image=image, annotator=UserFactory(roles=["annotator"]), label="normal")
    CaseImage.objects.filter(pk=image.pk).update(status=CaseImage.Status.HELD)
    ref = image_ref(image)
    client.force_login(annotator)
    assert client.get(reverse("cases:label", args=[ref])).status_code == 404
    assert client.get(reverse("cases:reader-image-file", args=[ref])).status_code == 404
    assert client.post(reverse("cases:label", args=[ref]), {"label": "normal"}).status_code == 404
    assert not ExpertLabel.objects.filter(annotator=annotator).exists()
    client.force_login(adjudicator)
    assert client.get(reverse("cases:adjudicate", args=[ref])).status_code == 404
    assert client.get(reverse("cases:reader-image-file", args=[ref])).status_code == 404


def test_a_reader_cannot_reach_an_image_by_guessing_ids(client, annotator, adjudicator, image):
    """The old id-keyed labelling URLs are gone (404 for everyone, no redirect: a redirect
    would turn a guessed id into its reference); the id-keyed files are the owner's."""
    explanation = image.explanations.get()
    labelling.submit_label(image=image, annotator=annotator, label="normal")
    for user, own in ((annotator, "labelling"), (adjudicator, "adjudication")):
        client.force_login(user)
        for url in (
            f"/cases/images/{image.pk}/label/",
            f"/cases/images/{image.pk}/adjudicate/",
            f"/cases/{own}/{image.pk}/",
        ):
            assert client.get(url).status_code == 404, url
        for url in (
            reverse("cases:image-file", args=[image.pk]),
            reverse("cases:lung-file", args=[image.pk, "outline"]),
            reverse("explain:layer", args=[explanation.pk]),
            reverse("explain:overlay", args=[explanation.pk]),
            reverse("explain:overlay-download", args=[explanation.pk]),
            reverse("explain:heatmap", args=[explanation.pk]),
        ):
            assert client.get(url).status_code == 403, url
    # A clinician who also reads reaches only their own cases' files by id.
    both = UserFactory(roles=["clinician", "annotator"])
    client.force_login(both)
    assert client.get(reverse("cases:image-file", args=[image.pk])).status_code == 404
    assert client.get(reverse("explain:layer", args=[explanation.pk])).status_code == 404
    assert client.get(reverse("cases:label", args=[image_ref(image)])).status_code == 200
    assert not AuditEvent.objects.filter(action__startswith="download.").exists()


def test_the_owner_still_opens_their_files_by_id(client, clinician, image):
    explanation = image.explanations.get()
    client.force_login(clinician)
    for url in (
        reverse("cases:image-file", args=[image.pk]),
        reverse("cases:lung-file", args=[image.pk, "outline"]),
        reverse("explain:layer", args=[explanation.pk]),
        reverse("explain:heatmap", args=[explanation.pk]),
    ):
        assert client.get(url).status_code == 200, url
    # The readers' routes are not the owner's way in.
    assert client.get(reverse("cases:label", args=[image_ref(image)])).status_code == 403


def test_the_adjudication_pages_work_by_reference(client, adjudicator, image, settings):
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "adjudication", 2
    a, b = (UserFactory(username=f"reader-{i}", roles=["annotator"]) for i in range(2))
    labelling.submit_label(image=image, annotator=a, label="pneumonia", note="left base")
    labelling.submit_label(image=image, annotator=b, label="covid19", note="bilateral GGO")
    ref = image_ref(image)
    url = reverse("cases:adjudicate", args=[ref])
    assert url == f"/cases/adjudication/{ref}/"
    client.force_login(adjudicator)
    listing = client.get(reverse("cases:adjudication")).content.decode()
    _no_ids(listing)
    assert f'href="{url}"' in listing
    assert f"Image {ref[:6]}…" in listing

    response = client.get(url)
    assert response.status_code == 200
    page = response.content.decode()
    _no_ids(page)
    assert f"<h1>Adjudicate image {ref[:6]}…</h1>" in page
    for text in ("reader-0", "reader-1", "left base", "bilateral GGO"):
        assert text in page
    assert "Model says" not in page
    sources = _img_sources(page)
    assert len(sources) == 2  # the image and its lung outline: no heatmap
    for src in sources:
        _no_ids(src)
        assert client.get(src).status_code == 200, src

    decided = client.post(url, {"label": "covid19", "note": "typical"}, follow=True)
    assert decided.redirect_chain == [(reverse("cases:adjudication"), 302)]
    after = decided.content.decode()
    assert f"Image {ref[:6]}… decided." in after
    assert f'data-decided="{ref}"' in after
    _no_ids(after)
    assert Adjudication.objects.get(image=image).label == "covid19"


def test_an_image_without_verdicts_is_not_an_adjudicators(client, adjudicator, image):
    client.force_login(adjudicator)
    assert client.get(reverse("cases:adjudicate", args=[image_ref(image)])).status_code == 404
    assert client.get(reverse("cases:reader-image-file", args=[image_ref(image)])).status_code == (
        404
    )


# -- who opens which reader route: every route that takes a reference ------------------

WHO = ("anonymous", "owner", "annotator", "adjudicator", "model_admin")
READER = {"anonymous": 302, "owner": 403, "annotator": 200, "adjudicator": 403, "model_admin": 403}
READER_FILE = {**READER, "adjudicator": 200}
ADJUDICATOR = {**READER, "annotator": 403, "adjudicator": 200}
LABELLED = {**READER, "annotator": 302}  # a verdict: back to the page
DECIDED = {**ADJUDICATOR, "adjudicator": 302}  # refused (not disputed): back to the page
REF_ROUTES = [
    # (name, method, extra args after the reference, form data, answers per role)
    ("cases:label", "get", [], None, READER),
    ("cases:label", "post", [], {"label": "normal", "from": "review"}, LABELLED),
    ("cases:reader-image-file", "get", [], None, READER_FILE),
    ("cases:reader-lung-file", "get", ["outline"], None, READER_FILE),
    ("cases:adjudicate", "get", [], None, ADJUDICATOR),
    ("cases:adjudicate", "post", [], {"label": "normal"}, DECIDED),
    ("explain:reader-layer", "get", ["gradcam"], None, READER),
    ("explain:reader-overlay", "get", ["gradcam"], None, READER),
    ("explain:reader-overlay-download", "get", ["gradcam"], None, READER),
    ("explain:reader-heatmap", "get", ["gradcam"], None, READER),
]


@pytest.mark.parametrize(
    ("name", "method", "args", "data", "who", "expected"),
    [
        pytest.param(name, method, args, data, who, codes[who], id=f"{name}-{method}-{who}")
        for name, method, args, data, codes in REF_ROUTES
        for who in WHO
    ],
)
@pytest.mark.slow
def test_reader_route_matrix(
    client, clinician, annotator, adjudicator, model_admin, image, settings,
    name, method, args, data, who, expected,
):  # fmt: skip
    settings.CXR_LABEL_SHOW_MODEL = True
    settings.CXR_LABEL_POLICY, settings.CXR_LABEL_AGREEMENT = "adjudication", 2
    labelling.submit_label(image=image, annotator=annotator, label="pneumonia")
    users = {"owner": clinician, "annotator": annotator, "adjudicator": adjudicator,
             "model_admin": model_admin}  # fmt: skip
    if who != "anonymous":
        client.force_login(users[who])
    url = reverse(name, args=[image_ref(image), *args])
    response = client.post(url, data) if method == "post" else client.get(url)
    assert response.status_code == expected
    if expected == 302 and who == "anonymous":
        assert response.url.startswith(reverse("login"))


def test_the_matrix_covers_every_route_that_takes_a_reference():
    from django.urls import get_resolver

    def named(resolver, prefix=""):
        for pattern in resolver.url_patterns:
            if hasattr(pattern, "url_patterns"):
                space = f"{pattern.namespace}:" if pattern.namespace else prefix
                yield from named(pattern, space)
            elif "ref" in pattern.pattern.converters:
                yield f"{prefix}{pattern.name}"

    web = {name for name in named(get_resolver()) if not name.startswith("api:")}
    assert web == {name for name, *_ in REF_ROUTES}
