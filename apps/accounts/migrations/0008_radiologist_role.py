from django.db import migrations

from apps.accounts.migrations import _roles

ROLE_PERMISSIONS_V5 = {
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
    "site_admin": (
        "auth.view_user",
        "auth.add_user",
        "auth.change_user",
        "auth.view_group",
    ),
    "radiologist": (
        "cases.view_case",
        "cases.view_caseimage",
        "cases.view_prediction",
        "explain.view_explanation",
        "reading.view_report",
        "reading.add_report",
    ),
}


def remove_radiologist_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="radiologist").delete()


class Migration(migrations.Migration):
    """The radiologist role: reads its site's worklist and signs reports (apps.reading)."""

    dependencies = [
        ("accounts", "0007_audit_label_notes_keyed"),
        ("reading", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(_roles.role_groups_with(ROLE_PERMISSIONS_V5), remove_radiologist_group)
    ]
