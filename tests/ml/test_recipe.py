"""A retraining trains the way the serving model was trained: its card's recipe."""

from dataclasses import fields

from ml.models.recipe import RECIPE_FIELDS, recipe_from_card
from ml.models.training import TrainConfig


def test_every_recipe_field_is_a_training_setting():
    assert set(RECIPE_FIELDS) <= {f.name for f in fields(TrainConfig)}


def test_the_recipe_of_a_lung_masked_backbone_card_rebuilds_its_config():
    card = {
        "architecture": "efficientnet_lite0",
        "preprocessing": {
            "version": 2,
            "input_size": 224,
            "mask_outside": True,
            "mask_dilation": 0.01,
        },
        "hyperparameters": {
            "train_from_block": 8,
            "balanced_sampling": True,
            "acquisition_augment": True,
            "operating_point": "val-specificity",
            "held_out_normals": ["auto"],
            "epochs": 14,  # the run length is the platform's, not the recipe's
            "val_fraction": 0.15,  # the split comes from the run's snapshot
        },
    }
    recipe = recipe_from_card(card)
    assert "epochs" not in recipe
    assert "val_fraction" not in recipe
    config = TrainConfig(**recipe, epochs=1)
    assert config.architecture == "efficientnet_lite0"
    assert config.spec().input_size == 224
    assert config.spec().mask_outside
    assert config.model_kwargs() == {"train_from_block": 8}
    assert config.operating_point == "val-specificity"
    assert config.held_out_normals == ["auto"]


def test_no_card_means_the_default_recipe():
    assert recipe_from_card(None) == {}
    assert recipe_from_card({"name": "old"}) == {}
