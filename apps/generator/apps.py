from django.apps import AppConfig


class GeneratorConfig(AppConfig):
    name = "apps.generator"
    label = "generator"
    verbose_name = "Synthetic image generator"
