"""Every account belongs to a site from the moment it exists, and every case has one.

A new user joins the default site (a site admin's creation moves them to the creator's
site right after, ``apps.accounts.users.create_user``); a case saved without a site
takes its owner's (``apps.cases.services.create_case`` sets it explicitly; this covers
every other path that creates a case: the admin, fixtures, management commands).
"""

from __future__ import annotations

from django.conf import settings
from django.db.models.signals import post_save, pre_save
from django.dispatch import receiver


@receiver(post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="sites.new_user_joins")
def _new_user_joins_default_site(sender, instance, created: bool, raw: bool = False, **kwargs):
    if not created or raw:
        return
    from apps.sites.models import SiteMembership
    from apps.sites.services import default_site

    SiteMembership.objects.get_or_create(user=instance, defaults={"site": default_site()})


@receiver(pre_save, sender="cases.Case", dispatch_uid="sites.case_takes_owner_site")
def _case_takes_owner_site(sender, instance, raw: bool = False, **kwargs):
    if raw or getattr(instance, "site_id", 0) is not None or instance.owner_id is None:
        return
    from apps.sites.services import site_id_of_user

    instance.site_id = site_id_of_user(instance.owner_id)
