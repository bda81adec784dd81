"""data=webdataset: tar shards streamed by rank and worker, each sample once an epoch, resumed mid-epoch, bad members skipped."""

from __future__ import annotations

import io
import json
import pickle
import tarfile
from collections import Counter
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch

from ssl_train.build import build, build_datamodule
from ssl_train.data.folders import ImageFileDataset, list_images
from ssl_train.errors import UserError
from ssl_train.run import run
from tests.fixtures import compose_config, make_shards
from tests.optional import require

require("webdataset")
from ssl_train.data.shard_stream import ShardLoader, ShardStream, done_by_slot  # noqa: E402
from ssl_train.data.shards import ShardSource, expand_shards  # noqa: E402

BATCH = 3


def write_shards(tmp_path: Path, per_class: int = 12, shard_size: int = 6, corrupt: int = 0) -> Path:
    """A 4-class image folder (per_class x 4 train images of 40 px) written as shards by the shard tool."""
    return make_shards(tmp_path, per_class, shard_size, corrupt)


def image_ids(tmp_path: Path) -> dict[bytes, str]:
    """Each train image's decoded pixels -> its file name (the images are random noise: all distinct)."""
    paths = list_images(tmp_path / "folder" / "train")
    images = ImageFileDataset(paths, [0] * len(paths))
    return {images.decode(i).numpy().tobytes(): p.name for i, p in enumerate(paths) if not p.name.startswith("broken")}


def epoch_batches(
    shards: Path, rank: int, world: int, workers: int, epoch: int, monkeypatch: pytest.MonkeyPatch, resume: dict | None = None
) -> list[list[bytes]]:
    """The batches rank `rank` of `world` streams in `epoch` (each batch: its images' pixel bytes), optionally resumed."""
    monkeypatch.setenv("RANK", str(rank))  # what webdataset's split_by_node reads (torch.distributed does it in a real run)
    monkeypatch.setenv("WORLD_SIZE", str(world))
    stream = ShardStream(expand_shards(str(shards), "train", "urls"), 48, 3, 10**6, False, buffer=8)
    stream.configure(lambda image: image, BATCH, seed=7, shuffle=True, workers=workers)
    done = resume["batches_done"] if resume else 0
    loader = ShardLoader(stream, lambda: (epoch, done), num_workers=workers, pin_memory=False)
    if resume:
        loader.load_state_dict(resume)
    assert len(loader) == 48 // (world * BATCH)
    return [[image.numpy().tobytes() for image in images] for images, _ in loader]


def test_two_ranks_of_two_workers_visit_each_sample_once_an_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards, ids = write_shards(tmp_path), image_ids(tmp_path)  # 48 train samples in 8 shards of 6: 2 per (rank, worker)
    orders = []
    for epoch in (0, 1):
        per_rank = [epoch_batches(shards, rank, 2, 2, epoch, monkeypatch) for rank in (0, 1)]
        assert [len(batches) for batches in per_rank] == [8, 8]  # the same steps on every rank: DDP never waits
        visited = [ids[image] for batches in per_rank for batch in batches for image in batch]
        assert len(visited) == 48 and set(visited) == set(ids.values())  # every sample exactly once across ranks
        orders.append(visited)
    assert orders[0] != orders[1]  # a new shard order and shuffle each epoch


def test_uneven_shards_keep_equal_steps_within_the_documented_tolerance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards, ids = write_shards(tmp_path, shard_size=5), image_ids(tmp_path)  # 9 shards of 5 and one of 3
    per_rank = [epoch_batches(shards, rank, 2, 2, 0, monkeypatch) for rank in (0, 1)]
    assert [len(batches) for batches in per_rank] == [8, 8]
    counts = Counter(ids[image] for batches in per_rank for batch in batches for image in batch)
    # each (rank, worker) slot needs 12 samples and holds 2 or 3 shards (8 to 15 samples): its surplus is not visited,
    # its deficit repeated from its own shards; never more than twice here, and every slot's share is streamed
    assert sum(counts.values()) == 48 and max(counts.values()) <= 2 and len(counts) >= 48 - 4 * 3


@pytest.mark.parametrize("stopped_after", [3, 4, 5])
def test_a_resumed_epoch_continues_where_the_interrupted_one_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stopped_after: int) -> None:
    shards = write_shards(tmp_path)
    uninterrupted = epoch_batches(shards, 0, 1, 2, 3, monkeypatch)
    resumed = epoch_batches(shards, 0, 1, 2, 3, monkeypatch, resume={"epoch": 3, "batches_done": stopped_after})
    assert resumed == uninterrupted[stopped_after:]  # the same images in the same order, with 2 workers (slots rotated)
    other_epoch = epoch_batches(shards, 0, 1, 2, 4, monkeypatch, resume={"epoch": 3, "batches_done": stopped_after})
    assert len(other_epoch) == 16  # a position saved in another epoch is ignored: the whole epoch


def test_done_by_slot_counts_the_round_robin() -> None:
    assert [done_by_slot(slot, 3, 7) for slot in range(3)] == [3, 2, 2]  # batches 0..6 come from slots 0,1,2,0,1,2,0
    assert [done_by_slot(slot, 2, 0) for slot in range(2)] == [0, 0]


def test_malformed_members_are_skipped_and_pickles_never_loaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shards = write_shards(tmp_path, corrupt=1)  # a broken .jpg among the train images
    marker = tmp_path / "unpickled"

    class Payload:
        def __reduce__(self):  # unpickling it would create `marker`
            return (open, (str(marker), "w"))

    with tarfile.open(shards / "train-000000.tar", "a") as tar:  # a sample whose .pyd member is a pickle
        for name, data in (("evil.png", (tmp_path / "folder/train/class_0/0000.png").read_bytes()), ("evil.pyd", pickle.dumps(Payload()))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    stream = ShardStream(expand_shards(str(shards), "train", "urls"), 49, 3, 10**6, False, buffer=8)  # 50 samples, 1 unreadable
    stream.configure(lambda image: image, 1, seed=0, shuffle=False, workers=1)
    with pytest.warns(UserWarning, match="skipping unreadable shard sample"):
        samples = [labels for _, labels in ShardLoader(stream, lambda: (0, 0), num_workers=0, pin_memory=False)]
    assert stream.skipped == 1 and len(samples) == 49  # 48 images + the evil sample's PNG; the broken JPEG skipped and counted
    assert not marker.exists()


def test_probe_splits_and_errors(tmp_path: Path) -> None:
    shards = write_shards(tmp_path)
    splits = ShardSource(str(shards), image_size=32, probe_train_size=20).load()
    assert (len(splits.train), len(splits.test), splits.num_classes, len(splits.pretrain_set)) == (20, 48, 4, 48)
    assert splits.class_names == ("0", "1", "2", "3") and not splits.fixed_size  # classes.json (an image folder names no classes)
    image, label = splits.test[0]
    assert image.shape == (3, 40, 40) and image.dtype == torch.uint8 and label == 0  # the test split in order
    with pytest.raises(UserError, match="test_urls"):
        ShardSource(f"{shards}/train-{{000000..000007}}.tar").load()
    assert len(ShardSource(str(shards), num_samples=30, test_urls=f"{shards}/test-000000.tar").load().pretrain_set) == 30
    with pytest.raises(UserError, match="data.num_workers: 8 train shards cannot feed 1 process"):
        ShardStream(expand_shards(str(shards), "train", "urls"), 48, 3, 10**6, False, 8).configure(lambda x: x, 2, 0, True, workers=9)
    (shards / "sizes.json").unlink()
    with pytest.raises(UserError, match="num_samples"):
        ShardSource(f"{shards}/train-{{000000..000007}}.tar", test_urls=f"{shards}/test-000000.tar").load()


@pytest.mark.parametrize("bad", ["list", "string", "NaN", "6.5", "true", "-1", "deep"])
def test_a_malformed_sizes_json_is_one_line_naming_it(tmp_path: Path, bad: str) -> None:
    shards = write_shards(tmp_path)
    names = sorted(p.name for p in shards.glob("train-*.tar"))  # every shard listed: only the value's type is wrong
    sizes = {"list": json.dumps(names), "string": json.dumps(" ".join(names)), "deep": "[" * 200_000}
    text = sizes.get(bad) or "{" + ", ".join(f'"{n}": {bad if i == 0 else 6}' for i, n in enumerate(names)) + "}"
    (shards / "sizes.json").write_text(text)
    with pytest.raises(UserError, match=r"sizes\.json"):
        ShardSource(str(shards)).load()


@pytest.mark.parametrize("names", ['{"0": "a"}', '"abcd"', "[1, 2, 3, 4]", "[" * 200_000, "not json"])
def test_a_malformed_classes_json_is_one_line_naming_it(tmp_path: Path, names: str) -> None:
    shards = write_shards(tmp_path)
    (shards / "classes.json").write_text(names)
    with pytest.raises(UserError, match=r"classes\.json"):
        ShardSource(str(shards), image_size=32, probe_train_size=20).load()


def test_a_huge_label_is_refused_before_naming_its_classes(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, per_class=2, shard_size=4)
    (shards / "classes.json").unlink()
    with tarfile.open(shards / "test-000000.tar", "a") as tar:  # one more test sample whose label is 999999999999
        member = tarfile.TarInfo("zzz.cls")
        member.size = len(b"999999999999")
        tar.addfile(member, io.BytesIO(b"999999999999"))
    with pytest.raises(UserError, match=r"label 999999999999.* is too large.*0 \.\. 999999"):
        ShardSource(str(shards), image_size=32, probe_train_size=4).load()


def test_a_run_trains_from_shards_with_the_folder_command(tmp_path: Path) -> None:
    shards = write_shards(tmp_path, corrupt=1)
    limits = ["data.source.train_limit=null", "data.source.test_limit=null", "data.source.image_size=32", "data.batch_size=8"]
    metrics = run(compose_config(["data=webdataset", f"data.source.urls={shards}", *limits], tmp_path / "run"))
    assert metrics["steps"] == 2 and "linear_top1" in metrics and metrics["skipped_images"] >= 1  # limit_train_batches=2; the bad one counted


def test_validation_samples_leave_the_pretraining_stream(tmp_path: Path) -> None:
    shards = write_shards(tmp_path)
    cfg = compose_config(["data=webdataset", f"data.source.urls={shards}", "data.validation_fraction=0.25", "data.source.train_limit=null"], tmp_path / "run")
    datamodule = build_datamodule(cfg.data)
    held_out = datamodule.splits.test
    assert len(held_out) == 12 and len(datamodule.splits.train) == 36
    stream = datamodule.stream
    assert stream.exclude == {datamodule.splits.train.dataset.keys[i] for i in held_out.indices} and len(stream) == 36


def test_lightning_checkpoints_the_stream_position(tmp_path: Path) -> None:
    """The loader's state (epoch, batches done) goes into the fit loop's checkpoint, where a resumed fit restores it from."""
    shards = write_shards(tmp_path)
    cfg = compose_config(
        ["data=webdataset", f"data.source.urls={shards}", "data.source.image_size=32", "data.batch_size=8", "probe=false", "baseline=false"], tmp_path / "run"
    )
    built = build(cfg)
    saved: list[dict] = []

    class Save(pl.Callback):  # what a mid-epoch checkpoint (ModelCheckpoint, preemption) holds after each batch
        def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
            saved.append(trainer._checkpoint_connector.dump_checkpoint()["loops"]["fit_loop"]["state_dict"]["combined_loader"])

    built.trainer.callbacks.append(Save())
    built.trainer.fit(built.module, datamodule=built.datamodule)
    assert saved == [[{"epoch": 0, "batches_done": 1}], [{"epoch": 0, "batches_done": 2}]]  # limit_train_batches=2
    loader = built.trainer.train_dataloader
    assert isinstance(loader, ShardLoader)
    loader.load_state_dict({"epoch": built.trainer.current_epoch, "batches_done": 4})  # what a resumed fit restores
    assert len(list(loader)) == 2  # 48 samples / 8 = 6 batches, 4 done
