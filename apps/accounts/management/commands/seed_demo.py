from django.core.management.base import BaseCommand

from apps.accounts.services import create_demo_users


class Command(BaseCommand):
    help = "Create one demo user per role (idempotent) and print their credentials."

    def handle(self, *args, **options):
        rows = create_demo_users()
        self.stdout.write("Demo users (for the embedded demo only):")
        for username, password, role in rows:
            self.stdout.write(f"  {role:<12} username={username:<12} password={password}")
