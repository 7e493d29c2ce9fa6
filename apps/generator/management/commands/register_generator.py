"""``manage.py register_generator [PATH]``: make a trained generator available to the
generator page (default: the bundled one). Idempotent by the file's sha256."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.generator.services import BUNDLED_GENERATOR, GeneratorUnavailable, register_generator


class Command(BaseCommand):
    help = "Register a trained generator (.keras + card) for the synthetic-image page."

    def add_arguments(self, parser) -> None:
        parser.add_argument("path", nargs="?", type=Path, default=BUNDLED_GENERATOR)

    def handle(self, *args, path: Path, **options) -> None:
        try:
            version, created = register_generator(path)
        except GeneratorUnavailable as exc:
            raise CommandError(str(exc)) from None
        verb = "registered" if created else "already registered"
        self.stdout.write(f"generator {version} {verb} (#{version.pk})")
