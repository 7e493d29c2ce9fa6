from django.apps import AppConfig


class CasesConfig(AppConfig):
    name = "apps.cases"
    label = "cases"
    verbose_name = "Cases"

    def ready(self) -> None:
        # Case.updated_at moves with every change of what a case shows (apps.cases.freshness).
        from apps.cases import freshness

        freshness.connect()
