"""Template helpers for heatmap display: the colour legend matches the rendered layers."""

from __future__ import annotations

from django import template

register = template.Library()


@register.inclusion_tag("explain/_legend.html")
def heatmap_legend():
    """The colour scale; its gradient is in static/css/app.css (a stylesheet, not a style
    attribute, for the Content-Security-Policy), equal to ``css_gradient()`` (tested)."""
    return {}


@register.filter
def percent(value) -> str:
    """0.8734 -> '87.3%' (one decimal: bars are read, not compared to the last digit)."""
    try:
        return f"{100 * float(value):.1f}%"
    except (TypeError, ValueError):
        return "—"


@register.filter
def class_display(name: str) -> str:
    """'covid19' -> 'COVID-19'; unknown names are shown as they are."""
    from ml.data.labels import CLASS_DISPLAY

    return CLASS_DISPLAY.get(name, name)
