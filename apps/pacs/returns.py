"""Results back to the PACS: a Structured Report and a Secondary Capture per prediction.

Both objects belong to the original study (its Study Instance UID and patient, read from
the protected mapping, ``apps.pacs.models.StudyLink``) in a series of their own, built
with highdicom:

* the **Structured Report** (Comprehensive SR): the class probabilities, the label, the
  operating point, the model version and its sha256, and the research-prototype notice;
* the **Secondary Capture**: the image with its Grad-CAM overlay (the plain image when
  the explanation failed) under a burned-in "RESEARCH PROTOTYPE - NOT FOR DIAGNOSIS"
  banner.

Each object's SOP Instance UID is made once (``ReturnedObject``) and reused by every
retry, so the PACS stores each result once however often it is sent.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.conf import settings
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import generate_uid

log = logging.getLogger(__name__)

BANNER = "RESEARCH PROTOTYPE - NOT FOR DIAGNOSIS"
MANUFACTURER = "CXR platform"
SERIES_NUMBER = {"sr": 9901, "sc": 9902}
REQUIRED_TYPE2 = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)  # fmt: skip
SCHEME = "99CXR"  # the platform's private coding scheme for its report's items


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        ae, sep, rest = text.partition("@")
        host, colon, port = rest.rpartition(":")
        if not sep or not colon or not ae or not host or not port.isdigit():
            raise ValueError(f"{text!r} is not AE@host:port")
        return cls(ae, host, int(port))


def destination() -> Destination | str | None:
    """Where results go: a C-STORE peer, a DICOMweb root (``http(s)://``, STOW-RS) or None."""
    text = settings.CXR_PACS_DESTINATION
    if not text:
        return None
    if text.startswith(("http://", "https://")):
        return text
    return Destination.parse(text)


def describe(target: Destination | str) -> str:
    if isinstance(target, str):
        return target
    return f"{target.ae_title}@{target.host}:{target.port}"


class SendFailedError(RuntimeError):
    """The destination did not take an object (down, refused the association or the store)."""


def reference_dataset(study: dict[str, str], instance: dict[str, str]) -> Dataset:
    """A header-only stand-in for the original instance: what highdicom copies the patient
    and study from, and what the report names as its evidence."""
    ds = Dataset()
    for keyword, value in {**study, **instance}.items():
        if value:
            setattr(ds, keyword, value)
    for keyword in REQUIRED_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, None)
    ds.Modality = instance.get("Modality") or "DX"
    return ds


def _code(value: str, meaning: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning[:64])


def operating_point_text(prediction: Any) -> str:
    point = prediction.operating_point
    if point is None:
        return "model default (the class of highest probability)"
    return (
        f"site operating point {point.number} of site {point.site_id}: "
        f"{point.target} goal {point.goal:g}"
    )[:1000]


def build_sr(
    *,
    study: dict[str, str],
    instance: dict[str, str],
    prediction: Any,
    sop_uid: str,
    series_uid: str,
) -> Dataset:
    from highdicom.sr import (
        CodedConcept,
        ComprehensiveSR,
        ContainerContentItem,
        NumContentItem,
        TextContentItem,
    )

    version = prediction.model_version
    container = ContainerContentItem(name=_code("cxr-report", "Chest X-ray AI result"))

    def text(code: str, meaning: str, value: str) -> TextContentItem:
        return TextContentItem(
            name=_code(code, meaning), value=value[:1000], relationship_type="CONTAINS"
        )

    items: list = [
        text("cxr-notice", "Notice", BANNER),
        text("cxr-label", "Label", prediction.label),
        text("cxr-op-point", "Operating point", operating_point_text(prediction)),
        text("cxr-model", "Model version", version.name),
        text("cxr-model-sha256", "Model sha256", version.sha256),
    ]
    unit = CodedConcept(value="1", scheme_designator="UCUM", meaning="no units")
    for name, probability in sorted(prediction.probabilities.items()):
        items.append(
            NumContentItem(
                name=_code(f"cxr-p-{name}"[:16], f"Probability of {name}"),
                value=round(float(probability), 6),
                unit=unit,
                relationship_type="CONTAINS",
            )
        )
    container.ContentSequence = DicomSequence(items)
    sr = ComprehensiveSR(
        evidence=[reference_dataset(study, instance)],
        content=container,
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER["sr"],
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        is_complete=True,
    )
    sr.SeriesDescription = "CXR AI result (research prototype)"
    return sr


def banner_picture(rgb: np.ndarray) -> np.ndarray:
    """The picture with the research-prototype banner burned in above it."""
    from PIL import Image, ImageDraw, ImageFont

    picture = Image.fromarray(rgb).convert("RGB")
    width = picture.width
    size = max(12, width // 32)
    try:
        font: Any = ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        font = ImageFont.load_default()
    band = size * 2
    out = Image.new("RGB", (width, picture.height + band), (160, 0, 0))
    out.paste(picture, (0, band))
    draw = ImageDraw.Draw(out)
    left, top, right, bottom = draw.textbbox((0, 0), BANNER, font=font)
    draw.text(
        ((width - (right - left)) // 2, (band - (bottom - top)) // 2 - top), BANNER,
        fill=(255, 255, 255), font=font,
    )  # fmt: skip
    return np.asarray(out, dtype=np.uint8)


def picture_of(prediction: Any, explanation: Any | None) -> np.ndarray:
    from PIL import Image

    field = explanation.overlay if explanation is not None and explanation.overlay else None
    source = field or prediction.image.file
    with source.open("rb") as fh:
        picture = Image.open(io.BytesIO(fh.read())).convert("RGB")
    return banner_picture(np.asarray(picture, dtype=np.uint8))


def build_sc(
    *, study: dict[str, str], instance: dict[str, str], pixels: np.ndarray, sop_uid: str,
    series_uid: str,
) -> Dataset:  # fmt: skip
    from highdicom.sc import SCImage

    sc = SCImage.from_ref_dataset(
        ref_dataset=reference_dataset(study, instance),
        pixel_array=pixels,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_uid,
        series_number=SERIES_NUMBER["sc"],
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.SeriesDescription = "CXR AI heatmap (research prototype)"
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = "CHEST"
    return sc


def new_uid() -> str:
    return generate_uid(prefix=settings.CXR_PACS_UID_PREFIX or None)


def send(datasets: list[Dataset], target: Destination | str) -> None:
    """C-STORE every dataset in one association (STOW-RS to a DICOMweb root); raises
    SendFailedError unless all were stored."""
    from pynetdicom import AE

    if isinstance(target, str):
        from apps.pacs.dicomweb import store

        store(datasets, target)
        return

    ae = AE(ae_title=settings.CXR_DICOM_AE_TITLE)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = 10
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate(target.host, target.port, ae_title=target.ae_title)
    if not assoc.is_established:
        raise SendFailedError(f"no association with {target.ae_title}@{target.host}:{target.port}")
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            # Success, or a warning (coercion of attributes, elements discarded).
            if code is None or not (
                code == 0x0000 or code in (0x0001, 0x0107, 0x0116) or 0xB000 <= code <= 0xBFFF
            ):
                raise SendFailedError(
                    f"{target.ae_title} answered C-STORE with status "
                    f"{'none' if code is None else hex(code)}"
                )
    finally:
        if assoc.is_established:
            assoc.release()
