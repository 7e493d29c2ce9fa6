import django.db.models.deletion
from django.db import migrations, models


def cases_to_their_owners_site(apps, schema_editor):
    """Every existing case goes to its owner's site (the default site: sites/0002 put
    every existing account there)."""
    Case = apps.get_model("cases", "Case")  # noqa: N806
    Site = apps.get_model("sites", "Site")  # noqa: N806
    SiteMembership = apps.get_model("sites", "SiteMembership")  # noqa: N806
    default = Site.objects.filter(is_default=True).first()
    if default is None:
        default = Site.objects.create(name="Default site", slug="default", is_default=True)
    site_of = dict(SiteMembership.objects.values_list("user_id", "site_id"))
    by_site: dict[int, list[int]] = {}
    for pk, owner_id in Case.objects.filter(site__isnull=True).values_list("pk", "owner_id"):
        by_site.setdefault(site_of.get(owner_id, default.pk), []).append(pk)
    for site_id, pks in by_site.items():
        Case.objects.filter(pk__in=pks).update(site_id=site_id)


class Migration(migrations.Migration):
    """Each case records its site; each prediction the site operating point (if any)
    that made its label."""

    dependencies = [
        ("cases", "0012_caseimage_status_held"),
        ("sites", "0002_default_site"),
    ]

    operations = [
        migrations.AddField(
            model_name="case",
            name="site",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="cases",
                to="sites.site",
            ),
        ),
        migrations.RunPython(cases_to_their_owners_site, migrations.RunPython.noop),
        migrations.AlterField(
            model_name="case",
            name="site",
            field=models.ForeignKey(
                help_text="Where the case was uploaded: its uploader's site then "
                "(apps.sites), never a DICOM file's institution.",
                on_delete=django.db.models.deletion.PROTECT,
                related_name="cases",
                to="sites.site",
            ),
        ),
        migrations.AddField(
            model_name="prediction",
            name="operating_point",
            field=models.ForeignKey(
                blank=True,
                help_text="The case's site operating point that made the label; null: the "
                "model's own point.",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="predictions",
                to="sites.siteoperatingpoint",
            ),
        ),
    ]
