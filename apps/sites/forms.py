"""The sites pages' forms: input checks only; the services decide and write."""

from __future__ import annotations

from django import forms
from django.contrib.auth import get_user_model

from apps.sites.models import Site


def target_choices() -> list[tuple[str, str]]:
    from ml.models.local_validation import FIGURE_NAMES, TARGETS

    return [(name, f"{FIGURE_NAMES.get(name, name)}: {text}") for name, text in TARGETS.items()]


class TargetForm(forms.Form):
    """A target and its goal, e.g. COVID-19 sensitivity >= 0.90."""

    target = forms.ChoiceField(choices=target_choices)
    goal = forms.FloatField(
        initial=0.9,
        help_text="A share above 0 and at most 1: what the figure must reach on the site's labels.",
        widget=forms.NumberInput(attrs={"step": "0.01", "min": "0.01", "max": "1"}),
    )

    def clean_goal(self) -> float:
        goal = self.cleaned_data["goal"]
        if not 0.0 < goal <= 1.0:
            raise forms.ValidationError("The goal must be a share in (0, 1].")
        return goal


class SiteCreateForm(forms.Form):
    name = forms.CharField(max_length=200)
    slug = forms.SlugField(max_length=50, required=False, help_text="Empty: from the name.")


class MoveUserForm(forms.Form):
    user = forms.ModelChoiceField(queryset=get_user_model().objects.order_by("username"))
    site = forms.ModelChoiceField(queryset=Site.objects.all())


class VersionChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj) -> str:
        return f"#{obj.pk} {obj.name} ({obj.status})"


def _classifier_versions():
    from apps.models.models import ModelVersion, Task

    return ModelVersion.objects.of_task(Task.CLASSIFICATION).exclude(
        status=ModelVersion.Status.FAILED
    )


class StudyChoiceForm(forms.Form):
    """Which site and which classifier version a study is of."""

    site = forms.ModelChoiceField(queryset=Site.objects.all())
    model = VersionChoiceField(queryset=None)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].queryset = _classifier_versions()  # type: ignore[attr-defined]
