"""Malformed inputs for scripts/fault_drill.py: unknown options for every config group, misspelt keys, invalid numbers
for every numeric key, and corrupt / truncated / empty / missing dataset files on disk."""

from __future__ import annotations

import gzip
import os
import random
from pathlib import Path

import torch

GROUPS = ["data", "augment", "backbone", "head", "loss", "optim", "trainer", "logger", "method", "experiment", "hparams_search", "debug", "eval"]
NUMBERS = ["0", "-1", "nan", "inf", "-inf", "1e12", "-1e-9", "abc", "0.5", "null", "[]", "2.5e38"]
NUMERIC_KEYS = {  # key -> the method it belongs to (None: any)
    "data.batch_size": None, "data.num_workers": None, "data.eval_batch_size": None, "data.validation_fraction": None,
    "optim.optimizer.lr": None, "optim.optimizer.weight_decay": None, "optim.warmup_epochs": None, "optim.min_lr_ratio": None,
    "trainer.max_epochs": None, "trainer.accumulate_grad_batches": None, "trainer.limit_train_batches": None, "seed": None,
    "loss.temperature": "simclr", "head.out_dim": None, "head.hidden_dim": None, "augment.num_global": None, "augment.num_local": None,
    "augment.recipe.crop_scale": None, "method.queue_size": "mocov2", "method.momentum_base": "byol", "loss.lambda_offdiag": "barlow_twins",
    "loss.sim_weight": "vicreg", "loss.student_temp": "dino", "method.num_prototypes": "swav", "method.support_set_size": "nnclr",
    "eval.linear.max_iter": None, "eval.knn.k": None, "backbone.widths": None, "backbone.pool_size": None,
}



def make_image_folder(root: Path, per_class: int = 8) -> Path:
    from torchvision.io import write_png

    for split in ("train", "val"):
        for c in range(2):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                write_png(torch.randint(0, 255, (3, 24, 24), dtype=torch.uint8), str(root / split / f"class{c}" / f"{i}.png"))
    return root


def corrupt_datasets(sandbox: Path) -> list[list[str]]:
    """Overrides pointing at broken dataset files: corrupt/truncated/empty idx, empty and corrupt image folders, missing roots."""
    cases = []
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for kind, payload in (("garbage", os.urandom(4096)), ("empty", b""), ("truncated", b"\x00\x00\x08\x03\x00\x00\x00\x10"),
                          ("bad-gzip", b"\x1f\x8b\x08\x00garbage")):
        root = sandbox / "data" / f"idx-{kind}"
        root.mkdir(parents=True)
        for name in names:
            (root / (name + ".gz")).write_bytes(gzip.compress(payload) if kind != "bad-gzip" else payload)
        cases.append(["data=fashion_mnist", f"data.source.root={root}"])
    mismatch = sandbox / "data" / "idx-mismatch"
    mismatch.mkdir(parents=True)
    for name in names:  # labels for 3 images, 2 images
        count = 3 if "labels" in name else 2
        header = bytes([0, 0, 8, 1 if "labels" in name else 3]) + count.to_bytes(4, "big") + (b"" if "labels" in name else (28).to_bytes(4, "big") * 2)
        (mismatch / name).write_bytes(header + bytes(count * (1 if "labels" in name else 784)))
    cases.append(["data=fashion_mnist", f"data.source.root={mismatch}"])
    empty = sandbox / "data" / "empty-folder"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir(parents=True)
    cases.append(["data=image_folder", f"data.source.root={empty}"])
    bad_images = sandbox / "data" / "corrupt-images"
    for split in ("train", "val"):
        for c in range(2):
            (bad_images / split / f"c{c}").mkdir(parents=True)
            for i in range(4):
                (bad_images / split / f"c{c}" / f"{i}.png").write_bytes(os.urandom(200))
    cases.append(["data=image_folder", f"data.source.root={bad_images}", "data.batch_size=4"])
    cases.append(["data=unlabeled_folder", f"data.source.root={empty}"])
    for data in ("cifar10", "cifar100", "stl10", "mnist", "image_folder"):
        cases.append([f"data={data}", f"data.source.root={sandbox / 'data' / 'does-not-exist'}"])
    cifar = sandbox / "data" / "cifar-garbage" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"):
        (cifar / name).write_bytes(os.urandom(512))
    cases.append(["data=cifar10", f"data.source.root={cifar.parent}"])
    return cases


def bad_inputs(rng: random.Random, count: int, sandbox: Path) -> list[list[str]]:
    """Malformed override sets: unknown options, misspelt keys, invalid numbers, broken files; `count` in all."""
    cases: list[list[str]] = corrupt_datasets(sandbox)
    for group in GROUPS:
        cases.append([f"{group}=no_such_{group}"])
    keys = list(NUMERIC_KEYS)
    for key in keys:  # one misspelling per key
        i = rng.randrange(1, len(key) - 1)
        cases.append([f"{key[:i] + key[i + 1:]}=1"])
    combos = [(key, value) for key in keys for value in NUMBERS]
    rng.shuffle(combos)
    for key, value in combos:
        if len(cases) >= count:
            break
        method = NUMERIC_KEYS[key]
        cases.append(([f"method={method}"] if method else []) + [f"{key}={value}"])
    while len(cases) < count:  # two bad values at once
        (k1, v1), (k2, v2) = rng.sample(combos, 2)
        if NUMERIC_KEYS[k1] is None and NUMERIC_KEYS[k2] is None and k1 != k2:
            cases.append([f"{k1}={v1}", f"{k2}={v2}"])
    return cases[:count]
