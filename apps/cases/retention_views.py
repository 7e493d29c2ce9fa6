"""Deleting a case (its clinician) and erasure by patient reference (model admins).
Thin: the services are ``apps.cases.retention``."""

from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from apps.accounts.roles import CLINICIAN, MODEL_ADMIN, role_required
from apps.cases import retention
from apps.cases.access import own_cases
from apps.cases.models import CaseImage


@require_http_methods(["GET", "POST"])
@role_required(CLINICIAN)
def case_delete(request: HttpRequest, pk: int) -> HttpResponse:
    """GET: what deleting means; POST: delete. Another clinician's case is a 404."""
    case = get_object_or_404(own_cases(request.user), pk=pk)
    if request.method == "POST":
        retention.delete_case(actor=request.user, case=case)
        messages.success(request, f"Case {case.pk} was deleted.")
        return redirect("cases:list")
    return render(
        request,
        "cases/case_delete.html",
        {
            "case": case,
            "images": CaseImage.objects.filter(case=case).count(),
            "retention_days": settings.CXR_DELETED_CASE_RETENTION_DAYS,
        },
    )


class ErasureForm(forms.Form):
    hospital_id = forms.CharField(
        label="Hospital patient ID",
        required=False,
        max_length=64,
        help_text="The DICOM PatientID: finds every case uploaded as DICOM, also where the "
        "clinician typed their own reference.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    patient_ref = forms.CharField(
        label="and/or patient reference",
        required=False,
        max_length=64,
        help_text="The reference shown on a case (PX-… or the clinic's own): the only way "
        "to find a case uploaded as PNG or JPEG.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    # Set by the "Erase" button; without it the page only counts the cases.
    confirm = forms.BooleanField(required=False)

    def clean(self) -> dict:
        data = super().clean() or {}
        try:
            retention.check_request(
                patient_ref=data.get("patient_ref", ""), hospital_id=data.get("hospital_id", "")
            )
        except retention.RetentionRefused as exc:
            raise forms.ValidationError(str(exc)) from None
        return data


def _erased_message(erasure: retention.Erasure) -> str:
    purged = erasure.purged
    return (
        " ".join(erasure.lookup.statements)
        + f" Erased {len(purged.cases)} case(s), {purged.images} image(s) and "
        f"{purged.files} file(s); {purged.withdrawn_snapshot_items} snapshot item(s) "
        "withdrawn. The audit log records the request."
    )


@require_http_methods(["GET", "POST"])
@role_required(MODEL_ADMIN)
def erasure(request: HttpRequest) -> HttpResponse:
    """Find a patient's cases (POST without confirm: counts, audited), then erase them;
    say what each identifier found and what it did not."""
    form = ErasureForm(request.POST or None)
    context: dict = {"form": form}
    status = 200
    if request.method == "POST":
        if not form.is_valid():
            status = 400
        else:
            identifiers = {
                "patient_ref": form.cleaned_data["patient_ref"],
                "hospital_id": form.cleaned_data["hospital_id"],
            }
            if form.cleaned_data["confirm"]:
                done = retention.erase_patient(actor=request.user, **identifiers)
                if done.purged.cases:
                    messages.success(request, _erased_message(done))
                else:
                    messages.warning(
                        request,
                        " ".join(done.lookup.statements)
                        + " Nothing was erased. The audit log records the request.",
                    )
                return redirect("cases:erasure")
            lookup = retention.look_up_patient(actor=request.user, **identifiers)
            context["found"] = {
                "cases": len(lookup.cases),
                "images": lookup.images,
                "by": [
                    {
                        "identifier": found.identifier,
                        "cases": len(found.cases),
                        "statement": found.statement,
                    }
                    for found in lookup.found
                ],
            }
    return render(request, "cases/erasure.html", context, status=status)
