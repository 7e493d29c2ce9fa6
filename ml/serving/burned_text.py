"""Text burned into an image's margins (a name, a date, an ID drawn on the film).

A DICOM header can say ``BurnedInAnnotation = YES``; a PNG or JPEG says nothing, and
a header can be wrong. This looks: the image's four margins (a quarter of each side,
corners included) are read with Tesseract (Debian's ``tesseract-ocr``, run as a
command: a well-kept OCR engine whose English model ships with the package, nothing
downloaded) and the image counts as carrying text when a word of at least
``MIN_CHARS`` letters or digits is read with confidence ``MIN_CONFIDENCE``, or one of
at least ``LONG_WORD`` with ``LONG_WORD_CONFIDENCE`` (shorter or less certain "words"
are what OCR reads into ribs and noise).

Tesseract reads dark text on a plain background; a radiograph's margins are neither.
So each margin is scaled to ``LONG_SIDE`` pixels on the image's long side, and a
morphological top-hat (bright strokes thinner than ``HAT_KERNEL``) and black-hat (dark
strokes) turn light text on a dark film and dark text on a light one into black text
on white (Otsu's threshold), each read once (psm 11: sparse text). On 40 tuning films
with a name drawn on them, OCR of the margins as they are found 16; this step found 32
at 1024 px and 38 at 1600 px (counting any 3-character reading), and the rule above
keeps 34 while flagging only films with real text on them. Measured figures and how
to reproduce them: docs/input-safety.md ("Text in the pixels");
``python -m ml.research.burned_text_eval``.

What is read is never logged or stored (it may be a name): callers get the words to
decide with, and say only that text was found.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from dataclasses import dataclass

import numpy as np

TESSERACT = "tesseract"
LONG_SIDE = 1600
MARGIN = 0.25
HAT_KERNEL = 21
MIN_CHARS, MIN_CONFIDENCE = 4, 85.0
LONG_WORD, LONG_WORD_CONFIDENCE = 6, 60.0
TIMEOUT_S = 30.0


class TextCheckUnavailable(RuntimeError):  # noqa: N818 - reads as what happened
    """Tesseract is not installed (or failed to run)."""


@dataclass(frozen=True)
class Word:
    text: str
    confidence: float

    @property
    def counts(self) -> bool:
        """Whether this reading counts as text (see the module docstring)."""
        chars = sum(character.isalnum() for character in self.text)
        return (chars >= MIN_CHARS and self.confidence >= MIN_CONFIDENCE) or (
            chars >= LONG_WORD and self.confidence >= LONG_WORD_CONFIDENCE
        )


def available() -> bool:
    """Whether the Tesseract command is installed here."""
    return shutil.which(TESSERACT) is not None


def text_in_margins(gray: np.ndarray) -> list[str]:
    """The words read in ``gray``'s margins that count as text (empty: none found).
    ``gray``: a 2-D array, float in [0, 1] or uint8."""
    return [word.text for word in margin_words(gray) if word.counts]


def margin_words(gray: np.ndarray) -> list[Word]:
    """Everything Tesseract reads in ``gray``'s margins, with its confidence."""
    import cv2

    image = _uint8(gray)
    height, width = image.shape
    scale = LONG_SIDE / max(height, width)
    image = cv2.resize(
        image,
        (max(1, round(width * scale)), max(1, round(height * scale))),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC,
    )
    kernel = cv2.getStructuringElement(cv2.MORPH_RECT, (HAT_KERNEL, HAT_KERNEL))
    words: list[Word] = []
    for operation in (cv2.MORPH_TOPHAT, cv2.MORPH_BLACKHAT):
        strokes = cv2.morphologyEx(image, operation, kernel)
        for part in _margins(strokes):
            if part.size == 0 or int(part.max()) == 0:
                continue
            _, binary = cv2.threshold(part, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
            words += _read(255 - binary)  # black strokes on white
    return words


def _uint8(gray: np.ndarray) -> np.ndarray:
    if gray.ndim != 2:
        raise ValueError(f"expected a 2-D grayscale image, got shape {gray.shape}")
    if gray.dtype == np.uint8:
        return np.ascontiguousarray(gray)
    scaled: np.ndarray = np.clip(np.asarray(gray, dtype=np.float32) * 255.0 + 0.5, 0, 255)
    return scaled.astype(np.uint8)


def _margins(image: np.ndarray) -> list[np.ndarray]:
    """Top and bottom bands (full width, corners included), then the left and right
    bands between them."""
    height, width = image.shape
    band, side = int(height * MARGIN), int(width * MARGIN)
    return [
        image[:band],
        image[height - band :],
        image[band : height - band, :side],
        image[band : height - band, width - side :],
    ]


def _read(part: np.ndarray) -> list[Word]:
    """Tesseract's words (TSV output) for one black-on-white picture."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(part).save(buffer, format="PNG")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OMP_THREAD_LIMIT": "1"}
    try:
        done = subprocess.run(  # noqa: S603 - a fixed command, the picture on stdin
            [TESSERACT, "stdin", "stdout", "--psm", "11", "-l", "eng", "tsv"],
            input=buffer.getvalue(),
            capture_output=True,
            timeout=TIMEOUT_S,
            env=env,
            check=False,
        )
    except FileNotFoundError:
        raise TextCheckUnavailable("tesseract is not installed") from None
    except subprocess.TimeoutExpired:
        raise TextCheckUnavailable(f"tesseract took longer than {TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        raise TextCheckUnavailable(f"tesseract failed (exit status {done.returncode})")
    rows = csv.DictReader(
        io.StringIO(done.stdout.decode("utf-8", "replace")), delimiter="\t", quoting=csv.QUOTE_NONE
    )
    words = []
    for row in rows:
        text = (row.get("text") or "").strip()
        if text:
            try:
                words.append(Word(text, float(row.get("conf") or -1)))
            except ValueError:
                continue
    return words
