from django import forms

from apps.cases.models import Modality


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """A file field that takes several files (Django docs, "Uploading multiple files")."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault(
            "widget",
            MultipleFileInput(attrs={"accept": "image/png,image/jpeg,.dcm,application/dicom"}),
        )
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        # Only "were files sent?" here: the content checks (empty, size,
        # format, corruption) live in apps.cases.validation so the form and
        # the API refuse a file with the same message.
        files = [f for f in (data if isinstance(data, list | tuple) else [data]) if f]
        if self.required and not files:
            raise forms.ValidationError("Choose at least one image.", code="required")
        return files


class CaseUploadForm(forms.Form):
    modality = forms.ChoiceField(
        label="Kind of study",
        choices=Modality.choices,
        initial=Modality.XRAY,
        required=False,
        widget=forms.RadioSelect,
        help_text="A DICOM file's own Modality decides for it (CT slices are segmented, "
        "X-rays classified); mark PNG and JPEG CT slices as CT.",
    )
    images = MultipleFileField(label="Chest X-ray images (PNG, JPEG or DICOM) or CT slices")

    def clean_modality(self) -> str:
        return self.cleaned_data.get("modality") or Modality.XRAY

    patient_ref = forms.CharField(
        label="Pseudonymous patient reference",
        max_length=64,
        required=False,
        help_text="Optional. Never a name or a hospital ID.",
    )
    notes = forms.CharField(
        label="Notes", widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=5000
    )
