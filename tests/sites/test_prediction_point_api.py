"""The REST case and image answers name the site operating point that made a
prediction's label (id, number, what it reaches), null for the model's own point."""

from __future__ import annotations

from apps.sites.models import SiteOperatingPoint
from tests.factories import CaseFactory, CaseImageFactory, PredictionFactory


def test_a_prediction_names_the_site_point_that_made_its_label(
    site_a, clinician_a, version, api_client_of
):
    point = SiteOperatingPoint.objects.create(
        site=site_a,
        model_version=version,
        number=2,
        offsets={"covid19": 0.0, "pneumonia": 0.0, "normal": -1.5},
        target="covid19_sensitivity",
        goal=0.9,
        reached=True,
        n_images=16,
        active=True,
    )
    at_point = PredictionFactory(
        image=CaseImageFactory(case=CaseFactory(owner=clinician_a)),
        model_version=version,
        operating_point=point,
    )
    own = PredictionFactory(
        image=CaseImageFactory(case=CaseFactory(owner=clinician_a)), model_version=version
    )
    api = api_client_of(clinician_a)
    body = api.get(f"/api/v1/cases/{at_point.image.case_id}/").json()
    named = body["images"][0]["prediction"]["operating_point"]
    assert named == {"id": point.pk, "number": 2, "description": point.description}
    assert named["description"].endswith(">= 0.90")
    image = api.get(f"/api/v1/images/{own.image_id}/").json()
    assert image["prediction"]["operating_point"] is None
