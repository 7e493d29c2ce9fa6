"""The study-kind table (apps.cases.kinds): each real kind's row, and a new kind that is
only a new row (its job, its page and its explanation methods follow from the row)."""

from __future__ import annotations

import pytest
from django.urls import reverse

from apps.cases import page_files, services
from apps.cases.kinds import KINDS, StudyKind, kind_of
from apps.cases.models import Modality, Prediction, Segmentation
from apps.explain import jobs as explain_jobs
from apps.explain.models import Explanation
from apps.explain.services import ExplanationUnavailable, request_explanation
from apps.models.models import Task
from tests.conftest import upload_of
from tests.factories import CaseFactory, CaseImageFactory, PredictionFactory

pytestmark = pytest.mark.django_db

ALL_METHODS = tuple(Explanation.Method.values)


def _templates(response) -> list[str]:
    return [t.name for t in response.templates if t.name]


def test_an_xray_case_is_classified_on_the_xray_page():
    kind = KINDS[Modality.XRAY]
    assert kind_of(CaseFactory(modality=Modality.XRAY)) is kind
    assert CaseFactory().kind is kind  # the default modality
    assert kind.job is Prediction
    assert kind.task == Task.CLASSIFICATION
    assert kind.template == "cases/case_detail.html"
    assert kind.result_files is page_files.xray_result_files
    assert kind.explain == "apps.explain.jobs.xray_explanation"
    assert kind.explain_methods == ALL_METHODS
    assert kind.method_choices == list(Explanation.Method.choices)
    assert (kind.name, kind.label) == ("X-ray", "Chest X-ray")


def test_a_ct_case_is_segmented_on_the_ct_page():
    kind = KINDS[Modality.CT]
    assert CaseFactory(modality=Modality.CT).kind is kind
    assert kind_of("ct") is kind
    assert kind.job is Segmentation
    assert kind.task == Task.CT_SEGMENTATION
    assert kind.template == "cases/case_detail_ct.html"
    assert kind.result_files is page_files.ct_result_files
    assert kind.explain == "apps.explain.jobs.ct_explanation"
    assert kind.explain_methods == (Explanation.Method.GRADCAM,)
    assert kind.method_choices == [("gradcam", "Grad-CAM")]
    assert (kind.name, kind.label) == ("CT", "Chest CT")


def test_each_kind_names_an_explanation_step_that_exists():
    assert {kind.explain for kind in KINDS.values()} == {
        "apps.explain.jobs.xray_explanation",
        "apps.explain.jobs.ct_explanation",
    }
    assert callable(explain_jobs.xray_explanation)
    assert callable(explain_jobs.ct_explanation)


def test_an_unknown_modality_has_no_kind():
    with pytest.raises(LookupError, match="unknown modality 'mri'; expected one of xray, ct"):
        kind_of("mri")


@pytest.mark.parametrize("modality", [Modality.XRAY, Modality.CT])
def test_a_kind_starts_its_own_job_after_the_commit(modality, django_capture_on_commit_callbacks):
    kind = KINDS[modality]
    image = CaseImageFactory(case=CaseFactory(modality=modality))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = kind.start_job(image)
    assert type(job) is kind.job
    assert job.status == "pending"
    assert len(callbacks) == 1  # its message, sent once the upload commits
    assert kind.current_job(image) == job
    assert kind.result_of(image) is None  # nothing done yet
    other = next(k for k in KINDS.values() if k is not kind)
    assert other.current_job(image) is None


@pytest.mark.parametrize(
    ("modality", "template"),
    [(Modality.XRAY, "cases/case_detail.html"), (Modality.CT, "cases/case_detail_ct.html")],
)
def test_the_case_page_is_the_kinds_template(login, clinician, modality, template):
    case = CaseFactory(owner=clinician, modality=modality)
    CaseImageFactory(case=case)
    response = login(clinician).get(reverse("cases:detail", args=[case.pk]))
    assert response.status_code == 200
    assert template in _templates(response)
    other = {"cases/case_detail.html", "cases/case_detail_ct.html"} - {template}
    assert not other & set(_templates(response))


def test_the_ct_page_names_its_kind(login, clinician):
    case = CaseFactory(owner=clinician, modality=Modality.CT)
    html = login(clinician).get(reverse("cases:detail", args=[case.pk])).content.decode()
    assert '<span class="badge" data-modality="ct">Chest CT</span>' in html
    assert f"<title>Case {case.pk} (CT)" in html


def test_a_ct_slice_is_offered_grad_cam_only():
    image = CaseImageFactory(case=CaseFactory(modality=Modality.CT))
    with pytest.raises(ExplanationUnavailable) as refused:
        request_explanation(image=image, method="occlusion")
    assert str(refused.value) == (
        "For CT slices the explanation is Grad-CAM of the infection output; "
        "Occlusion sensitivity is offered for X-rays only."
    )
    with pytest.raises(ExplanationUnavailable, match="no finished segmentation yet"):
        request_explanation(image=image, method="gradcam")


def test_an_xray_is_explained_by_the_model_of_its_prediction():
    prediction = PredictionFactory(image=CaseImageFactory())
    explanation = request_explanation(image=prediction.image, method="occlusion")
    assert explanation.model_version == prediction.model_version
    bare = CaseImageFactory()
    with pytest.raises(ExplanationUnavailable, match="no finished prediction yet"):
        request_explanation(image=bare, method="gradcam")


# -- a new kind is a new row --------------------------------------------------------

FAKE_PAGE = """{% extends "base.html" %}
{% block title %}Case {{ case.pk }} ({{ kind.name }}){% endblock %}
{% block content %}
<h1 data-kind="{{ kind.modality }}">{{ kind.label }}</h1>
{% for image in case.images.all %}{% with job=image.latest_segmentation %}
<p data-job="{{ job.pk }}" data-status="{{ job.status }}">{{ job.title }}</p>
{% endwith %}{% endfor %}
<select>{% for value, label in methods %}
<option value="{{ value }}">{{ label }}</option>{% endfor %}</select>
{% endblock %}
"""


@pytest.fixture
def fake_kind(monkeypatch, settings, tmp_path) -> StudyKind:
    """A study kind that exists only as a row of the table (and its page template): X-ray
    pictures read by the CT segmenter, say, on a page of their own."""
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "case_detail.html").write_text(FAKE_PAGE)
    engine = settings.TEMPLATES[0]
    settings.TEMPLATES = [{**engine, "DIRS": [tmp_path, *engine["DIRS"]]}]
    row = StudyKind(
        modality="fake",
        name="fake study",
        label="Fake chest study",
        job=Segmentation,
        task=Task.CT_SEGMENTATION,
        template="fake/case_detail.html",
        result_files=page_files.ct_result_files,
        explain="apps.explain.jobs.ct_explanation",
        explain_methods=(Explanation.Method.GRADCAM, Explanation.Method.OCCLUSION),
        no_result_yet="This fake study has no result yet.",
        method_refused="{method} is not for fake studies.",
    )
    monkeypatch.setitem(KINDS, "fake", row)
    return row


def test_a_case_of_a_new_kind_gets_its_job_and_its_page(
    fake_kind, login, clinician, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        case = services.create_case(
            owner=clinician, files=[upload_of("2168a917.jpg")], modality="fake"
        )
    assert case.modality == "fake"
    assert case.kind is fake_kind
    image = case.images.get()
    job = Segmentation.objects.get(image=image)  # the row's job, not a classification
    assert not Prediction.objects.filter(image=image).exists()
    assert job.status == "pending"
    assert len(callbacks) == 1  # queued on the row job's queue once the upload commits

    response = login(clinician).get(reverse("cases:detail", args=[case.pk]))
    assert response.status_code == 200
    assert "fake/case_detail.html" in _templates(response)
    assert "cases/case_detail.html" not in _templates(response)
    html = response.content.decode()
    assert '<h1 data-kind="fake">Fake chest study</h1>' in html
    assert f'data-job="{job.pk}" data-status="pending"' in html
    assert '<option value="gradcam">Grad-CAM</option>' in html
    assert '<option value="occlusion">Occlusion sensitivity</option>' in html
    assert 'value="deconvnet"' not in html  # only the row's methods

    with pytest.raises(ExplanationUnavailable) as no_result:
        request_explanation(image=image, method="occlusion")
    assert str(no_result.value) == "This fake study has no result yet."
    with pytest.raises(ExplanationUnavailable) as not_offered:
        request_explanation(image=image, method="deconvnet")
    assert str(not_offered.value) == "Deconvolution is not for fake studies."


def test_a_new_kind_is_refused_once_its_row_is_gone(clinician):
    from apps.cases.validation import UploadRejected

    with pytest.raises(UploadRejected, match="unknown modality 'fake'"):
        services.create_case(owner=clinician, files=[upload_of("2168a917.jpg")], modality="fake")


def test_no_code_outside_the_table_branches_on_the_modality():
    """X-ray vs CT is decided by the table's rows, not by inline branches."""
    import re
    from pathlib import Path

    apps = Path(__file__).resolve().parents[2] / "apps"
    branch = re.compile(r'modality\s*[!=]=\s*(["\']ct["\']|Modality\.CT)|\bis_ct\b')
    found = [
        f"{path.relative_to(apps)}:{n}"
        for path in apps.rglob("*.py")
        if path.name != "kinds.py" and "migrations" not in path.parts
        for n, line in enumerate(path.read_text().splitlines(), start=1)
        if branch.search(line)
    ]
    assert found == []
