from django.db import migrations

from apps.accounts.migrations import _roles


class Migration(migrations.Migration):
    """Give model_admin the permissions on datasets, training runs and the audit log."""

    dependencies = [
        ("accounts", "0002_auditevent"),
        ("registry", "0002_datasets_and_training_runs"),
        ("cases", "0002_label_confirmation"),
    ]

    operations = [migrations.RunPython(_roles.create_role_groups, migrations.RunPython.noop)]
