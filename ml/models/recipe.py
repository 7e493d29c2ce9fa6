"""A model's training recipe, read back from its card, so that a retraining trains the way
the serving model was trained (no TensorFlow here: the web process starts runs).

The card records every ``TrainConfig`` field under ``hyperparameters`` and the
preprocessing under ``preprocessing``; the recipe is the part of those that says *how*
to train (architecture, input, preprocessing, the measures against shortcuts, the
operating-point rule, the pretrained backbone's frozen blocks), not the data (the run's
snapshot gives the split) nor the run length (the platform's ``CXR_TRAINING_EPOCHS``).
"""

from __future__ import annotations

from typing import Any

# TrainConfig fields a retraining takes from the serving model's card
# (tests/ml/test_recipe.py checks that each is a TrainConfig field).
RECIPE_FIELDS = (
    "architecture",
    "input_size",
    "batch_size",
    "learning_rate",
    "width",
    "train_from_block",
    "augment",
    "class_weights",
    "patience",
    "preprocessing",
    "mask_outside",
    "mask_dilation",
    "balanced_sampling",
    "acquisition_augment",
    "lung_penalty",
    "penalty_on",
    "min_epochs",
    "operating_point",
    "normal_specificity",
    "covid19_specificity",
    "held_out_normals",
    "shortcut_tests",
)


def recipe_from_card(card: dict[str, Any] | None) -> dict[str, Any]:
    """The ``TrainConfig`` overrides that retrain the way ``card``'s model was trained
    (empty for no card). Cards from before a field existed simply lack it."""
    if not card:
        return {}
    hyper = card.get("hyperparameters") or {}
    recipe = {name: hyper[name] for name in RECIPE_FIELDS if name in hyper}
    if card.get("architecture"):
        recipe["architecture"] = card["architecture"]
    pre = card.get("preprocessing") or {}
    if "input_size" in pre:
        recipe["input_size"] = pre["input_size"]
    if "version" in pre:
        recipe["preprocessing"] = pre["version"]
    for name in ("mask_outside", "mask_dilation"):
        if name in pre:
            recipe[name] = pre[name]
    return recipe
