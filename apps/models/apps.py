import os
from typing import Any

from django.apps import AppConfig


def _warm_up_model(**_kwargs: Any) -> None:
    """Load the production model when a worker process starts, not on its first task.

    Only for workers that consume the ``inference`` queue (set by
    ``CXR_WARM_MODEL=1``, which the Procfile and docker-compose set), so
    training and housekeeping workers do not pay for TensorFlow.
    """
    if os.environ.get("CXR_WARM_MODEL", "0") != "1":
        return
    from apps.models.serving import warm_up  # worker code: loads TensorFlow lazily

    warm_up()


class RegistryConfig(AppConfig):
    # The package is apps/models (fixed by the product layout); the label
    # "registry" keeps names readable: registry.ModelVersion, not models.Model…
    name = "apps.models"
    label = "registry"
    verbose_name = "Model registry"

    def ready(self) -> None:
        # The registry owns "which model serves": its app config, not the Celery
        # config, asks each new worker pool process to load it. The worker runs
        # django.setup() (so this) before it forks the pool processes.
        from celery.signals import worker_process_init

        worker_process_init.connect(_warm_up_model, dispatch_uid="registry.warm_up_model")
