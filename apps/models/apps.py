from django.apps import AppConfig


class RegistryConfig(AppConfig):
    # The package is apps/models (fixed by the product layout); the label
    # "registry" keeps names readable: registry.ModelVersion, not models.Model…
    name = "apps.models"
    label = "registry"
    verbose_name = "Model registry"
