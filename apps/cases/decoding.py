"""Decode uploaded pixels in a bounded place: a short-lived child process.

Decoders are large C libraries (libjpeg, libpng, OpenJPEG, CharLS) fed with
bytes from the internet. Whatever a file makes them do, it happens in a child
process with a hard address-space ceiling (``RLIMIT_AS``,
``CXR_DECODE_MEMORY_MB``), a CPU-time ceiling and a wall-clock timeout
(``CXR_DECODE_TIMEOUT_S``): a decompression bomb, a decoder that allocates
what a forged header declares, or a decoder crash ends that child with a
refusal, and the web process only ever holds the upload's bytes and what comes
back, never decoded pixels.

What the child does with one file, once the web process has checked a PNG/JPEG
header (format, declared size): decode it (a PNG/JPEG with its EXIF
orientation, a DICOM through its LUTs to grayscale; a CT slice through its lung
window), run the modality check (CT slice or X-ray?, ``ml.ct.modality``) and, for
an X-ray, the out-of-distribution gate and the view check on the decoded image,
and encode what is stored (a PNG of the decoded pixels). A DICOM file is parsed
here and nowhere else: its header (of any size: tens of thousands of elements,
deep sequences) costs this child's memory and CPU, not the web process's. The
child routes it by its Modality, checks its header (attributes, burned-in
annotation, the frame size inside compressed pixel data) before decoding, cleans
its pixel data (apps.cases.pixel_data) and sends back an allow-listed copy
(apps.cases.deidentify.allow_listed: a few dozen elements) that the web process
de-identifies with its key. It answers one JSON line, then the stored PNG's bytes
(``png_bytes`` of them), then, for a DICOM, the allow-listed DICOM file.

The child runs ``python -m apps.cases.decoding``; this module imports neither
Django nor TensorFlow at module level, so the child starts in well under a
second.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ml.serving.checks import load_input_check

# The child's environment: nothing of the web process's (no secrets), one
# thread per numerical library, few malloc arenas (each reserves address space).
CHILD_ENV_KEEP = ("PATH", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT")
# The parts of a request the decoder server warms up with (decoder_server.serve).
WARM_KEYS = ("ood_gate", "view_check", "modality_check", "min_side", "max_pixels")
CHILD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "2",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONHASHSEED": "0",
}
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The CT study's modality value (apps.cases.models.Modality.CT), spelled here: the child
# imports no Django. The web process treats each kind of study by its row of the table in
# apps.cases.kinds; the child reads and checks an upload marked or routed CT its own way.
CT = "ct"


class DecodeRefused(Exception):  # noqa: N818 - reads as what happened to the file
    """The child refused the file (or died on it); ``status`` is the HTTP status."""

    def __init__(self, problem: str, *, status: int = 400) -> None:
        self.problem = problem
        self.status = status
        super().__init__(problem)


@dataclass(frozen=True)
class Decoded:
    width: int
    height: int
    stored: bytes  # what CaseImage.file stores: a PNG of the decoded pixels
    verdict: str | None  # the OOD gate's: None (a chest X-ray), "blank", "colour", "appearance"
    lateral: bool  # the view check's (only asked when the gate accepted the image)
    modality_problem: str | None = None  # the modality check's refusal of a CT upload
    ct_slice: bool = False  # an upload marked X-ray that the modality check takes for CT
    window: str = ""  # a CT DICOM's display window, for the log
    transfer_syntax: str = ""  # DICOM only, for the log
    photometric: str = ""  # DICOM only, for the log
    note: str = ""  # what was done to the upload that its viewer should know (CMYK -> gray)
    synthetic: str = ""  # why it is one of the platform's generated images (ml.generate.watermark)
    dicom: bytes = b""  # DICOM only: the allow-listed file with clean pixel data (no keyed step)
    modality: str = ""  # DICOM only: what its header routed it to ("xray" or "ct")
    modality_source: str = ""  # DICOM only: "header" or "marked"
    text_found: bool = False  # the burned-in text check read words in the margins
    text_unchecked: str = ""  # why the text check, though on, could not run


def decode_upload(kind: str, content: bytes, modality: str = "xray") -> Decoded:
    """Decode one upload (``kind``: "picture" or "dicom") in a bounded child process;
    ``modality`` ("xray" or "ct") is what the upload is to be read as."""
    from django.conf import settings

    memory_mb = settings.CXR_DECODE_MEMORY_MB
    timeout = settings.CXR_DECODE_TIMEOUT_S
    request = {
        "kind": kind,
        "max_pixels": settings.CXR_MAX_IMAGE_PIXELS,
        "max_inflated": max_inflated_bytes(settings.CXR_MAX_IMAGE_PIXELS),
        "min_side": settings.CXR_MIN_IMAGE_SIDE,
        "ood_gate": None if settings.CXR_OOD_GATE is None else str(settings.CXR_OOD_GATE),
        "view_check": None if settings.CXR_VIEW_CHECK is None else str(settings.CXR_VIEW_CHECK),
        "modality": modality,
        "modality_check": (
            None if settings.CXR_MODALITY_CHECK is None else str(settings.CXR_MODALITY_CHECK)
        ),
        "text_check": bool(settings.CXR_TEXT_CHECK),
        "memory_bytes": memory_mb * 1024 * 1024,
        "cpu_seconds": timeout,
    }
    env = {key: os.environ[key] for key in CHILD_ENV_KEEP if key in os.environ}
    env.update(CHILD_ENV, PYTHONPATH=str(PROJECT_ROOT))
    # What the decoder server (started with the first request's environment) warms up.
    env["CXR_DECODER_WARM"] = json.dumps({key: request[key] for key in WARM_KEYS})
    payload = json.dumps(request).encode() + b"\n" + content
    del content
    try:
        out, returncode, err = _run_child(payload, timeout, env, settings.CXR_DECODE_SERVER)
    except TimeoutError:
        raise DecodeRefused(
            f"the image took longer than {timeout} s to decode; it is refused."
        ) from None
    line, _, rest = out.partition(b"\n")
    try:
        reply = json.loads(line)
    except ValueError:
        reply = None
    if returncode != 0 or not isinstance(reply, dict):
        raise DecodeRefused(_death(returncode, err, memory_mb))
    if not reply.get("ok"):
        raise DecodeRefused(str(reply["problem"]), status=int(reply["status"]))
    png_bytes = int(reply.get("png_bytes", len(rest)))
    return Decoded(
        width=int(reply["width"]),
        height=int(reply["height"]),
        stored=rest[:png_bytes],
        dicom=rest[png_bytes:],
        modality=str(reply.get("modality") or ""),
        modality_source=str(reply.get("modality_source") or ""),
        text_found=bool(reply.get("text_found")),
        text_unchecked=str(reply.get("text_unchecked") or ""),
        verdict=reply.get("verdict"),
        lateral=bool(reply.get("lateral")),
        modality_problem=reply.get("modality_problem"),
        ct_slice=bool(reply.get("ct_slice")),
        window=str(reply.get("window", "")),
        transfer_syntax=str(reply.get("transfer_syntax", "")),
        photometric=str(reply.get("photometric", "")),
        note=str(reply.get("note", "")),
        synthetic=str(reply.get("synthetic") or ""),
    )


def _run_child(
    payload: bytes, timeout: float, env: dict[str, str], warm: bool
) -> tuple[bytes, int, bytes]:
    """A decoder child's stdout, exit status and stderr for ``payload``: forked by the
    warm decoder server (``warm``, ``apps.cases.decoder_server``; its children's exit
    status is not seen: an answer cut short counts as a failure), else a new interpreter.
    Raises ``TimeoutError`` after ``timeout`` seconds (the child is killed)."""
    if warm:
        from apps.cases import decoder_server

        try:
            out = decoder_server.run(payload, timeout, env=env, cwd=str(PROJECT_ROOT))
        except decoder_server.DecoderUnavailableError:
            pass  # a new interpreter below, as without the server
        else:
            return out, 0 if out else 1, b""
    child = subprocess.Popen(  # our own interpreter and module, no shell
        [sys.executable, "-m", "apps.cases.decoding"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=PROJECT_ROOT,
    )
    try:
        out, err = child.communicate(payload, timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        raise TimeoutError from None
    return out, child.returncode, err


def max_inflated_bytes(max_pixels: int) -> int:
    """What a deflated DICOM dataset may inflate to: the largest accepted image at
    16 bits, plus 16 MB for the rest of the header."""
    return 2 * max_pixels + 16 * 1024 * 1024


def _death(returncode: int, err: bytes, memory_mb: int) -> str:
    """Why the child answered nothing usable, in words (no message from the file)."""
    if b"MemoryError" in err:
        return (
            f"decoding the image needs more than the {memory_mb} MB this server allows; "
            "it is refused."
        )
    if returncode < 0:
        return f"the image could not be decoded (the decoder stopped with signal {-returncode})."
    return "the image could not be decoded (the decoder failed)."


# -- the child ---------------------------------------------------------------------


class _Refused(Exception):  # noqa: N818
    def __init__(self, problem: str, status: int = 400) -> None:
        self.problem, self.status = problem, status
        super().__init__(problem)


def _limit(memory_bytes: int, cpu_seconds: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))


def _verdicts(request: dict, gray, width: int, height: int, colourful: float) -> dict:
    """The checks' verdicts, as the web process would have asked them: only for images
    big enough to be accepted.

    Marked CT: the modality check alone (a CT slice, else "an X-ray" when the chest
    X-ray gate accepts it, else "no CT slice"). Marked X-ray: the out-of-distribution
    gate and, after the gate, the view check; and whether the modality check takes the
    picture for a CT slice (apps.cases.validation words the refusal).
    """
    reply: dict = {"verdict": None, "lateral": False, "modality_problem": None, "ct_slice": False}
    if min(width, height) < request["min_side"]:
        return reply
    gate = _loaded("ood_gate", request["ood_gate"]) if request["ood_gate"] else None
    check = None
    if request.get("modality_check"):
        check = _loaded("modality_check", request["modality_check"])
    if request.get("modality") == CT:
        if check is not None:
            reply["modality_problem"] = check.problem(gray, CT, colourful, xray_gate=gate)
        return reply
    reply["ct_slice"] = check is not None and check.looks_like_ct_slice(gray, colourful)
    if gate is not None:
        reply["verdict"] = gate.verdict(gray, colourful)
    if reply["verdict"] is None and not reply["ct_slice"] and request["view_check"]:
        view = _loaded("view_check", request["view_check"])
        reply["lateral"] = bool(view.is_lateral(gray))
    return reply


# A fitted check from its file, read once per process (``ml.serving.checks``, the one
# cache, shared with apps.cases.validation): the decoder server reads the ones the web
# names (``warm_up``) before it forks, so its children find them loaded. Any: besides
# the checks' common ``verdict`` the decoder asks the modality check its own questions.
_loaded: Any = load_input_check


def warm_up(given: dict[str, Any]) -> None:
    """Decode one small made-up picture as the web would ask (``given``: the check files
    and limits of its requests), so that what a decode loads or sets up on first use
    (the checks' files, the watermark template, lazily imported modules) is done once
    in the decoder server, not in every child it forks."""
    import numpy as np
    from PIL import Image

    request: dict[str, Any] = {
        "kind": "picture",
        "max_pixels": 50_000_000,
        "max_inflated": 0,
        "min_side": 64,
        "ood_gate": None,
        "view_check": None,
        "modality": "xray",
        "modality_check": None,
    }
    request.update({key: given[key] for key in WARM_KEYS if given.get(key) is not None})
    for kind in ("ood_gate", "modality_check", "view_check"):
        if request[kind]:  # each one, whichever a made-up picture would reach
            _loaded(kind, request[kind])
    ramp = np.add.outer(np.arange(256), np.arange(256)).astype(np.uint8)
    picture = io.BytesIO()
    Image.fromarray(ramp).save(picture, format="PNG")
    with contextlib.suppress(_Refused):  # refused or not, the work is done
        _picture(request, picture.getvalue())


# A JPEG in a print colour space (film scanners and print workflows write them) is
# judged in its own colours, then read and stored as grayscale, with this note.
PRINT_COLOUR_NOTES = {
    space: f"The JPEG was in {space} colour (a print colour space, as film scanners "
    "write); it was converted to grayscale."
    for space in ("CMYK", "YCCK")
}


def _print_colour_space(image) -> str | None:
    """ "CMYK" or "YCCK" for a JPEG in a print colour space (YCCK: Adobe transform 2,
    which libjpeg decodes to CMYK), else None."""
    if image.mode != "CMYK":
        return None
    return "YCCK" if image.info.get("adobe_transform") == 2 else "CMYK"


def _picture(request: dict, content: bytes) -> tuple[dict, bytes]:
    from PIL import Image, UnidentifiedImageError

    from apps.cases.deidentify import picture_without_metadata
    from ml.data.preprocess import open_image, to_unit_gray
    from ml.generate.watermark import metadata_reason, pixels_reason
    from ml.serving.ood import colourful_fraction

    Image.MAX_IMAGE_PIXELS = request["max_pixels"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_image(io.BytesIO(content)) as upright:
                width, height = upright.size  # after EXIF orientation
                if width * height > request["max_pixels"]:
                    raise _Refused(f"the image has {width}x{height} pixels; the limit is "
                                   f"{request['max_pixels']:,} pixels.", 413)  # fmt: skip
                # Judged in its own colours (a CMYK photograph is still a photograph),
                # then read and stored as grayscale.
                colourful = colourful_fraction(upright)
                # The generator's "synthetic" mark in the file's metadata.
                marked = metadata_reason(upright)
                space = _print_colour_space(upright)
                if space is not None:
                    upright = upright.convert("L")
                gray = to_unit_gray(upright)
                stored = picture_without_metadata(upright)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _Refused("the image is too large to decode safely.", 413) from None
    except UnidentifiedImageError:
        raise _Refused(
            "this is not an image file this platform can read; upload PNG, JPEG or DICOM.", 415
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _Refused(f"the image is truncated or corrupt ({exc}).") from None
    reply: dict[str, object] = {"width": width, "height": height}
    if space is not None:
        reply["note"] = PRINT_COLOUR_NOTES[space]
    # ... or in its pixels: a generated image is never a patient's.
    reply["synthetic"] = marked or pixels_reason(gray) or ""
    reply.update(_verdicts(request, gray, width, height, colourful))
    reply.update(_burned_text(request, gray, reply))
    return reply, stored


def _dicom(request: dict, content: bytes) -> tuple[dict, bytes, bytes]:
    from PIL import Image

    from apps.cases.deidentify import allow_listed
    from apps.cases.pixel_data import clean_pixel_data
    from ml.data.dicom import (
        DicomProblem,
        burned_in_problem,
        check_image,
        ct_problem,
        ct_to_unit_gray,
        not_a_frontal_chest_radiograph,
        read_dataset,
        route_modality,
        to_uint8,
        to_unit_gray,
    )

    status = {"invalid": 400, "unsupported": 415, "too_large": 413}
    window = ""
    try:
        dataset = read_dataset(content, max_inflated=request["max_inflated"])
        del content
        modality, source = route_modality(dataset, request.get("modality") or "xray")
        if modality == CT and (problem := ct_problem(dataset)) is not None:
            raise DicomProblem(problem, kind="unsupported")
        # Before any pixels are decoded (includes the frame size declared inside
        # compressed data).
        info = check_image(dataset, max_pixels=request["max_pixels"])
        if modality == "xray" and (problem := not_a_frontal_chest_radiograph(dataset)):
            raise DicomProblem(problem)
        if (problem := burned_in_problem(dataset)) is not None:
            raise DicomProblem(problem)
        # What is decoded below, and stored, is the cleaned pixel data.
        clean_pixel_data(dataset)
        if modality == CT:
            gray, window = ct_to_unit_gray(dataset)
        else:
            gray = to_unit_gray(dataset)
    except DicomProblem as exc:
        raise _Refused(exc.problem, status[exc.kind]) from None
    allow_listed(dataset)
    height, width = gray.shape
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(gray), mode="L").save(buffer, format="PNG")
    reply = {
        "width": width,
        "height": height,
        "transfer_syntax": info.transfer_syntax,
        "photometric": info.photometric,
        "window": window,
        "modality": modality,
        "modality_source": source,
    }
    reply.update(_verdicts({**request, "modality": modality}, gray, width, height, 0.0))
    from ml.generate.watermark import pixels_reason

    reply["synthetic"] = pixels_reason(gray) or ""  # the generator's mark
    reply.update(_burned_text({**request, "modality": modality}, gray, reply))
    return reply, buffer.getvalue(), _file_bytes(dataset)


def _burned_text(request: dict, gray, reply: dict) -> dict:
    """Whether the burned-in text check (ml.serving.burned_text) reads words in the
    image's margins; asked for an X-ray (what annotators label and datasets take) when
    the check is on and nothing else refuses the image. What it read is not sent back
    (it may be a name)."""
    if request.get("modality") == CT:
        return {}
    refused = reply.get("synthetic") or reply.get("verdict") or reply.get("lateral")
    refused = refused or reply.get("ct_slice") or reply.get("modality_problem")
    if not request.get("text_check") or refused or min(gray.shape) < request["min_side"]:
        return {}
    from ml.serving.burned_text import TextCheckUnavailable, text_in_margins

    try:
        return {"text_found": bool(text_in_margins(gray))}
    except TextCheckUnavailable as exc:
        return {"text_unchecked": str(exc)}


def _file_bytes(dataset) -> bytes:
    """``dataset`` as a DICOM file in its own transfer syntax, with a minimal meta header
    (the web process rebuilds it when it de-identifies)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = dataset.file_meta.TransferSyntaxUID
    meta.MediaStorageSOPClassUID = dataset.get("SOPClassUID") or SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = dataset.get("SOPInstanceUID") or generate_uid()
    dataset.file_meta = meta
    dataset.preamble = b"\x00" * 128
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def main() -> int:
    request = json.loads(sys.stdin.buffer.readline())
    _limit(int(request["memory_bytes"]), int(request["cpu_seconds"]))
    content = sys.stdin.buffer.read()
    out = sys.stdout.buffer
    try:
        if request["kind"] == "dicom":
            reply, stored, dicom = _dicom(request, content)
        else:
            (reply, stored), dicom = _picture(request, content), b""
    except _Refused as exc:
        out.write(json.dumps({"ok": False, "problem": exc.problem, "status": exc.status}).encode())
        out.write(b"\n")
        return 0
    except MemoryError:
        memory_mb = int(request["memory_bytes"]) // (1024 * 1024)
        problem = (
            f"decoding the image needs more than the {memory_mb} MB this server allows; "
            "it is refused."
        )
        out.write(json.dumps({"ok": False, "problem": problem, "status": 413}).encode() + b"\n")
        return 0
    except Exception as exc:  # any other decoder failure: the file's fault, said without it
        what = "DICOM file" if request["kind"] == "dicom" else "image"
        problem = f"the {what} is truncated or corrupt ({type(exc).__name__})."
        out.write(json.dumps({"ok": False, "problem": problem, "status": 400}).encode() + b"\n")
        return 0
    out.write(json.dumps({"ok": True, **reply, "png_bytes": len(stored)}).encode() + b"\n")
    out.write(stored)
    out.write(dicom)
    return 0


if __name__ == "__main__":
    sys.exit(main())
