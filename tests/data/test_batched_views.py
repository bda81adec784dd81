"""Batched (on-device) views follow the same distribution as torchvision's per-sample pipeline, one draw per sample."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ssl_train.data.batched_views import (
    BRIGHTNESS,
    CONTRAST,
    HUE_CHUNK_ON_CPU,
    SATURATION,
    BatchedView,
    _colour_blend,
    _gaussian_blur,
    _hue,
    _hue_pass,
    apply_colour_jitter,
    sample_crop_boxes,
)
from ssl_train.data.loader_crops import TRIES, LoaderCrops, crop_box, resized_crop_uint8
from ssl_train.data.recipes import ViewRecipe
from ssl_train.data.views import MultiViewTransform

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


TORCHVISION_JITTER = {BRIGHTNESS: TF.adjust_brightness, CONTRAST: TF.adjust_contrast, SATURATION: TF.adjust_saturation}


@pytest.mark.parametrize(("op", "factor"), [(BRIGHTNESS, 1.3), (CONTRAST, 0.7), (SATURATION, 1.2)])
def test_each_blend_op_matches_torchvision(op: int, factor: float) -> None:
    x = torch.rand(4, 3, 8, 8)
    factors = torch.tensor([factor, 1.0, factor, 1.0])
    expected = torch.stack([TORCHVISION_JITTER[op](x[i], float(factors[i])) for i in range(4)])
    torch.testing.assert_close(_colour_blend(x.clone(), torch.full((4,), op), factors), expected, atol=1e-4, rtol=0)
    assert torch.equal(_colour_blend(x.clone(), torch.full((4,), op), factors)[1], x[1])  # factor 1: exactly unchanged


def test_blends_with_an_op_per_sample_match_torchvision_on_colour_and_grey_images() -> None:
    """One batch mixing the three ops (the per-sample colour matrix), on RGB and one-channel images (saturation of a
    one-channel image is its identity in torchvision, which the caller skips; brightness and contrast apply)."""
    for channels, ops in ((3, [BRIGHTNESS, CONTRAST, SATURATION, CONTRAST, BRIGHTNESS, SATURATION]), (1, [BRIGHTNESS, CONTRAST] * 3)):
        x = torch.rand(6, channels, 8, 8)
        factors = torch.tensor([1.4, 0.6, 0.7, 1.3, 0.9, 1.1])
        expected = torch.stack([TORCHVISION_JITTER[op](x[i], float(factors[i])) for i, op in enumerate(ops)])
        torch.testing.assert_close(_colour_blend(x.clone(), torch.tensor(ops), factors), expected, atol=1e-5, rtol=0)
    grey = torch.rand(2, 1, 8, 8)  # saturation of a one-channel image is its identity, as torchvision's
    assert torch.equal(_colour_blend(grey.clone(), torch.full((2,), SATURATION), torch.tensor([0.6, 1.4])), grey)


@pytest.mark.parametrize("kernel_size", [3, 5, 9])  # 3 and 5: shifted multiply-adds; 9: the grouped convolution
def test_blur_with_a_sigma_per_sample_matches_torchvision(kernel_size: int) -> None:
    x, sigmas = torch.rand(5, 3, 12, 10), torch.tensor([0.1, 0.5, 1.0, 1.7, 2.0])
    expected = torch.stack([TF.gaussian_blur(x[i], [kernel_size, kernel_size], [float(s), float(s)]) for i, s in enumerate(sigmas)])
    torch.testing.assert_close(_gaussian_blur(x, sigmas, kernel_size), expected, atol=1e-5, rtol=0)


def test_hue_in_cache_sized_chunks_equals_one_pass() -> None:
    """On a CPU a large batch's hue runs in chunks of HUE_CHUNK_ON_CPU samples: bit for bit the one-pass result."""
    x, shifts = torch.rand(2 * HUE_CHUNK_ON_CPU + 3, 3, 6, 6), torch.empty(2 * HUE_CHUNK_ON_CPU + 3).uniform_(-0.5, 0.5)
    assert torch.equal(_hue(x, shifts), _hue_pass(x, shifts))


def test_hue_matches_torchvision_including_greys_and_extremes() -> None:
    x = torch.rand(6, 3, 8, 8)
    x[0] = 0.5  # grey: no hue
    x[1, :, 0, 0] = torch.tensor([1.0, 0.0, 0.0])
    x[2, :, 0, 0] = torch.tensor([0.0, 0.0, 0.0])
    shifts = torch.tensor([0.08, 0.0, -0.5, 0.5, -0.013, 0.3])
    expected = torch.stack([TF.adjust_hue(x[i], float(shifts[i])) for i in range(6)])
    torch.testing.assert_close(_hue(x, shifts), expected, atol=1e-5, rtol=0)


def test_colour_jitter_equals_torchvision_in_each_samples_own_order() -> None:
    """The batched jitter (hue once for the batch, blends before and after it) gives each sample exactly torchvision's
    ops in that sample's drawn order, and leaves the samples not drawn unchanged; 1-channel images skip saturation."""
    torch.manual_seed(0)
    n = 48
    for channels in (3, 1):
        x = torch.rand(n, channels, 6, 6)
        applied = torch.rand(n) < 0.75
        factors, shifts = torch.empty(n, 3).uniform_(0.6, 1.4), torch.empty(n).uniform_(-0.1, 0.1)
        order = torch.rand(n, 4).argsort(dim=1)
        ops = {**TORCHVISION_JITTER, 3: TF.adjust_hue}
        expected = []
        for i in range(n):
            image = x[i]
            for op in order[i].tolist() if applied[i] else []:
                image = ops[op](image, float(shifts[i] if op == 3 else factors[i, op]))
            expected.append(image)
        torch.testing.assert_close(apply_colour_jitter(x.clone(), applied, factors, shifts, order), torch.stack(expected), atol=1e-5, rtol=0)


def test_jitter_factor_ranges_and_per_sample_order() -> None:
    torch.manual_seed(0)
    view = BatchedView(ViewRecipe(crop_scale=(1.0, 1.0), flip_prob=0, jitter_prob=1.0, grayscale_prob=0), 8, (0.0,), (1.0,))
    grey = torch.full((N, 1, 8, 8), 128, dtype=torch.uint8)
    brightness = view(grey)[:, 0, 0, 0] / (128 / 255)  # 1-channel: contrast of a flat image and saturation/hue are no-ops
    assert brightness.min().item() == pytest.approx(0.6, abs=0.01) and brightness.max().item() == pytest.approx(1.4, abs=0.01)
    assert brightness.mean().item() == pytest.approx(1.0, abs=0.02)
    assert len(set(brightness.tolist())) > 0.9 * N  # every sample its own draw, not one per batch


@pytest.mark.slow  # thousands of per-sample torchvision pipelines: 30-45 s alone
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


# The hybrid path (image files of any size): crops, resizing and flips in the loader on uint8, the rest batched on the device.


def test_loader_crop_boxes_match_torchvision() -> None:
    """The loader's RandomResizedCrop boxes: torchvision's area, aspect and position distribution, also where the
    centre-crop fallback is frequent (a wide image and a large minimum scale)."""
    torch.manual_seed(0)
    for height, width, scale in ((97, 81, (0.2, 1.0)), (30, 100, (0.6, 1.0))):
        ours = torch.tensor([crop_box(height, width, scale, u) for u in torch.rand(N, 2 * TRIES + 3).tolist()], dtype=torch.float)
        crop = v2.RandomResizedCrop(16, scale=scale)
        image = torch.zeros(3, height, width)
        theirs = torch.tensor([[p["top"], p["left"], p["height"], p["width"]] for p in (crop.make_params([image]) for _ in range(N))], dtype=torch.float)
        for stats in (lambda b: b[:, 2] * b[:, 3] / (height * width), lambda b: b[:, 3] / b[:, 2], lambda b: b[:, 0], lambda b: b[:, 1]):  # noqa: B023
            a, b = stats(ours), stats(theirs)
            assert a.mean().item() == pytest.approx(b.mean().item(), rel=0.05, abs=0.5)
            for q in (0.1, 0.5, 0.9):
                assert torch.quantile(a, q).item() == pytest.approx(torch.quantile(b, q).item(), rel=0.1, abs=1.0)
        assert (ours[:, 0] + ours[:, 2] <= height).all() and (ours[:, 1] + ours[:, 3] <= width).all() and (ours[:, 2:] > 0).all()


def test_loader_resize_equals_torchvision_and_flip_rate() -> None:
    """A box's uint8 resize is torchvision's resized_crop (antialiased) to the bit; views flip at their own rate."""
    torch.manual_seed(0)
    image = torch.randint(0, 256, (3, 97, 81), dtype=torch.uint8)
    for box in ((3, 5, 60, 50), (0, 0, 97, 81), (10, 10, 20, 25), (1, 2, 32, 32)):
        assert torch.equal(resized_crop_uint8(image, box, 32), TF.resized_crop(image, *box, [32, 32], antialias=True))
    ramp = (torch.arange(40, dtype=torch.uint8) * 6).repeat(3, 30, 1)  # left-dark, right-bright
    crops = LoaderCrops([ViewRecipe(crop_scale=(1.0, 1.0), flip_prob=0.5), ViewRecipe(crop_scale=(1.0, 1.0), flip_prob=0.0)], [16, 8])
    made = [crops(ramp) for _ in range(4000)]
    assert [(tuple(v.shape), v.dtype) for v in made[0]] == [((3, 16, 16), torch.uint8), ((3, 8, 8), torch.uint8)]
    flipped = torch.tensor([[bool(v[0, 0, 0] > v[0, 0, -1]) for v in m] for m in made], dtype=torch.float).mean(0)
    assert flipped[0].item() == pytest.approx(0.5, abs=0.03) and flipped[1].item() == 0.0


@pytest.mark.slow  # thousands of per-sample torchvision pipelines: 30-45 s alone
def test_hybrid_pipeline_moments_match_per_sample_path() -> None:
    """Loader crops + device ops of each view (two global views with their own recipes, one local crop) give the
    per-sample pipeline's distribution on a non-square image: channel means and stds, column and row profiles. Tolerances
    are ~1.5x the spread of two per-sample runs; a flip rate of 0.3, crop scale (0.5, 1) or (0.08, 1), the local view at
    the global scale, no blur on view 1 or no solarisation on view 2 each exceed them (measured when this test was written)."""
    torch.manual_seed(0)
    image = torch.zeros(3, 40, 28, dtype=torch.uint8)
    image[0, :20] = 200
    image[1, :, 14:] = 150
    image[2, 10:30, 7:21] = 255
    per_sample = MultiViewTransform(
        16,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        num_global=2,
        recipe={"crop_scale": [0.3, 1.0]},
        per_view=[{"blur_prob": 1.0}, {"blur_prob": 0.1, "solarize_prob": 0.2}],
        num_local=1,
        local_size=8,
        fixed_size=False,
    )
    assert per_sample.path == "hybrid"
    loader, batched = per_sample.loader_crops(), per_sample.batched()
    a = [torch.stack(v) for v in zip(*[per_sample(image) for _ in range(2000)], strict=True)]
    b = batched([torch.stack(v) for v in zip(*[loader(image) for _ in range(2000)], strict=True)])
    assert [tuple(v.shape) for v in b] == [(2000, 3, 16, 16)] * 2 + [(2000, 3, 8, 8)]
    stats = (
        (lambda t: t.mean(dim=(0, 2, 3)), 0.12),
        (lambda t: t.std(dim=(0, 2, 3)), 0.04),
        (lambda t: t.mean(dim=(0, 2)), 0.18),
        (lambda t: t.mean(dim=(0, 3)), 0.18),
    )  # channel means, stds; column, row profiles
    for view_a, view_b in zip(a, b, strict=True):
        for stat, atol in stats:
            torch.testing.assert_close(stat(view_b), stat(view_a), atol=atol, rtol=0)


def test_multiview_takes_one_cropped_batch_per_view_only() -> None:
    batched = MultiViewTransform(16, (0.5,), (0.25,), num_global=2, num_local=1, local_size=8).batched()
    crops = [torch.zeros(4, 1, 16, 16, dtype=torch.uint8)] * 2 + [torch.zeros(4, 1, 8, 8, dtype=torch.uint8)]
    assert [tuple(v.shape) for v in batched(crops)] == [(4, 1, 16, 16)] * 2 + [(4, 1, 8, 8)]
    with pytest.raises(ValueError, match="3 views"):
        batched(crops[:2])
    with pytest.raises(ValueError, match="view of 8 px"):
        batched(crops[:2] + [crops[0]])


def test_image_folder_trains_on_the_hybrid_path(tmp_path: Path) -> None:
    """data=image_folder with on_device=auto: the loader yields one uint8 crop batch per view, the module makes the views."""
    from ssl_train.build import build
    from tests.fixtures import compose_config, make_image_folder

    root = make_image_folder(tmp_path / "images", n_per_class=4, classes=2, size=40)
    cfg = compose_config(
        [
            "data=image_folder",
            f"data.source.root={root}",
            "data.source.image_size=24",
            "data.batch_size=4",
            "augment=multicrop",
            "augment.local_size=12",
            "data.source.train_limit=null",
            "data.source.test_limit=null",
            "probe=false",
            "baseline=false",
        ],
        tmp_path / "run",
    )
    assert cfg.augment.on_device == "auto"
    built = build(cfg)
    assert built.datamodule.views().path == "hybrid" and built.module.batched_views is not None
    crops, labels = next(iter(built.datamodule.train_dataloader()))
    assert [(tuple(c.shape), c.dtype) for c in crops] == [((4, 3, 24, 24), torch.uint8)] * 2 + [((4, 3, 12, 12), torch.uint8)] * 4
    built.trainer.fit(built.module, datamodule=built.datamodule)
    assert built.trainer.global_step == 2
