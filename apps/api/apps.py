from django.apps import AppConfig


class ApiConfig(AppConfig):
    """REST API v1: thin DRF views over the same services as the web pages."""

    name = "apps.api"
    label = "api"
    verbose_name = "REST API"
