from django.conf import settings
from django.db import migrations


def default_site_for_everyone(apps, schema_editor):
    """One default site, and every existing account in it."""
    Site = apps.get_model("sites", "Site")
    SiteMembership = apps.get_model("sites", "SiteMembership")
    user_model = apps.get_model(*settings.AUTH_USER_MODEL.split("."))
    site = Site.objects.filter(is_default=True).first()
    if site is None:
        site = Site.objects.create(name="Default site", slug="default", is_default=True)
    members = set(SiteMembership.objects.values_list("user_id", flat=True))
    SiteMembership.objects.bulk_create(
        [
            SiteMembership(user_id=pk, site=site)
            for pk in user_model.objects.values_list("pk", flat=True)
            if pk not in members
        ]
    )


class Migration(migrations.Migration):
    """Existing data goes to a default site: every account (cases follow their owner's
    site in cases/0013)."""

    dependencies = [
        ("sites", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(default_site_for_everyone, migrations.RunPython.noop),
    ]
