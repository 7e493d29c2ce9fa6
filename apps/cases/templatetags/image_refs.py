"""How the readers' pages name an image: its opaque reference, never its id."""

from __future__ import annotations

from django import template

from apps.cases import access
from apps.cases.models import CaseImage

register = template.Library()


@register.filter
def ref(image: CaseImage) -> str:
    """The image's reference (``apps.cases.access.image_ref``): what its URLs take."""
    return access.image_ref(image)


@register.filter
def short_ref(image: CaseImage) -> str:
    """The first digits of the reference: what the page calls the image."""
    return access.short_ref(image)
