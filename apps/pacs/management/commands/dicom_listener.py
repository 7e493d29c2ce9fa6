"""``manage.py dicom_listener``: the DICOM Storage SCP, a process of its own."""

from __future__ import annotations

import signal
import threading

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = (
        "Receive studies from a PACS or modality by C-STORE (CXR_DICOM_AE_TITLE, "
        "CXR_DICOM_PORT, CXR_DICOM_ALLOWED); each becomes a case of CXR_DICOM_SERVICE_USER."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("--host", default=settings.CXR_DICOM_BIND)
        parser.add_argument("--port", type=int, default=settings.CXR_DICOM_PORT)
        parser.add_argument(
            "--create-service-user",
            action="store_true",
            help="create CXR_DICOM_SERVICE_USER (a clinician of the default site) if missing",
        )

    def handle(self, *args, **options) -> None:
        from apps.pacs.intake import ServiceUserMissingError, service_user
        from apps.pacs.scp import Listener

        if options["create_service_user"]:
            self._create_service_user()
        try:
            service_user()
        except ServiceUserMissingError as exc:
            raise CommandError(str(exc)) from None
        listener = Listener(
            ae_title=settings.CXR_DICOM_AE_TITLE, host=options["host"], port=options["port"]
        )
        listener.start()
        self.stdout.write(
            f"DICOM listener {settings.CXR_DICOM_AE_TITLE} ready on "
            f"{options['host']}:{options['port']}",
        )
        self.stdout.flush()
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        listener.stop()

    def _create_service_user(self) -> None:
        from django.contrib.auth.models import Group

        from apps.accounts.models import record

        user_model = get_user_model()
        username = settings.CXR_DICOM_SERVICE_USER
        if user_model.objects.filter(username=username).exists():
            return
        user = user_model.objects.create_user(username=username)
        user.set_unusable_password()
        user.save()
        user.groups.add(*Group.objects.filter(name="clinician"))
        record(actor=None, action="user.roles", target=user, after={"roles": ["clinician"]})
        self.stdout.write(f"created the DICOM service account {username!r} (clinician)")
