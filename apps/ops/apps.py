from django.apps import AppConfig


class OpsConfig(AppConfig):
    """Operations: backups and restores (``manage.py backup`` / ``restore``)."""

    name = "apps.ops"
    label = "ops"
    verbose_name = "Operations"
