from django.db import migrations

from apps.accounts.migrations import _roles

ROLE_PERMISSIONS_V2 = {
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
}


class Migration(migrations.Migration):
    """Give model_admin the permissions on datasets, training runs and the audit log."""

    dependencies = [
        ("accounts", "0002_auditevent"),
        ("registry", "0002_datasets_and_training_runs"),
        ("cases", "0002_label_confirmation"),
    ]

    operations = [
        migrations.RunPython(
            _roles.role_groups_with(ROLE_PERMISSIONS_V2), migrations.RunPython.noop
        )
    ]
