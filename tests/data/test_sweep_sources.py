"""A sweep (`python -m ssl_train -m ...`) trains from WebDataset shards and from a saved Hugging Face dataset with the
command it trains from an image folder: only `data=` and the source's location differ (issue 45's done-when)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures import TINY_DATA, TINY_RUN, make_hf_dataset, make_image_folder, make_shards
from tests.optional import require

pytestmark = pytest.mark.slow
SAME = [
    "-m",
    "seed=0,1",
    *TINY_DATA,
    *TINY_RUN,
    "data.source.train_limit=null",
    "data.source.test_limit=null",
    "data.source.image_size=32",
    "data.batch_size=8",
]


def _source(option: str, root: Path) -> list[str]:
    """The two overrides that name the data: the option and where its files are."""
    if option == "image_folder":
        return ["data=image_folder", f"data.source.root={make_image_folder(root / 'folder', n_per_class=12)}"]
    if option == "webdataset":
        require("webdataset")
        return ["data=webdataset", f"data.source.urls={make_shards(root)}"]
    require("datasets")
    return ["data=hf_dataset", f"data.source.path={make_hf_dataset(root / 'hf', per_class=12)}"]


@pytest.mark.parametrize("option", ["image_folder", "webdataset", "hf_dataset"])
def test_a_seed_sweep_trains_from_each_source_with_the_same_command(tmp_path: Path, option: str) -> None:
    command = [sys.executable, "-m", "ssl_train", *SAME, *_source(option, tmp_path), f"paths.sweeps_dir={tmp_path / 'sweeps'}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (sweep,) = [p.parent for p in (tmp_path / "sweeps").glob("*/*/summary.md")]
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/metrics.json"))]
    assert [job["seed"] for job in jobs] == [0, 1]
    for job in jobs:
        assert job["data"] == option and job["steps"] == 2 and "linear_top1" in job  # trained (limit_train_batches=2), then probed
    assert "## Over seeds" in (sweep / "summary.md").read_text()
