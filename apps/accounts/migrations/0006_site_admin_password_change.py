import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

from apps.accounts.migrations import _roles

ROLE_PERMISSIONS_V4 = {
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
}


def remove_site_admin_group(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="site_admin").delete()


class Migration(migrations.Migration):
    """The site_admin role (users and roles page) and the password-change-required mark
    (demo and invited users change their password before anything else)."""

    dependencies = [
        ("accounts", "0005_adjudicator_role"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="PasswordChangeRequired",
            fields=[
                (
                    "user",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        primary_key=True,
                        related_name="password_change_required",
                        serialize=False,
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                ("reason", models.CharField(max_length=100)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
        ),
        migrations.RunPython(_roles.role_groups_with(ROLE_PERMISSIONS_V4), remove_site_admin_group),
    ]
