"""experiment=dino_vit_small makes DINO's views (facebookresearch/dino main_dino.py DataAugmentationDINO)."""

from __future__ import annotations

from pathlib import Path

from hydra.utils import instantiate

from tests.fixtures import compose_config


def test_dino_vit_small_has_dinos_asymmetric_global_views_and_blurred_local_crops(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=dino_vit_small"], tmp_path, tiny=False)
    views = instantiate(cfg.augment)(size=224, mean=[0.5] * 3, std=[0.25] * 3)
    first, second = views.global_recipes
    assert (first.blur_prob, first.solarize_prob) == (1.0, 0.0)  # global 1: GaussianBlur(1.0)
    assert (second.blur_prob, second.solarize_prob) == (0.1, 0.2)  # global 2: GaussianBlur(0.1), Solarization(0.2)
    local = views.local_recipe
    assert (local.blur_prob, local.solarize_prob, tuple(local.crop_scale)) == (0.5, 0.0, (0.05, 0.4))  # GaussianBlur(p=0.5)
    assert views.num_local == 8 and views.local_size == 96
    for recipe in (first, second, local):  # flip_and_color_jitter on every crop
        assert (recipe.flip_prob, recipe.jitter_prob, recipe.grayscale_prob) == (0.5, 0.8, 0.2)
    assert tuple(first.crop_scale) == tuple(second.crop_scale) == (0.4, 1.0)
