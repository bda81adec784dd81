"""Every dataset format loads from a tiny on-disk fixture written here; missing/malformed data gives one clear line."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

from ssl_train.build import build
from ssl_train.data.cifar_stl import CIFARSource, STL10Source
from ssl_train.data.datasets import InputSpec
from ssl_train.data.folders import ImageFolderSource, UnlabeledFolderSource
from ssl_train.errors import DataNotFoundError, UserError
from ssl_train.run import run
from tests.fixtures import compose_config, make_cifar, make_image_folder, make_stl10


@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_loads(tmp_path: Path, num_classes: int) -> None:
    splits = CIFARSource(str(make_cifar(tmp_path, num_classes)), num_classes).load()
    assert splits.train.images.shape == (40, 3, 32, 32) and splits.test.images.shape == (20, 3, 32, 32)
    assert splits.input_spec == InputSpec(channels=3, size=32) and splits.num_classes == 10
    assert torch.bincount(splits.train.labels).tolist() == [4] * 10


def test_cifar_missing_batch_names_the_file(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(DataNotFoundError, match=r"expected data_batch_3 in .*cifar-10-batches-py.*cifar-10-python.tar.gz"):
        CIFARSource(str(tmp_path)).load()


def test_cifar_corrupt_batch_is_a_clear_error(tmp_path: Path) -> None:
    make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(b"garbage")
    with pytest.raises(UserError, match="test_batch: not a CIFAR python batch"):
        CIFARSource(str(tmp_path)).load()


def test_stl10_pretrains_on_unlabeled_and_probes_on_labelled(tmp_path: Path) -> None:
    root = str(make_stl10(tmp_path))
    splits = STL10Source(root).load()
    assert len(splits.pretrain_set) == 30 and splits.pretrain_set[0][1] == -1
    assert splits.train.images.shape == (20, 3, 96, 96) and splits.num_classes == 10
    assert int(splits.train.labels.min()) == 0  # 1-based labels on disk
    # column-major files are transposed back: the bright band is horizontal (rows), as written
    image = splits.train.images[splits.train.labels.tolist().index(1)]
    assert image[:, 8:16].float().mean() > 200 and image[:, 40:48].float().mean() < 100
    assert len(STL10Source(root, pretrain_split="train+unlabeled").load().pretrain_set) == 50
    assert STL10Source(root, pretrain_split="train").load().pretrain is None


def test_stl10_truncated_file(tmp_path: Path) -> None:
    make_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(UserError, match="not a whole number of 3x96x96 images"):
        STL10Source(str(tmp_path)).load()


def test_image_folder_loads_and_skips_corrupt_images(tmp_path: Path) -> None:
    splits = ImageFolderSource(str(make_image_folder(tmp_path, corrupt=2)), image_size=32).load()
    assert splits.num_classes == 4 and not splits.fixed_size and len(splits.train) == 14
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [splits.train[i] for i in range(len(splits.train))]
    assert all(image.shape == (3, 40, 40) and image.dtype == torch.uint8 for image, _ in items)
    assert splits.train.skipped == 2 and sum("skipping unreadable image" in str(w.message) for w in caught) == 2


def test_image_folder_missing_split(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match=r"folder .*nowhere/train does not exist\. Expected"):
        ImageFolderSource(str(tmp_path / "nowhere")).load()


@pytest.mark.parametrize("as_list", [False, True])
def test_unlabeled_folder_or_file_list(tmp_path: Path, as_list: bool) -> None:
    labelled = make_image_folder(tmp_path / "labelled")
    unlabeled = make_image_folder(tmp_path / "unlabeled_src") / "train"
    root = unlabeled
    if as_list:
        files = sorted(p.relative_to(unlabeled) for p in unlabeled.rglob("*.png"))
        root = unlabeled / "list.txt"
        root.write_text("\n".join(map(str, files[:5])) + "\n")
    splits = UnlabeledFolderSource(str(root), probe=ImageFolderSource(str(labelled), image_size=32)).load()
    assert len(splits.pretrain_set) == (5 if as_list else 12) and splits.pretrain_set[0][1] == -1
    assert len(splits.train) == 12 and splits.num_classes == 4


def test_unlabeled_folder_without_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataNotFoundError, match="no images"):
        UnlabeledFolderSource(str(tmp_path / "empty"), probe=None).load()


@pytest.mark.parametrize("data", ["cifar10", "stl10", "image_folder", "unlabeled_folder"])
def test_end_to_end_on_fixture(tmp_path: Path, data: str) -> None:
    roots = {
        "cifar10": [f"data.source.root={make_cifar(tmp_path / 'c')}"],
        "stl10": [f"data.source.root={make_stl10(tmp_path / 's')}", "data.batch_size=8"],
        "image_folder": [f"data.source.root={make_image_folder(tmp_path / 'f', corrupt=1)}", "data.source.image_size=32", "data.batch_size=8"],
        "unlabeled_folder": [
            f"data.source.root={make_image_folder(tmp_path / 'u')}/train",
            f"data.source.probe.root={make_image_folder(tmp_path / 'l')}",
            "data.source.probe.image_size=32",
            "data.batch_size=8",
        ],
    }
    limits = ["data.source.train_limit=null", "data.source.test_limit=null"]
    metrics = run(compose_config([f"data={data}", *limits, *roots[data]], tmp_path / "run"))
    assert metrics["steps"] >= 1 and {"linear_top1", "raw_input_linear_top1", "random_init_linear_top1"} <= metrics.keys()
    if data == "image_folder":
        assert metrics["skipped_images"] >= 1


def test_unlabeled_probe_ignores_missing_labels(tmp_path: Path) -> None:
    cfg = compose_config(
        ["data=stl10", f"data.source.root={make_stl10(tmp_path)}", "data.batch_size=8", "data.source.train_limit=null", "data.source.test_limit=null"],
        tmp_path / "run",
    )
    assert build(cfg).datamodule.splits.pretrain_set[0][1] == -1
