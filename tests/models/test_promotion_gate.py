"""The promotion gate on the shortcut tests, and where their figures are shown."""

import json
from dataclasses import replace

import pytest
from django.urls import reverse
from rest_framework.test import APIClient

from apps.accounts.models import AuditEvent
from apps.models import services
from apps.models.models import ModelVersion
from ml.models.artifacts import card_path
from ml.models.metrics import EvaluationResult, MassInLungs, ShortcutMetrics
from tests.models.test_registry import make_variant


def shortcuts(blanked=0.40, masses=(0.75, 0.72)) -> ShortcutMetrics:
    return ShortcutMetrics(
        n=100,
        lungs_blanked_accuracy=blanked,
        lungs_blanked_accuracy_ci=(blanked - 0.05, blanked + 0.05),
        lungs_blanked_macro_f1=0.3,
        chance_accuracy=0.4,
        gradcam_mass_in_lungs={
            source: MassInLungs(mean=mass, ci=(mass - 0.02, mass + 0.02), n=50)
            for source, mass in zip(("covid-chestxray", "nih-cxr14"), masses, strict=True)
        },
    )


def metrics(shortcut_metrics=None, macro_f1=0.7) -> dict:
    return EvaluationResult(macro_f1=macro_f1, n=100, shortcuts=shortcut_metrics).to_json()


@pytest.fixture
def production(production_model):
    ModelVersion.objects.filter(pk=production_model.pk).update(metrics=metrics(shortcuts()))
    production_model.refresh_from_db()
    return production_model


def candidate_with(production_model, shortcut_metrics, name="candidate"):
    return ModelVersion.objects.create(
        name=name,
        sha256=name[0] * 64,
        artifact=production_model.artifact.name,
        metrics=metrics(shortcut_metrics),
    )


# --- the rule ------------------------------------------------------------------------------------


def test_higher_lungs_blanked_accuracy_than_production_is_refused():
    reasons = services.shortcut_gate_refusals(shortcuts(blanked=0.52), shortcuts(blanked=0.40))
    assert len(reasons) == 1
    assert "lungs blanked it is still 0.520 accurate, more than production's 0.400" in reasons[0]


def test_lower_mass_in_the_lungs_on_any_source_than_production_is_refused():
    # production's lowest source: 0.72; the candidate's: 0.65 on nih-cxr14
    reasons = services.shortcut_gate_refusals(shortcuts(masses=(0.9, 0.65)), shortcuts())
    assert len(reasons) == 1
    assert "lowest per-source Grad-CAM mass in the lungs is 0.650, below" in reasons[0]
    assert "0.720" in reasons[0]


def test_equal_or_better_shortcut_tests_pass():
    assert services.shortcut_gate_refusals(shortcuts(), shortcuts()) == []
    better = shortcuts(blanked=0.35, masses=(0.8, 0.8))
    assert services.shortcut_gate_refusals(better, shortcuts()) == []


def test_the_tolerances_come_from_the_settings(settings):
    worse = shortcuts(blanked=0.43, masses=(0.75, 0.69))
    assert len(services.shortcut_gate_refusals(worse, shortcuts())) == 2
    settings.CXR_GATE_BLANKED_ACC_TOLERANCE = 0.05
    settings.CXR_GATE_LUNG_MASS_TOLERANCE = 0.05
    assert services.shortcut_gate_refusals(worse, shortcuts()) == []


def test_a_candidate_without_shortcut_tests_is_refused_when_production_has_them():
    reasons = services.shortcut_gate_refusals(None, shortcuts())
    assert reasons == [
        "It has no shortcut tests, but production has: evaluate it with lung masks "
        "(preprocessing version 2) before promoting."
    ]
    unmeasured_mass = ShortcutMetrics(n=10, lungs_blanked_accuracy=0.3)
    assert services.shortcut_gate_refusals(unmeasured_mass, shortcuts()) == [
        "Its Grad-CAM mass in the lungs was not measured; production's was."
    ]


def _held_out(shares: dict[str, float]) -> ShortcutMetrics:
    from ml.models.metrics import HeldOutNormals

    return replace(
        shortcuts(),
        held_out_normals={
            source: HeldOutNormals(source=source, n=100, called_normal=round(share * 100), ci=None)
            for source, share in shares.items()
        },
    )


def test_fewer_held_out_normals_called_normal_than_production_is_refused(settings):
    production = _held_out({"nih-cxr14": 0.40, "teaching-normal": 0.82})
    worse = _held_out({"nih-cxr14": 0.45, "teaching-normal": 0.70})
    reasons = services.shortcut_gate_refusals(worse, production)
    assert len(reasons) == 1
    assert "without the normals of teaching-normal, its recipe calls 0.700" in reasons[0]
    assert services.shortcut_gate_refusals(production, production) == []
    settings.CXR_GATE_HELD_OUT_TOLERANCE = 0.15
    assert services.shortcut_gate_refusals(worse, production) == []


def test_a_candidate_never_trained_without_a_sites_normals_is_refused():
    production = _held_out({"teaching-normal": 0.82})
    reasons = services.shortcut_gate_refusals(shortcuts(), production)
    assert reasons == [
        "Its recipe was not trained without the normals of teaching-normal; production's "
        "was (it called 0.820 of them normal)."
    ]


def test_production_without_shortcut_tests_refuses_nothing():
    assert services.shortcut_gate_refusals(shortcuts(blanked=0.9), None) == []
    assert services.shortcut_gate_refusals(None, None) == []


def test_the_automatic_gate_adds_the_shortcut_tests_to_the_metrics():
    production = metrics(shortcuts())
    same_metrics_worse_shortcuts = metrics(shortcuts(blanked=0.6))
    reasons = services.auto_promotion_refusals(
        {"candidate": same_metrics_worse_shortcuts, "production": production}
    )
    assert len(reasons) == 1
    assert "lungs blanked" in reasons[0]
    better = metrics(shortcuts(blanked=0.3), macro_f1=0.75)
    assert services.auto_promotion_refusals({"candidate": better, "production": production}) == []


@pytest.mark.django_db
def test_the_automatic_gate_falls_back_to_productions_stored_shortcut_tests(production):
    # The run measured production on its split without shortcut tests (an older model).
    comparison = {"candidate": metrics(shortcuts(blanked=0.6)), "production": metrics(None)}
    assert services.auto_promotion_refusals(comparison) == []
    reasons = services.auto_promotion_refusals(comparison, production)
    assert len(reasons) == 1
    assert "more than production's 0.400" in reasons[0]


# --- promotion -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_promotion_of_a_candidate_with_worse_shortcut_tests_is_refused(production, model_admin):
    candidate = candidate_with(production, shortcuts(blanked=0.55))
    with pytest.raises(services.PromotionGateError, match="lungs blanked") as refused:
        services.promote(version=candidate, actor=model_admin)
    assert len(refused.value.reasons) == 1
    production.refresh_from_db()
    candidate.refresh_from_db()
    assert (production.status, candidate.status) == ("production", "candidate")
    assert not AuditEvent.objects.filter(action="model.promote", actor=model_admin).exists()


@pytest.mark.django_db
def test_promotion_of_a_candidate_with_no_worse_shortcut_tests_goes_through(
    production, model_admin
):
    candidate = candidate_with(production, shortcuts(blanked=0.38, masses=(0.8, 0.74)))
    assert services.promotion_refusals(candidate) == []
    services.promote(version=candidate, actor=model_admin)
    candidate.refresh_from_db()
    assert candidate.status == "production"


@pytest.mark.django_db
def test_an_old_candidate_without_shortcut_tests_is_refused_and_rollback_is_not_gated(
    production, model_admin
):
    old = candidate_with(production, None, name="old")
    assert services.promotion_refusals(old)[0].startswith("It has no shortcut tests")
    with pytest.raises(services.PromotionGateError):
        services.promote(version=old, actor=model_admin)
    # A version that served before comes back by rollback, whatever its tests.
    ModelVersion.objects.filter(pk=old.pk).update(
        status="archived", promoted_at=production.created_at
    )
    restored = services.rollback(actor=model_admin)
    assert restored == old


@pytest.mark.django_db
def test_the_api_answers_409_with_the_gates_reason(production, model_admin):
    candidate = candidate_with(production, shortcuts(masses=(0.5, 0.9)))
    client = APIClient()
    client.force_authenticate(model_admin)
    response = client.post(f"/api/v1/models/{candidate.pk}/promote/", {"reason": "try"})
    assert response.status_code == 409
    message = response.json()["error"]["message"]
    assert message.startswith(f"#{candidate.pk} candidate cannot be promoted:")
    assert "Grad-CAM mass in the lungs is 0.500, below production's 0.720" in message
    candidate.refresh_from_db()
    assert candidate.status == "candidate"


@pytest.mark.django_db
def test_the_promote_page_shows_the_refusal_instead_of_the_button(login, model_admin, production):
    candidate = candidate_with(production, shortcuts(blanked=0.6))
    client = login(model_admin)
    url = reverse("registry:promote", args=[candidate.pk])
    page = client.get(url).content.decode()
    assert "The promotion gate refuses this version" in page
    assert "still 0.600 accurate, more than production&#x27;s 0.400" in page
    assert "Promote to production</button>" not in page
    response = client.post(url, follow=True)
    assert "cannot be promoted" in response.content.decode()
    candidate.refresh_from_db()
    assert candidate.status == "candidate"


@pytest.mark.django_db
def test_the_promote_page_of_an_acceptable_candidate_has_the_button(login, model_admin, production):
    candidate = candidate_with(production, shortcuts())
    page = login(model_admin).get(reverse("registry:promote", args=[candidate.pk]))
    text = page.content.decode()
    assert "Promote to production</button>" in text
    assert "data-gate-refusals" not in text


# --- where the figures are shown -----------------------------------------------------------------


@pytest.mark.django_db
def test_version_page_shows_each_shortcut_figure_with_interval_target_and_verdict(
    login, model_admin, production
):
    page = login(model_admin).get(reverse("registry:version", args=[production.pk]))
    text = page.content.decode()
    assert "data-shortcuts" in text
    assert "Lungs blanked: accuracy" in text
    # 0.400 [0.350, 0.450], target <= 0.45: met
    assert '<td class="num better">0.400 <small class="inline">[0.350, 0.450]</small>' in text
    assert "&lt;= 0.45" in text
    # nih-cxr14 mass 0.72 >= 0.70: met; the within-source AUROC was not measured
    assert "Grad-CAM mass in the lungs: nih-cxr14" in text
    assert "NIH: pneumonia vs normal, ROC-AUC" in text
    assert ">not measured</td>" in text


@pytest.mark.django_db
def test_a_version_without_shortcut_tests_says_not_measured(login, model_admin, production_model):
    ModelVersion.objects.filter(pk=production_model.pk).update(metrics=metrics(None))
    text = login(model_admin).get(reverse("registry:version", args=[production_model.pk]))
    assert "Shortcut tests: not measured for this version" in text.content.decode()


@pytest.mark.django_db
def test_compare_page_puts_both_versions_shortcut_tests_side_by_side(
    login, model_admin, production
):
    old = candidate_with(production, None, name="old")
    worse = candidate_with(production, shortcuts(blanked=0.7), name="worse")
    client = login(model_admin)
    text = client.get(reverse("registry:compare"), {"a": production.pk, "b": worse.pk})
    page = text.content.decode()
    assert f"A: #{production.pk}" in page
    assert '<td class="num worse">0.700' in page  # B's blanked accuracy misses the target
    assert '<td class="num better">0.400' in page  # A's meets it
    text = client.get(reverse("registry:compare"), {"a": production.pk, "b": old.pk})
    page = text.content.decode()
    assert "data-shortcuts" in page
    assert ">not measured</td>" in page  # the old version's column


# --- registration --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_card_in_the_typed_format_is_stored_as_it_is(tmp_path):
    artifact = make_variant(tmp_path / "typed.keras", b"typed")
    card = json.loads(card_path(artifact).read_text())
    card["metrics"] = metrics(shortcuts())
    card_path(artifact).write_text(json.dumps(card))

    version = services.register_artifact(artifact_path=artifact)

    assert version.metrics == card["metrics"]
    assert version.evaluation is not None
    assert version.evaluation.shortcuts == shortcuts()


@pytest.mark.django_db
def test_a_card_with_unreadable_metrics_is_refused(tmp_path):
    artifact = make_variant(tmp_path / "bad.keras", b"bad")
    card = json.loads(card_path(artifact).read_text())
    card["metrics"] = {"macro_f1": "excellent"}
    card_path(artifact).write_text(json.dumps(card))
    with pytest.raises(services.RegistryError, match="unreadable metrics: macro_f1 must be"):
        services.register_artifact(artifact_path=artifact)
    assert not ModelVersion.objects.exists()
