"""Model-admin pages for the training data: snapshots (counts by split x class x source,
what changed since the previous one), their export, and one image's provenance."""

from __future__ import annotations

import tempfile

from django.contrib import messages
from django.http import FileResponse, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from apps.accounts.roles import MODEL_ADMIN, role_required
from apps.cases import provenance
from apps.models import export
from apps.models.models import DatasetSnapshot, Split
from ml.data.labels import CLASS_DISPLAY, CLASSES


def count_table(rows: list[dict]) -> list[dict]:
    """Rows of (split, source) with a count per class and a total, from the
    ``by_split_class_source`` rows of a snapshot's counts or changes."""
    table: dict[tuple[str, str], dict] = {}
    order: dict[str, int] = {s: i for i, s in enumerate((Split.TRAIN, Split.VAL, Split.TEST))}
    for row in rows:
        entry = table.setdefault(
            (row["split"], row["source"]),
            {"split": row["split"], "source": row["source"], "by_class": dict.fromkeys(CLASSES, 0)},
        )
        entry["by_class"][row["label"]] = entry["by_class"].get(row["label"], 0) + row["n"]
    result = []
    for (split, source), entry in sorted(
        table.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])
    ):
        counts = [entry["by_class"].get(c, 0) for c in CLASSES]
        result.append({"split": split, "source": source, "counts": counts, "total": sum(counts)})
    return result


def _rows_from_items(snapshot: DatasetSnapshot) -> list[dict]:
    """Counts of a snapshot made before they were stored by source."""
    from django.db.models import Count

    grouped = snapshot.items.values("split", "label", "source").annotate(n=Count("pk"))
    return [dict(row) for row in grouped]


def _item_diff(snapshot: DatasetSnapshot) -> dict | None:
    """Added, removed and relabelled items against the parent, from the items
    themselves (for snapshots made before ``changes`` was recorded)."""
    if snapshot.parent_id is None:
        return None
    now = {i.key: i for i in snapshot.items.all()}
    before = {i.key: i for i in snapshot.parent.items.all()}  # type: ignore[union-attr]
    return {
        "added": [now[k] for k in sorted(now.keys() - before.keys())],
        "removed": [before[k] for k in sorted(before.keys() - now.keys())],
        "relabelled": [
            {"key": k, "split": now[k].split, "from": before[k].label, "to": now[k].label}
            for k in sorted(now.keys() & before.keys())
            if now[k].label != before[k].label
        ],
    }


def _image_link(key: str) -> str | None:
    if key.startswith("case-"):
        return reverse("registry:image-provenance", args=[int(key.removeprefix("case-"))])
    return None


@require_GET
@role_required(MODEL_ADMIN)
def snapshot_list(request: HttpRequest) -> HttpResponse:
    image = request.GET.get("image", "").strip()
    if image:
        if image.isdigit() and provenance.readable_images().filter(pk=int(image)).exists():
            return redirect("registry:image-provenance", pk=int(image))
        messages.error(request, f"No clinical image #{image} in a training set.")
    snapshots = DatasetSnapshot.objects.select_related("created_by")
    return render(
        request,
        "registry/snapshots.html",
        {"snapshots": snapshots, "splits": Split.values},
    )


@require_GET
@role_required(MODEL_ADMIN)
def snapshot_detail(request: HttpRequest, pk: int) -> HttpResponse:
    snapshot = get_object_or_404(DatasetSnapshot.objects.select_related("parent"), pk=pk)
    rows = snapshot.counts.get("by_split_class_source") or _rows_from_items(snapshot)
    changes = snapshot.changes or {}
    for entry in (*changes.get("relabelled", []), *changes.get("moved", [])):
        entry["link"] = _image_link(entry["key"])
    for entry in changes.get("duplicates_left_out", []):
        entry["link"] = _image_link(entry["key"])
    return render(
        request,
        "registry/snapshot.html",
        {
            "snapshot": snapshot,
            "classes": [(c, CLASS_DISPLAY[c]) for c in CLASSES],
            "table": count_table(rows),
            "changes": changes,
            "added": count_table(changes.get("added", [])),
            "diff": None if changes else _item_diff(snapshot),
            "runs": snapshot.runs.select_related("model_version"),
        },
    )


def zip_response(snapshot: DatasetSnapshot | None, user) -> FileResponse:
    """The export as a zip download, spooled to a temporary file (deleted when sent)."""
    handle = tempfile.TemporaryFile(prefix="cxr-export-")  # noqa: SIM115 - the response closes it
    try:
        export.export_to_zip(snapshot=snapshot, fh=handle, actor=user)
    except BaseException:
        handle.close()
        raise
    handle.seek(0)
    return FileResponse(
        handle,
        as_attachment=True,
        filename=f"{export.export_name(snapshot)}.zip",
        content_type="application/zip",
    )


@require_GET
@role_required(MODEL_ADMIN)
def snapshot_export(request: HttpRequest, pk: int) -> HttpResponse | FileResponse:
    snapshot = get_object_or_404(DatasetSnapshot, pk=pk)
    try:
        return zip_response(snapshot, request.user)
    except export.ExportError as exc:
        messages.error(request, str(exc))
        return redirect("registry:snapshot", pk=pk)


@require_GET
@role_required(MODEL_ADMIN)
def confirmed_export(request: HttpRequest) -> HttpResponse | FileResponse:
    try:
        return zip_response(None, request.user)
    except export.ExportError as exc:
        messages.error(request, str(exc))
        return redirect("registry:snapshots")


@require_GET
@role_required(MODEL_ADMIN)
def image_provenance_page(request: HttpRequest, pk: int) -> HttpResponse:
    """An image that is training data (as in the model inspector); any other is a 404."""
    image = get_object_or_404(provenance.readable_images(), pk=pk)
    chain = provenance.provenance_viewed(user=request.user, image=image, request=request)
    return render(request, "registry/provenance.html", {"p": chain})
