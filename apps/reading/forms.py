from __future__ import annotations

from django import forms

from apps.cases.models import Modality
from apps.reading.models import Impression, ReadingStatus, Urgency


class WorklistFilter(forms.Form):
    status = forms.ChoiceField(required=False, choices=[("", "Any status"), *ReadingStatus.choices])
    modality = forms.ChoiceField(required=False, choices=[("", "Any modality"), *Modality.choices])
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )
    priority = forms.ChoiceField(
        required=False, choices=[("", "Any priority"), ("high", "High priority only")]
    )
    order = forms.ChoiceField(
        required=False,
        label="Order",
        choices=[("priority", "Model priority"), ("newest", "Newest first")],
    )


class ReportForm(forms.Form):
    impression = forms.ChoiceField(choices=Impression.choices, widget=forms.RadioSelect)
    text = forms.CharField(
        required=False,
        label="Findings",
        max_length=5000,
        widget=forms.Textarea(attrs={"rows": 5}),
    )
    urgency = forms.ChoiceField(choices=Urgency.choices, initial=Urgency.ROUTINE)
    amendment_reason = forms.CharField(
        required=False,
        label="Reason for the amendment (needed once a report is signed)",
        max_length=1000,
    )
