"""Input checks: what judges an upload before any model sees it (NumPy only, no Django).

Three fitted checks run on every upload's decoded grayscale pixels: the
out-of-distribution gate (``ml.serving.ood``: is it a chest radiograph?), the view
check (``ml.serving.viewcheck``: frontal or lateral?) and the modality check
(``ml.ct.modality``: a CT slice or an X-ray?). Each satisfies :class:`InputCheck`:
it is read from one file with ``load`` and answers ``verdict(gray, colourful)`` with
the check's own word for what is wrong with the image, or None when it passes
(apps.cases.validation words the refusal for the user): the gate's "colour", "blank"
or "appearance", the view check's "lateral", the modality check's "ct slice" (an
upload to be read as an X-ray that is a CT slice).

:func:`load_input_check` is the one way a process loads one: by kind and path, once
per process (the decoder server loads them before it forks, so its children find
them loaded).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # annotations only: the decoder child imports this module at start
    import numpy as np


@runtime_checkable
class InputCheck(Protocol):
    """A fitted check of an upload's pixels."""

    def verdict(self, gray: np.ndarray, colourful: float = 0.0) -> str | None:
        """None when the image passes, else the check's word for why not.

        ``gray``: the decoded image as float grayscale in [0, 1]; ``colourful``: the
        share of strongly coloured pixels of the original (``ml.serving.ood``).
        """
        ...


def _ood_gate(path: Path) -> InputCheck:
    from ml.serving.ood import OodGate

    return OodGate.load(path)


def _view_check(path: Path) -> InputCheck:
    from ml.serving.viewcheck import ViewCheck

    return ViewCheck.load(path)


def _modality_check(path: Path) -> InputCheck:
    from ml.ct.modality import ModalityCheck

    return ModalityCheck.load(path)


# kind -> how its file is read (the kinds the decoder's requests name).
INPUT_CHECKS = {
    "ood_gate": _ood_gate,
    "view_check": _view_check,
    "modality_check": _modality_check,
}


@lru_cache(maxsize=8)
def load_input_check(kind: str, path: str) -> InputCheck:
    """The check of ``kind`` fitted in the file ``path``, read once per process (a few
    files at most: one per setting, and the test suite's own). ``cache_clear()``
    forgets them (tests that rewrite a check's file)."""
    if kind not in INPUT_CHECKS:
        raise ValueError(f"Unknown input check {kind!r}; expected one of {sorted(INPUT_CHECKS)}.")
    return INPUT_CHECKS[kind](Path(path))
