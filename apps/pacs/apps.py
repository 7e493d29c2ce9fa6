from django.apps import AppConfig


class PacsConfig(AppConfig):
    """The PACS connection: the DICOM listener, the protected return mapping and the
    return of results (Structured Report and Secondary Capture) to the PACS."""

    name = "apps.pacs"
    label = "pacs"
    verbose_name = "PACS connection"

    def ready(self) -> None:
        from apps.pacs import checks, signals  # noqa: F401 - checks registers itself

        signals.connect()
