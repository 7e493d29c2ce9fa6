"""Every domain refusal is one family (``cxrplatform.errors.Refused``), and the API
answers each with a 409 in its error body, in one place (the exception handler)."""

from __future__ import annotations

import pytest

from apps.api.exceptions import api_exception_handler
from apps.cases.labelling import LabelRejected, PolicyRejected
from apps.cases.retention import RetentionRefused
from apps.explain.services import ExplanationUnavailable
from apps.generator.services import GeneratorUnavailable
from apps.models.datasets import NoReferenceImages
from apps.models.export import ExportError
from apps.models.services import RegistryError
from cxrplatform.errors import Refused

REFUSALS = [
    LabelRejected,
    PolicyRejected,
    RetentionRefused,
    ExplanationUnavailable,
    GeneratorUnavailable,
    NoReferenceImages,
    ExportError,
    RegistryError,
]


@pytest.mark.parametrize("refusal", REFUSALS, ids=lambda cls: cls.__name__)
def test_each_domain_refusal_is_a_409_conflict_with_the_services_message(refusal):
    assert issubclass(refusal, Refused)
    response = api_exception_handler(refusal("Not now: wait for the running one."), {})
    assert response is not None
    assert response.status_code == 409
    assert response.data == {
        "error": {
            "status": 409,
            "code": "conflict",
            "message": "Not now: wait for the running one.",
            "fields": {},
        }
    }
