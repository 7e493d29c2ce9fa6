"""Shared by the role migrations: (re)create the role groups with their permissions."""

from django.contrib.auth.management import create_permissions


def role_groups_with(mapping):
    """A RunPython function that syncs the groups to ``mapping`` (frozen per migration)."""

    def create_role_groups(apps, schema_editor):
        # Permissions are normally created after all migrations (post_migrate);
        # create them now so the groups can reference them.
        for app_config in apps.get_app_configs():
            app_config.models_module = True
            create_permissions(app_config, apps=apps, verbosity=0)
            app_config.models_module = None

        from apps.accounts.services import sync_role_groups

        sync_role_groups(
            apps.get_model("auth", "Group"), apps.get_model("auth", "Permission"), mapping
        )

    return create_role_groups
