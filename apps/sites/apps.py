from django.apps import AppConfig


class SitesConfig(AppConfig):
    name = "apps.sites"
    label = "sites"
    verbose_name = "Sites and local validation"

    def ready(self) -> None:
        # Every new account joins the default site; a case without a site takes its owner's.
        from apps.sites import signals  # noqa: F401
