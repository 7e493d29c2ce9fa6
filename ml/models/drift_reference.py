"""A model's drift reference: the features of :mod:`ml.models.drift` on its test split.

The site drift monitor compares each site's recent predictions with these values, so
they are made the way the platform makes a prediction's features: the classifier's own
``predict`` (with its lung segmentation), the input gate's score on the same gray image.
``python -m ml classifier drift-reference`` and the platform's training runs write them,
as ``drift-reference.json`` beside the model (registering the model stores it with it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ml.models.drift import FEATURES, prediction_features, reference_sample


def reference_values(
    classifier: Any, records: Sequence[Any], gate: Any = None
) -> dict[str, list[Any]]:
    """Each feature's value for each record (an ``ml.data.loaders.Record``), through the
    loaded ``classifier`` (ml.serving) and the input ``gate`` (an ``OodGate`` or None)."""
    from ml.data.preprocess import open_image, to_unit_gray

    values: dict[str, list[Any]] = {feature: [] for feature in FEATURES}
    for record in records:
        image = open_image(record.path)
        gray = to_unit_gray(image)
        result = classifier.predict(image)
        mask = result.lungs.mask if result.lungs is not None and result.lungs.found else None
        score = gate.score(gray) if gate is not None else None
        row = prediction_features(gray, mask, result.probabilities, score)
        for feature in FEATURES:
            values[feature].append(row[feature])
    return values


def write_reference(
    classifier: Any,
    records: Sequence[Any],
    out: Path,
    *,
    gate: Any = None,
    split: str = "test",
    size: int = 500,
) -> dict[str, Any]:
    """Write the reference of ``classifier`` (its card's sha256) on ``records`` to
    ``out`` as JSON and return it. Raises ``ValueError`` without records."""
    if not records:
        raise ValueError(f"no {split} images to make a drift reference from")
    reference = {
        "model_sha256": classifier.card.get("sha256"),
        "split": split,
        "n": len(records),
        "features": reference_sample(reference_values(classifier, records, gate), size=size),
    }
    out.write_text(json.dumps(reference, indent=1) + "\n")
    return reference
