from django.db import migrations

from apps.accounts.migrations import _roles

ROLE_PERMISSIONS_V1 = {
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
        "cases.view_prediction",
    ),
}


def remove_role_groups(apps, schema_editor):
    from apps.accounts.roles import ROLES

    apps.get_model("auth", "Group").objects.filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("cases", "0001_initial"),
        ("registry", "0001_initial"),
        ("explain", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(_roles.role_groups_with(ROLE_PERMISSIONS_V1), remove_role_groups)
    ]
