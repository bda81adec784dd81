"""data=hf_dataset: a Hugging Face dataset from disk (save_to_disk, parquet) as train/test splits; bad columns named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_train.errors import UserError
from ssl_train.run import run
from tests.fixtures import compose_config, make_hf_dataset
from tests.optional import require

require("datasets")
import datasets  # noqa: E402

from ssl_train.data.hf_datasets import HFDatasetSource, HFImages  # noqa: E402


def test_saved_dataset_loads_its_splits_labels_and_images(tmp_path: Path) -> None:
    root = make_hf_dataset(tmp_path / "hf", corrupt=1)
    splits = HFDatasetSource(str(root), image_size=32).load()
    reference = datasets.load_from_disk(str(root))
    assert (len(splits.train), len(splits.test), splits.num_classes) == (24, 24, 4) and splits.class_names == ("class_0", "class_1", "class_2", "class_3")
    image, label = splits.test[5]
    expected = torch.from_numpy(np.asarray(reference["test"][5]["image"].convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(image, expected) and label == reference["test"][5]["label"]
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        first, _ = splits.train[0]  # row 0 is a broken PNG: row 1 is served, the skip counted
    assert torch.equal(first, splits.train[1][0]) and splits.train.skipped == 1


def test_parquet_files_and_a_held_out_test_fraction(tmp_path: Path) -> None:
    saved = datasets.load_from_disk(str(make_hf_dataset(tmp_path / "hf")))
    (tmp_path / "pq").mkdir()
    saved["train"].to_parquet(str(tmp_path / "pq" / "train-00000.parquet"))
    splits = HFDatasetSource(str(tmp_path / "pq"), test_split=None, test_fraction=0.25).load()
    assert (len(splits.train), len(splits.test)) == (18, 6)


def test_bad_column_or_split_is_one_line_naming_the_key_and_what_exists(tmp_path: Path) -> None:
    root = make_hf_dataset(tmp_path / "hf")
    with pytest.raises(UserError, match=r"data.source.image_column: 'img' is not a column of .*; its columns: image, label"):
        HFDatasetSource(str(root), image_column="img").load()
    with pytest.raises(UserError, match=r"data.source.test_split: .* has no split 'val'; its splits: train, test"):
        HFDatasetSource(str(root), test_split="val").load()
    with pytest.raises(UserError, match="does not exist"):
        HFDatasetSource(str(tmp_path / "nowhere")).load()


def test_a_row_without_bytes_is_read_only_from_a_regular_file_inside_the_dataset(tmp_path: Path) -> None:
    import os

    from torchvision.io import encode_png

    root, outside = tmp_path / "hf", tmp_path / "outside.png"
    root.mkdir()
    png = encode_png(torch.zeros(3, 4, 4, dtype=torch.uint8)).numpy().tobytes()
    (root / "inside.png").write_bytes(png)
    outside.write_bytes(png)
    (root / "link.png").symlink_to(outside)
    (root / "alias.png").symlink_to(root / "inside.png")
    os.mkfifo(root / "fifo.png")
    paths = ["inside.png", str(outside), "../outside.png", "link.png", "fifo.png", "/dev/zero", "alias.png"]
    table = datasets.Dataset.from_dict(
        {"image": [{"bytes": None, "path": p} for p in paths]}, features=datasets.Features({"image": datasets.Image(decode=False)})
    )
    images = HFImages(table, "image", [0] * len(paths), 3, 10**6, "rows", root)
    assert torch.equal(images.decode(0), torch.zeros(3, 4, 4, dtype=torch.uint8))
    for index, reason in (
        (1, "not relative"),
        (2, "not relative"),
        (3, "leaves the dataset"),
        (4, "not a regular file"),
        (5, "not relative"),
        (6, "not a regular file"),
    ):
        with pytest.raises(OSError, match=reason):
            images.decode(index)
    with pytest.warns(UserWarning, match=r"skipping unreadable image rows sample 1: its image path .*outside.png"):
        assert torch.equal(images[1][0], images.decode(0))  # rows 1..6 skipped, row 0 served in their place
    assert images.skipped == 6


def test_a_huge_integer_label_is_refused_naming_the_column(tmp_path: Path) -> None:
    saved = datasets.load_from_disk(str(make_hf_dataset(tmp_path / "hf")))
    rows = {split: saved[split].cast_column("label", datasets.Value("int64")) for split in ("train", "test")}
    rows["test"] = rows["test"].map(lambda row, i: {"label": 999_999_999_999 if i == 0 else row["label"]}, with_indices=True)
    datasets.DatasetDict(rows).save_to_disk(str(tmp_path / "huge"))
    with pytest.raises(UserError, match=r"data.source.label_column: 'label' of .*huge holds label 999999999999; .* 0 \.\. 999999"):
        HFDatasetSource(str(tmp_path / "huge")).load()


def test_captions_make_image_text_pairs(tmp_path: Path) -> None:
    splits = HFDatasetSource(str(make_hf_dataset(tmp_path / "hf", captions=True)), caption_column="text").load()
    (image, captions), label = splits.train[3]
    assert splits.modality == "image_text" and captions == (f"a picture of class {label}",) and image.shape == (3, 40, 40)


def test_a_run_trains_from_a_saved_dataset_with_the_folder_command(tmp_path: Path) -> None:
    root = make_hf_dataset(tmp_path / "hf", corrupt=1)
    limits = ["data.source.train_limit=null", "data.source.test_limit=null", "data.source.image_size=32", "data.batch_size=8"]
    metrics = run(compose_config(["data=hf_dataset", f"data.source.path={root}", "data.validation_fraction=0.25", *limits], tmp_path / "run"))
    assert metrics["steps"] == 2 and "linear_top1" in metrics and metrics["data"] == "HFDatasetSource"
