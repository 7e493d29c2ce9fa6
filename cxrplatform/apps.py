from django.apps import AppConfig


class PlatformConfig(AppConfig):
    """The platform itself (no models): what every process does once Django is set up."""

    name = "cxrplatform"
    verbose_name = "Platform"

    def ready(self) -> None:
        # Every app's Celery tasks are registered before the first request or thread
        # looks one up (cxrplatform.jobs.registered_task).
        from cxrplatform.celery import import_task_modules

        import_task_modules()
