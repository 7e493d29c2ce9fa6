from django import forms


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class MultipleFileField(forms.FileField):
    """A file field that takes several files (Django docs, "Uploading multiple files")."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("widget", MultipleFileInput(attrs={"accept": "image/png,image/jpeg"}))
        super().__init__(*args, **kwargs)

    def clean(self, data, initial=None):
        single = super().clean
        if isinstance(data, list | tuple):
            return [single(item, initial) for item in data]
        return [single(data, initial)]


class CaseUploadForm(forms.Form):
    images = MultipleFileField(label="Chest X-ray images (PNG or JPEG)")
    patient_ref = forms.CharField(
        label="Pseudonymous patient reference",
        max_length=64,
        required=False,
        help_text="Optional. Never a name or a hospital ID.",
    )
    notes = forms.CharField(label="Notes", widget=forms.Textarea(attrs={"rows": 3}), required=False, max_length=5000)
