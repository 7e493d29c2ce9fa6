"""A signed report as a one-page PDF (matplotlib's PDF backend: no new dependency)."""

from __future__ import annotations

import io
import textwrap

from apps.cases.models import Case
from apps.reading.models import Report


def report_pdf(case: Case, report: Report, history: list[Report]) -> bytes:
    from matplotlib.backends.backend_pdf import FigureCanvasPdf
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8.27, 11.69))  # A4, portrait
    FigureCanvasPdf(figure)
    lines: list[tuple[str, float, str]] = [
        (f"Radiology report: case {case.pk}", 16, "bold"),
        (f"Site: {case.site.name}    Modality: {case.get_modality_display()}", 10, "normal"),
        (f"Patient reference: {case.patient_ref or '-'}", 10, "normal"),
        (f"Uploaded: {case.created_at:%Y-%m-%d %H:%M} UTC", 10, "normal"),
        ("", 10, "normal"),
        (f"Impression: {report.get_impression_display()}", 13, "bold"),
        (f"Urgency: {report.get_urgency_display()}", 11, "normal"),
        ("", 10, "normal"),
        ("Findings:", 11, "bold"),
    ]
    for paragraph in (report.text or "-").splitlines() or ["-"]:
        lines += [(line, 10, "normal") for line in textwrap.wrap(paragraph, 95) or [""]]
    lines += [
        ("", 10, "normal"),
        (
            f"Signed by {report.author.get_username()} on {report.signed_at:%Y-%m-%d %H:%M} UTC"
            f" (version {report.version})",
            10,
            "bold",
        ),
    ]
    if report.amendment_reason:
        lines.append((f"Amended: {report.amendment_reason}", 10, "normal"))
    if len(history) > 1:
        lines += [("", 10, "normal"), ("Earlier versions:", 10, "bold")]
        for old in history:
            if old.version != report.version:
                lines.append(
                    (
                        f"v{old.version} {old.signed_at:%Y-%m-%d %H:%M} "
                        f"{old.get_impression_display()} by {old.author.get_username()}",
                        9,
                        "normal",
                    )
                )
    lines += [
        ("", 10, "normal"),
        ("Research prototype. Not a diagnostic device.", 8, "normal"),
    ]
    y = 0.95
    for text, size, weight in lines:
        figure.text(0.08, y, text, fontsize=size, fontweight=weight, family="DejaVu Sans")
        y -= size / 11.69 / 72 * 1.6
        if y < 0.04:
            break
    buffer = io.BytesIO()
    figure.savefig(buffer, format="pdf", metadata={"Title": f"Report case {case.pk}"})
    return buffer.getvalue()
