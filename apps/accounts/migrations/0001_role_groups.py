from django.db import migrations

from apps.accounts.migrations import _roles


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

    operations = [migrations.RunPython(_roles.create_role_groups, remove_role_groups)]
