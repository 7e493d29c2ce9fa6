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
    patient_ref = forms.CharField(
        label="Patient reference (as stored)",
        required=False,
        max_length=64,
        help_text="The reference shown on the case, e.g. PSEUDO-… or the clinic's own.",
    )
    hospital_id = forms.CharField(
        label="or hospital patient ID",
        required=False,
        max_length=64,
        help_text="The DICOM PatientID: turned into its pseudonym as uploads are.",
        widget=forms.TextInput(attrs={"autocomplete": "off"}),
    )
    # Set by the "Erase" button; without it the page only counts the cases.
    confirm = forms.BooleanField(required=False)

    def clean(self) -> dict:
        data = super().clean() or {}
        try:
            data["reference"] = retention.reference_for(
                patient_ref=data.get("patient_ref", ""), hospital_id=data.get("hospital_id", "")
            )
        except retention.RetentionRefused as exc:
            raise forms.ValidationError(str(exc)) from None
        return data


@require_http_methods(["GET", "POST"])
@role_required(MODEL_ADMIN)
def erasure(request: HttpRequest) -> HttpResponse:
    """Find a patient's cases (POST without confirm: counts only), then erase them."""
    form = ErasureForm(request.POST or None)
    context: dict = {"form": form}
    status = 200
    if request.method == "POST":
        if not form.is_valid():
            status = 400
        else:
            reference = form.cleaned_data["reference"]
            cases = retention.cases_of_patient(reference)
            if form.cleaned_data["confirm"]:
                result = retention.erase_patient(actor=request.user, reference=reference)
                messages.success(
                    request,
                    f"Erased {len(result['cases'])} case(s), {result['images']} image(s) and "
                    f"{result['files']} file(s); {result['withdrawn_snapshot_items']} snapshot "
                    "item(s) withdrawn. The audit log records the request.",
                )
                return redirect("cases:erasure")
            context["found"] = {
                "cases": cases.count(),
                "images": CaseImage.all_objects.filter(case__in=cases).count(),
            }
    return render(request, "cases/erasure.html", context, status=status)
