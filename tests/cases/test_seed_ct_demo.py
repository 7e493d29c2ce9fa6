"""`manage.py seed_ct_demo` (run by `make demo`): the bundled CT segmenter as production
for its task and a CT case of the demo clinician, idempotently."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from apps.cases.models import Case, Segmentation
from apps.models.models import ModelVersion

pytestmark = pytest.mark.django_db


def _run(*names: str) -> str:
    out = StringIO()
    for name in names:
        call_command(name, stdout=out)
    return out.getvalue()


@pytest.mark.slow
def test_the_demo_registers_the_ct_model_and_makes_a_ct_case(settings, ct_tiny_model):
    settings.DEBUG = True
    settings.CXR_BUNDLED_CT_MODEL = ct_tiny_model
    output = _run("seed_demo", "seed_ct_demo")
    version = ModelVersion.objects.production(task="ct_segmentation")
    assert version is not None
    assert ModelVersion.objects.production() is None  # the classifier's task is its own
    assert f"#{version.pk} ct-tiny serves CT slices" in output
    case = Case.objects.get(owner__username="clinician", modality="ct")
    assert case.images.count() >= 3
    assert Segmentation.objects.filter(image__case=case, status="pending").count() == (
        case.images.count()
    )
    again = _run("seed_ct_demo")
    assert "a production version is registered already" in again
    assert "there is one already" in again
    assert Case.objects.filter(modality="ct").count() == 1


@pytest.mark.slow
def test_without_a_bundled_ct_model_the_demo_says_so(settings, tmp_path):
    settings.DEBUG = True
    settings.CXR_BUNDLED_CT_MODEL = tmp_path / "missing.keras"
    output = _run("seed_demo", "seed_ct_demo")
    assert "no bundled model at" in output
    assert "python -m ml ct train" in output
    assert ModelVersion.objects.count() == 0
    assert Case.objects.filter(modality="ct").count() == 1


def test_the_demo_command_refuses_to_run_without_debug(settings):
    settings.DEBUG = False
    with pytest.raises(Exception, match="only with DEBUG=1"):
        _run("seed_ct_demo")
