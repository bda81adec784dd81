"""Data: idx files (gz or not) load, the embedded subset is intact, views have the right shapes and randomness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_train.data.datasets import DEBIAN_FASHION_MNIST_ROOT, EmbeddedFashionMNIST, IdxSource, InputSpec, read_idx
from ssl_train.data.views import MultiViewTransform
from ssl_train.errors import UserError
from tests.fixtures import make_idx_dataset


@pytest.mark.parametrize("compress", [True, False])
def test_idx_source_reads_fixture(tmp_path: Path, compress: bool) -> None:
    root = make_idx_dataset(tmp_path, n_train=40, n_test=20, compress=compress)
    splits = IdxSource(str(root)).load()
    assert splits.train.images.shape == (40, 1, 28, 28) and splits.train.images.dtype == torch.uint8
    assert torch.bincount(splits.test.labels).tolist() == [2] * 10
    assert splits.num_classes == 10 and splits.input_spec == InputSpec(channels=1, size=28)


def test_idx_reader_rejects_corrupt_file(tmp_path: Path) -> None:
    bad = tmp_path / "train-images-idx3-ubyte"
    bad.write_bytes(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"\x00" * 10)
    with pytest.raises(UserError, match="truncated"):
        read_idx(bad)
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(UserError, match="bad magic"):
        read_idx(bad)


def test_embedded_dataset_is_balanced_real_data() -> None:
    splits = EmbeddedFashionMNIST().load()
    assert splits.train.images.shape == (10000, 1, 28, 28) and splits.test.images.shape == (2000, 1, 28, 28)
    assert torch.bincount(splits.train.labels).tolist() == [1000] * 10
    assert torch.bincount(splits.test.labels).tolist() == [200] * 10
    assert 0.25 < splits.mean[0] < 0.32  # Fashion-MNIST's known mean intensity (~0.286)


def test_embedded_limit_is_a_fixed_subset() -> None:
    a, b = EmbeddedFashionMNIST(train_limit=50, test_limit=20).load(), EmbeddedFashionMNIST(train_limit=50, test_limit=20).load()
    assert torch.equal(a.train.images, b.train.images) and len(a.test) == 20
    assert len(set(a.train.labels.tolist())) >= 8


@pytest.mark.needs("dataset-fashion-mnist")
def test_debian_fashion_mnist_loads() -> None:
    splits = IdxSource(DEBIAN_FASHION_MNIST_ROOT, train_limit=100, test_limit=100).load()
    assert splits.train.images.shape == (100, 1, 28, 28)


def test_views_shapes_normalisation_and_randomness() -> None:
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (1, 28, 28), dtype=np.uint8))
    transform = MultiViewTransform(28, (0.5,), (0.25,), num_global=2, per_view=[{"blur_prob": 1.0}], num_local=2, local_size=12)
    views = transform(image)
    assert [tuple(v.shape) for v in views] == [(1, 28, 28)] * 2 + [(1, 12, 12)] * 2
    assert all(v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[0], views[1])
    assert transform.global_recipes[0].blur_prob == 1.0 and transform.global_recipes[1].blur_prob == 0.0


def test_views_reject_unknown_knob() -> None:
    with pytest.raises(ValueError, match="unknown view setting"):
        MultiViewTransform(28, (0.5,), (0.25,), recipe={"blurr_prob": 1.0})


def test_on_device_auto_follows_fixed_size_and_rejects_bad_values() -> None:
    """augment.on_device=auto batches every image dataset: arrays of one size fully, files of any size on the hybrid path
    (crops in the loader); explicit values win."""
    make = lambda **kw: MultiViewTransform(28, (0.5,), (0.25,), **kw)
    assert make(fixed_size=True).on_device is True
    assert make(fixed_size=True).path == "batched" and make(fixed_size=False).on_device is True and make(fixed_size=False).path == "hybrid"
    assert make(on_device=False, fixed_size=True).on_device is False
    assert make(on_device=True, fixed_size=False).on_device is True
    with pytest.raises(ValueError, match="augment.on_device must be true, false or auto"):
        make(on_device="yes")


@pytest.mark.parametrize("size", [None, 28])
def test_loader_batches_of_the_evaluation_transform_equal_the_per_image_samples(size: int | None) -> None:
    """TransformedDataset reads a loader's batch in one indexing op + one transform call (evaluation of in-memory images);
    the samples must be those of the per-image path, through a Subset too, and a random transform keeps the per-image path."""
    from torch.utils.data import DataLoader, Subset

    from ssl_train.data.datamodule import TransformedDataset
    from ssl_train.data.datasets import ImageArrayDataset
    from ssl_train.data.views import eval_transform

    images = torch.randint(0, 256, (30, 1, 40, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    base = ImageArrayDataset(images, torch.arange(30) % 7)
    batched = TransformedDataset(base, eval_transform((0.3,), (0.2,), size))
    one_by_one = [batched[i] for i in range(30)]
    got = next(iter(DataLoader(batched, batch_size=30)))
    assert torch.equal(got[0], torch.stack([x for x, _ in one_by_one])) and got[1].tolist() == [y for _, y in one_by_one]
    subset = Subset(batched, [5, 2, 29])
    expected = (one_by_one[5], one_by_one[2], one_by_one[29])
    assert all(torch.equal(a[0], b[0]) and a[1] == b[1] for a, b in zip(subset.__getitems__([0, 1, 2]), expected, strict=True))
    calls: list[int] = []
    per_image = TransformedDataset(base, lambda image: calls.append(image.ndim) or image)
    per_image.__getitems__([0, 1])
    assert calls == [3, 3]
