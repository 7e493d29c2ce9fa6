"""CXR platform project package.

Importing the Celery app here makes ``@shared_task``-style discovery and
``transaction.on_commit(task.apply_async)`` work in the web process too.
"""

from cxrplatform.celery import app as celery_app

__all__ = ("celery_app",)
