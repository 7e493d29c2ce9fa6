from django.apps import AppConfig


class ExplainConfig(AppConfig):
    name = "apps.explain"
    label = "explain"
    verbose_name = "Explanations"
