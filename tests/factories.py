"""factory_boy factories: rows in the states tests need, without running the model.

``ModelVersionFactory``, ``PredictionFactory`` and ``ExplanationFactory`` write
the rows a finished job leaves (status, results, small real files) directly, so
a test that only needs "a done prediction" or "a done Grad-CAM" does not run
the classifier or an explanation method. Tests of the jobs themselves still
run them (``cxrplatform.jobs.run_job_now``).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import factory
import numpy as np
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, User
from django.core.files.base import ContentFile
from django.utils import timezone
from PIL import Image

from apps.cases.models import Case, CaseImage, Prediction
from apps.explain.models import Explanation
from apps.models.models import ModelVersion

PASSWORD = "correct-horse-battery-staple"
CLASSES = ("covid19", "pneumonia", "normal")
IMAGES = Path(__file__).parent / "fixtures" / "images"

T = TypeVar("T")


class ModelFactory(factory.django.DjangoModelFactory[T]):
    """A factory whose call gives its model's row, for the type checker too: calling a
    factory class builds the row (factory_boy's metaclass ``__call__``), which mypy only
    learns from ``__new__``."""

    class Meta:
        abstract = True

    if TYPE_CHECKING:

        def __new__(cls, *args: Any, **kwargs: Any) -> T: ...  # type: ignore[misc]


def _set_roles(user: User, create: bool, extracted: Sequence[str] | None, **_kwargs: Any) -> None:
    """``UserFactory(roles=[...])``: the user joins those role groups."""
    user.save()
    if create and extracted:
        user.groups.set(Group.objects.filter(name__in=extracted))


class UserFactory(ModelFactory[User]):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    roles = factory.PostGeneration(_set_roles)


class CaseFactory(ModelFactory[Case]):
    class Meta:
        model = Case

    owner = factory.SubFactory(UserFactory, roles=["clinician"])
    patient_ref = factory.Sequence(lambda n: f"PSEUDO-{n:04d}")


def _fixture_image(name: str) -> tuple[bytes, int, int]:
    """The fixture as the upload service stores it: a PNG of its decoded pixels."""
    from apps.cases.deidentify import picture_without_metadata

    with Image.open(IMAGES / name) as image:
        return picture_without_metadata(image), image.width, image.height


class CaseImageFactory(ModelFactory[CaseImage]):
    """An accepted image of a case: one of the fixture X-rays, stored as the upload
    service stores it (re-encoded as PNG)."""

    class Meta:
        model = CaseImage
        exclude = ("source", "content")

    class Params:
        fixture = "2168a917.jpg"

    case = factory.SubFactory(CaseFactory)
    source = factory.LazyAttribute(lambda o: _fixture_image(o.fixture))
    content = factory.LazyAttribute(lambda o: o.source[0])
    file = factory.LazyAttribute(lambda o: ContentFile(o.content, name=o.fixture))
    sha256 = factory.LazyAttribute(lambda o: hashlib.sha256(o.content).hexdigest())
    width = factory.LazyAttribute(lambda o: o.source[1])
    height = factory.LazyAttribute(lambda o: o.source[2])
    source_format = factory.LazyAttribute(
        lambda o: "png" if o.fixture.lower().endswith(".png") else "jpeg"
    )


def operating_point(
    normal_offsets: tuple[float, ...] = (-1.0, 0.0, 1.0), *, card_normal: float = 0.0
) -> dict:
    """A card's ``operating_point`` as ``ml.models.operating_point`` writes it (method
    ``val-specificity``), with a curve: one row per normal offset (the others 0), the
    row at ``card_normal`` the card's chosen one. The figures are made up but move as a
    real curve's do: a higher normal offset calls more images normal."""
    rows: list[dict[str, Any]] = []
    for i, value in enumerate(sorted(normal_offsets)):
        share = (i + 1) / (len(normal_offsets) + 1)
        rows.append(
            {
                "offsets": {"covid19": 0.0, "pneumonia": 0.0, "normal": float(value)},
                "normal_specificity": round(share, 4),
                "abnormal_sensitivity": round(1 - share / 2, 4),
                "covid19_sensitivity": 0.8,
                "covid19_specificity": 0.9,
                "macro_f1": round(0.6 + share / 10, 4),
                "chosen": value == card_normal,
            }
        )
    card_row = next(r for r in rows if r["chosen"])
    return {
        "method": "val-specificity",
        "offsets": dict(card_row["offsets"]),
        "targets": {"normal_specificity": 0.5, "covid19_specificity": 0.9},
        "reached": {
            k: card_row[k]
            for k in (
                "normal_specificity",
                "covid19_specificity",
                "covid19_sensitivity",
                "abnormal_sensitivity",
            )
        },
        "val_macro_f1_before": 0.6,
        "val_macro_f1_after": card_row["macro_f1"],
        "grid": sorted(float(v) for v in normal_offsets),
        "curve": {
            "rows": rows,
            "roc": {"fpr": [0.0, 0.1, 0.3, 1.0], "tpr": [0.0, 0.6, 0.9, 1.0], "auroc": 0.88},
            "n": 40,
            "n_normal": 20,
        },
    }


class ModelVersionFactory(ModelFactory[ModelVersion]):
    """A registry row. Its ``artifact`` names a file that is not there unless given one:
    tests that load the model register the real artifact (``production_model``) and may
    pass ``artifact=production_model.artifact.name`` to share its file."""

    class Meta:
        model = ModelVersion

    class Params:
        production = factory.Trait(
            status=ModelVersion.Status.PRODUCTION, promoted_at=factory.LazyFunction(timezone.now)
        )
        archived = factory.Trait(
            status=ModelVersion.Status.ARCHIVED,
            promoted_at=factory.LazyFunction(lambda: timezone.now() - timedelta(days=1)),
        )

    name = factory.Sequence(lambda n: f"model-{n}")
    sha256 = factory.LazyAttribute(lambda o: hashlib.sha256(o.name.encode()).hexdigest())
    artifact = factory.LazyAttribute(lambda o: f"models/factory/{o.name}.keras")
    status = ModelVersion.Status.CANDIDATE
    card = factory.LazyAttribute(
        lambda o: {
            "name": o.name,
            "classes": list(CLASSES),
            "preprocessing": {"input_size": 64, "channels": 1},
        }
    )


class PredictionFactory(ModelFactory[Prediction]):
    """A finished classification: ``label`` gets the largest probability."""

    class Meta:
        model = Prediction

    class Params:
        pending = factory.Trait(
            status=Prediction.Status.PENDING,
            model_version=None,
            label="",
            probabilities={},
            preprocess_ms=None,
            inference_ms=None,
            started_at=None,
            finished_at=None,
            attempts=0,
        )
        # Lung fields found, with a mask and outline PNG (a square) to serve.
        with_lungs = factory.Trait(
            lungs_found=True,
            lung_mask=factory.LazyFunction(lambda: ContentFile(mask_png(), name="mask.png")),
            lung_outline=factory.LazyFunction(lambda: ContentFile(mask_png(), name="outline.png")),
        )

    image = factory.SubFactory(CaseImageFactory)
    model_version = factory.SubFactory(ModelVersionFactory)
    status = Prediction.Status.DONE
    probabilities = factory.LazyFunction(lambda: {"covid19": 0.1, "pneumonia": 0.2, "normal": 0.7})
    label = factory.LazyAttribute(
        lambda o: max(o.probabilities, key=o.probabilities.get) if o.probabilities else ""
    )
    preprocess_ms = 1.0
    inference_ms = 1.0
    attempts = 1
    started_at = factory.LazyFunction(timezone.now)
    finished_at = factory.LazyFunction(timezone.now)


def mask_png(size: int = 32) -> bytes:
    mask = Image.new("L", (size, size), 0)
    mask.paste(255, (8, 8, 24, 24))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    return buffer.getvalue()


def _heatmap_npy(size: int = 64) -> bytes:
    """A float32 map in [0, 1] (a centred blob), as ``np.save`` writes it."""
    axis = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    heatmap = np.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) * 4).astype(np.float32)
    buffer = io.BytesIO()
    np.save(buffer, heatmap)
    return buffer.getvalue()


def _overlay_png(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 60, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


class ExplanationFactory(ModelFactory[Explanation]):
    """A finished heatmap with a real ``.npy`` map and a PNG overlay on storage."""

    class Meta:
        model = Explanation

    class Params:
        pending = factory.Trait(
            status=Explanation.Status.PENDING,
            heatmap="",
            overlay="",
            scores={},
            target_class=None,
            target_label="",
            seconds=None,
            finished_at=None,
        )

    image = factory.SubFactory(CaseImageFactory)
    model_version = factory.SubFactory(ModelVersionFactory)
    method = Explanation.Method.GRADCAM
    status = Explanation.Status.DONE
    target_class = 2
    target_label = "normal"
    layer = "last_conv"
    heatmap = factory.LazyFunction(lambda: ContentFile(_heatmap_npy(), name="heatmap.npy"))
    overlay = factory.LazyFunction(lambda: ContentFile(_overlay_png(), name="overlay.png"))
    scores = factory.LazyFunction(lambda: {"deletion_auc": 0.3, "insertion_auc": 0.6})
    seconds = 0.1
    attempts = 1
    finished_at = factory.LazyFunction(timezone.now)
