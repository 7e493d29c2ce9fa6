from __future__ import annotations

from django import forms

from apps.generator.models import MAX_SAMPLES, GeneratorVersion
from ml.data.labels import CLASS_CHOICES

SIZES = [(n, str(n)) for n in (4, 8, 16, MAX_SAMPLES)]


class GridForm(forms.Form):
    version = forms.ModelChoiceField(
        queryset=GeneratorVersion.objects.all(), empty_label=None, label="Generator version"
    )
    label = forms.ChoiceField(choices=CLASS_CHOICES, label="Class")
    n = forms.TypedChoiceField(choices=SIZES, coerce=int, initial=16, label="Samples")
    seed = forms.IntegerField(
        min_value=0,
        max_value=2**31 - 1,
        initial=0,
        label="Seed",
        help_text="The same version, class, number and seed give the same images.",
    )
