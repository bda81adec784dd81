"""Batched (on-device) views follow the same distribution as torchvision's per-sample pipeline, one draw per sample."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ssl_train.data.batched_views import BatchedView, _brightness, _contrast, _hue, _saturation, sample_crop_boxes
from ssl_train.data.views import MultiViewTransform, ViewRecipe

N = 6000


def test_crop_box_distribution_matches_torchvision() -> None:
    torch.manual_seed(0)
    ours = sample_crop_boxes(N, 32, 24, (0.08, 1.0), torch.device("cpu"))
    crop = v2.RandomResizedCrop(16, scale=(0.08, 1.0))
    image = torch.zeros(3, 32, 24)
    theirs = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in (crop.make_params([image]) for _ in range(N))], dtype=torch.float)
    for stats in (lambda b: b[:, 2] * b[:, 3] / (32 * 24), lambda b: b[:, 3] / b[:, 2], lambda b: b[:, 0], lambda b: b[:, 1]):
        a, b = stats(ours), stats(theirs)
        assert a.mean().item() == pytest.approx(b.mean().item(), rel=0.05)
        for q in (0.1, 0.5, 0.9):
            assert torch.quantile(a, q).item() == pytest.approx(torch.quantile(b, q).item(), rel=0.1, abs=1.0)  # one pixel: positions are integers
    assert (ours[:, 0] + ours[:, 2] <= 32).all() and (ours[:, 1] + ours[:, 3] <= 24).all()


def test_flip_rate_and_independent_draws() -> None:
    torch.manual_seed(0)
    ramp = torch.arange(16, dtype=torch.uint8).repeat(16, 1)[None, None].repeat(N, 1, 1, 1) * 10  # left-dark, right-bright
    view = BatchedView(ViewRecipe(crop_scale=(1.0, 1.0), flip_prob=0.5, jitter_prob=0.0, grayscale_prob=0.0), 16, (0.0,), (1.0,))
    out = view(ramp)
    flipped = out[:, 0, 0, 0] > out[:, 0, 0, -1]
    assert flipped.float().mean().item() == pytest.approx(0.5, abs=0.03)


@pytest.mark.parametrize(("ours", "theirs", "factor"), [
    (_brightness, TF.adjust_brightness, 1.3), (_contrast, TF.adjust_contrast, 0.7), (_saturation, TF.adjust_saturation, 1.2), (_hue, TF.adjust_hue, 0.08),
])
def test_each_jitter_op_matches_torchvision(ours, theirs, factor: float) -> None:  # noqa: ANN001
    x = torch.rand(4, 3, 8, 8)
    factors = torch.tensor([factor, 1.0, factor, 1.0]) if ours is not _hue else torch.tensor([factor, 0.0, -factor, 0.0])
    expected = torch.stack([theirs(x[i], float(factors[i])) for i in range(4)])
    torch.testing.assert_close(ours(x.clone(), factors), expected, atol=1e-4, rtol=0)


def test_jitter_factor_ranges_and_per_sample_order() -> None:
    torch.manual_seed(0)
    view = BatchedView(ViewRecipe(crop_scale=(1.0, 1.0), flip_prob=0, jitter_prob=1.0, grayscale_prob=0), 8, (0.0,), (1.0,))
    grey = torch.full((N, 1, 8, 8), 128, dtype=torch.uint8)
    brightness = view(grey)[:, 0, 0, 0] / (128 / 255)  # 1-channel: contrast of a flat image and saturation/hue are no-ops
    assert brightness.min().item() == pytest.approx(0.6, abs=0.01) and brightness.max().item() == pytest.approx(1.4, abs=0.01)
    assert brightness.mean().item() == pytest.approx(1.0, abs=0.02)
    assert len(set(brightness.tolist())) > 0.9 * N  # every sample its own draw, not one per batch


def test_whole_pipeline_moments_match_per_sample_path() -> None:
    torch.manual_seed(0)
    image = torch.zeros(3, 32, 32, dtype=torch.uint8)
    image[0, :16] = 200
    image[1, :, 16:] = 150
    image[2, 8:24, 8:24] = 255
    recipe = {"crop_scale": [0.3, 1.0], "blur_prob": 0.5, "solarize_prob": 0.2}
    per_sample = MultiViewTransform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), num_global=1, recipe=recipe)
    batched = per_sample.batched()
    a = torch.stack([per_sample(image)[0] for _ in range(3000)])
    b = batched(image[None].repeat(3000, 1, 1, 1))[0]
    for stat in (lambda t: t.mean(dim=(0, 2, 3)), lambda t: t.std(dim=(0, 2, 3)), lambda t: t.mean(dim=0).mean(dim=0)):
        torch.testing.assert_close(stat(b), stat(a), atol=0.06, rtol=0.05)


def test_batched_views_shapes_on_device_of_input() -> None:
    transform = MultiViewTransform(28, (0.5,), (0.25,), num_global=2, per_view=[{"blur_prob": 1.0}], num_local=2, local_size=12)
    views = transform.batched()(torch.randint(0, 255, (5, 1, 28, 28), dtype=torch.uint8))
    assert [tuple(v.shape) for v in views] == [(5, 1, 28, 28)] * 2 + [(5, 1, 12, 12)] * 2
    assert all(v.dtype == torch.float32 for v in views)
