from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.services import create_demo_users


class Command(BaseCommand):
    help = (
        "Create one demo user per role (idempotent) and print their credentials. "
        "The embedded demo only: runs only with DEBUG=1."
    )

    def handle(self, *args, **options):
        if not settings.DEBUG:
            raise CommandError(
                "seed_demo creates users whose passwords are published in the README; it runs "
                "only with DEBUG=1 (the embedded demo), never against a production database. "
                "Create real users with `manage.py createsuperuser` and the admin."
            )
        rows = create_demo_users()
        self.stdout.write("Demo users (for the embedded demo only):")
        for username, password, role in rows:
            self.stdout.write(f"  {role:<12} username={username:<12} password={password}")
