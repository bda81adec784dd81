"""toolkit shard: any image source as WebDataset shards (sizes, classes, bytes kept), never over an existing folder."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from ssl_train.toolkit.__main__ import main
from tests.fixtures import make_image_folder
from tests.optional import require

require("webdataset")


def test_a_folder_converts_with_one_command_and_an_existing_folder_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_image_folder(tmp_path / "folder", n_per_class=3, classes=4)
    args = [
        "shard",
        "--data",
        "image_folder",
        "--set",
        f"data.source.root={root}",
        "data.source.train_limit=null",
        "--out",
        str(tmp_path / "s"),
        "--shard-size",
        "5",
    ]
    result = main(args)
    assert result["samples"] == {"train": 12, "test": 12} and result["shards"] == 6
    sizes = json.loads((tmp_path / "s" / "sizes.json").read_text())
    assert sizes == {"train-000000.tar": 5, "train-000001.tar": 5, "train-000002.tar": 2, "test-000000.tar": 5, "test-000001.tar": 5, "test-000002.tar": 2}
    with tarfile.open(tmp_path / "s" / "test-000000.tar") as tar:
        assert sorted(tar.getnames()[:2]) == ["00000000.cls", "00000000.png"]
        assert tar.extractfile("00000000.png").read() == (root / "val" / "class_0" / "0000.png").read_bytes()  # bytes copied as they are
    with pytest.raises(SystemExit):
        main(args)
    assert "refusing to overwrite" in capsys.readouterr().err


def test_the_embedded_arrays_become_png_samples(tmp_path: Path) -> None:
    result = main(["shard", "--data", "default", "--set", "data.source.train_limit=10", "data.source.test_limit=4", "--out", str(tmp_path / "s")])
    assert result["samples"] == {"train": 10, "test": 4}
    with tarfile.open(tmp_path / "s" / "train-000000.tar") as tar:
        assert tar.extractfile("00000000.png").read()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "s" / "classes.json").read_text()) == [str(c) for c in range(10)]
