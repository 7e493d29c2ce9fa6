from django.db import migrations

from apps.accounts.migrations import _roles

ROLE_PERMISSIONS_V3 = {
    "clinician": (
        "cases.add_case",
        "cases.view_case",
        "cases.add_caseimage",
        "cases.view_caseimage",
        "cases.view_prediction",
        "explain.add_explanation",
        "explain.view_explanation",
    ),
    "annotator": (
        "cases.view_caseimage",
        "cases.view_prediction",
        "cases.add_expertlabel",
        "cases.change_expertlabel",
        "cases.view_expertlabel",
        "explain.view_explanation",
    ),
    "model_admin": (
        "registry.view_modelversion",
        "registry.add_modelversion",
        "registry.change_modelversion",
        "registry.view_trainingrun",
        "registry.add_trainingrun",
        "registry.view_datasetsnapshot",
        "registry.add_datasetsnapshot",
        "registry.view_referenceimage",
        "registry.add_referenceimage",
        "cases.view_prediction",
        "accounts.view_auditevent",
    ),
    "adjudicator": (
        "cases.view_caseimage",
        "cases.view_expertlabel",
        "cases.add_adjudication",
        "cases.change_adjudication",
        "cases.view_adjudication",
    ),
}


def remove_adjudicator_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="adjudicator").delete()


class Migration(migrations.Migration):
    """The adjudicator role: decides disputed images (agreement policy "adjudication")."""

    dependencies = [
        ("accounts", "0004_drop_plaintext_api_tokens"),
        ("cases", "0005_adjudication"),
    ]

    operations = [
        migrations.RunPython(_roles.role_groups_with(ROLE_PERMISSIONS_V3), remove_adjudicator_group)
    ]
