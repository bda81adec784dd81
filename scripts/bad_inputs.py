"""Inputs for scripts/fault_drill.py, each with the outcome it expects: unknown options for every config group and misspelt
keys (a Hydra error naming them), numbers for every numeric key (out of range: one line naming the key and the allowed
range; in range: the run goes through and the value is in the built object), and broken dataset files (one line)."""

from __future__ import annotations

import gzip
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

GROUPS = ["data", "augment", "backbone", "head", "loss", "optim", "trainer", "logger", "method", "experiment", "hparams_search", "debug", "eval"]
NUMBERS = ["0", "-1", "nan", "inf", "-inf", "1e12", "-1e-9", "abc", "0.5", "null", "[]", "2.5e38"]
NUMERIC_KEYS = {  # key -> the method it belongs to (None: any)
    "data.batch_size": None,
    "data.num_workers": None,
    "data.eval_batch_size": None,
    "data.validation_fraction": None,
    "optim.optimizer.lr": None,
    "optim.optimizer.weight_decay": None,
    "optim.warmup_epochs": None,
    "optim.min_lr_ratio": None,
    "trainer.max_epochs": None,
    "trainer.accumulate_grad_batches": None,
    "trainer.limit_train_batches": None,
    "seed": None,
    "loss.temperature": "simclr",
    "head.out_dim": None,
    "head.hidden_dim": None,
    "augment.num_global": None,
    "augment.num_local": None,
    "augment.recipe.crop_scale": None,
    "method.queue.size": "mocov2",
    "method.momentum_base": "byol",
    "loss.lambda_offdiag": "barlow_twins",
    "loss.sim_weight": "vicreg",
    "loss.student_temp": "dino",
    "method.num_prototypes": "swav",
    "method.support_set_size": "nnclr",
    "eval.linear.max_iter": None,
    "eval.knn.k": None,
    "backbone.widths": None,
    "backbone.pool_size": None,
}
TRAIN_LIMIT, BATCH = 128, 32  # the drill's tiny runs (fault_drill.TINY): 4 batches an epoch, 2 of them trained (limit_train_batches=2)


def _optimizer(built: Any) -> dict:
    """The trained model's parameter group (the first: the decayed weights)."""
    return built.trainer.optimizers[0].param_groups[0]


def _schedule(built: Any) -> dict:
    """The arguments of that group's warm-up + cosine LR multiplier."""
    return built.trainer.lr_scheduler_configs[0].scheduler.lr_lambdas[0].keywords


# (key, value) -> why the value is legitimate, what shows it took effect, how to read that from (built objects, metrics), and the
# value expected there. Every other (key, value) of NUMERIC_KEYS x NUMBERS is expected refused by ssl_train.validate.
Effect = tuple[str, str, Callable[[Any, dict], Any], Any]
VALID: dict[tuple[str, str], Effect] = {
    ("data.num_workers", "0"): (
        "0 loads batches in the main process (PyTorch's default)",
        "train loader num_workers",
        lambda b, m: b.datamodule.train_dataloader().num_workers,
        0,
    ),
    ("data.validation_fraction", "0"): ("0 evaluates on the test split (the default)", "metrics eval_split", lambda b, m: m["eval_split"], "test"),
    ("data.validation_fraction", "0.5"): (
        "half the train split held out as the evaluation split",
        "eval_split, evaluation split size",
        lambda b, m: (m["eval_split"], len(b.datamodule.splits.test)),
        ("validation", TRAIN_LIMIT // 2),
    ),
    ("optim.optimizer.lr", "0.5"): (
        "sgd's own base lr",
        "optimizer initial_lr (0.5 x 32/256, linear scaling)",
        lambda b, m: _optimizer(b)["initial_lr"],
        0.5 * BATCH / 256,
    ),
    ("optim.optimizer.weight_decay", "0"): ("no weight decay", "optimizer weight_decay", lambda b, m: _optimizer(b)["weight_decay"], 0.0),
    ("optim.optimizer.weight_decay", "0.5"): (
        "inside [0, 10] (AdamW recipes use up to 0.4)",
        "optimizer weight_decay",
        lambda b, m: _optimizer(b)["weight_decay"],
        0.5,
    ),
    ("optim.warmup_epochs", "0"): ("no warm-up", "schedule warmup_steps", lambda b, m: _schedule(b)["warmup_steps"], 0),
    ("optim.warmup_epochs", "0.5"): ("half an epoch", "schedule warmup_steps (0.5 x 2 steps)", lambda b, m: _schedule(b)["warmup_steps"], 1),
    ("optim.min_lr_ratio", "0"): ("cosine down to 0 (SGDR)", "schedule min_ratio", lambda b, m: _schedule(b)["min_ratio"], 0.0),
    ("optim.min_lr_ratio", "0.5"): ("cosine down to half the peak", "schedule min_ratio", lambda b, m: _schedule(b)["min_ratio"], 0.5),
    ("trainer.limit_train_batches", "0.5"): (
        "half of each epoch's batches",
        "batches trained per epoch, steps",
        lambda b, m: (b.trainer.num_training_batches, m["steps"]),
        (TRAIN_LIMIT // BATCH // 2,) * 2,
    ),
    ("trainer.limit_train_batches", "0"): ("Lightning's documented 'no training' (evaluates the initial weights)", "steps", lambda b, m: m["steps"], 0),
    ("seed", "0"): ("any integer in [0, 2^32 - 1]", "metrics seed, PL_GLOBAL_SEED", lambda b, m: (m["seed"], os.environ.get("PL_GLOBAL_SEED")), (0, "0")),
    ("loss.temperature", "0.5"): ("SimCLR's CIFAR temperature", "loss temperature", lambda b, m: b.method.loss.temperature, 0.5),
    ("head.out_dim", "null"): (
        "null is the encoder's width (SimCSE's Linear(d, d))",
        "projector out_dim == in_dim",
        lambda b, m: b.method.projector.out_dim == b.method.projector.in_dim,
        True,
    ),
    ("augment.num_local", "0"): ("no small crops (two-view methods)", "views num_local", lambda b, m: b.datamodule.views().num_local, 0),
    ("method.queue.size", "16"): ("a queue of 16 negatives", "method queue size", lambda b, m: len(b.method.queue.features), 16),
    ("method.momentum_base", "0"): (
        "BYOL's tau ablation (Grill et al. 2020, Table 5) includes tau=0: target = online",
        "method momentum_base",
        lambda b, m: b.method.target.base,
        0.0,
    ),
    ("method.momentum_base", "0.5"): ("inside [0, 1]", "method momentum_base", lambda b, m: b.method.target.base, 0.5),
    ("loss.lambda_offdiag", "0"): ("the invariance term alone (an ablation)", "loss lambda_offdiag", lambda b, m: b.method.loss.lambda_offdiag, 0.0),
    ("loss.lambda_offdiag", "0.5"): ("inside [0, 1000]", "loss lambda_offdiag", lambda b, m: b.method.loss.lambda_offdiag, 0.5),
    ("loss.sim_weight", "0"): ("VICReg without the invariance term (the paper's ablation)", "loss sim_weight", lambda b, m: b.method.loss.sim_weight, 0.0),
    ("loss.sim_weight", "0.5"): ("inside [0, 1000]", "loss sim_weight", lambda b, m: b.method.loss.sim_weight, 0.5),
    ("loss.student_temp", "0.5"): ("inside (0, 100]", "loss student_temp", lambda b, m: b.method.loss.student_temp, 0.5),
}


@dataclass
class Case:
    """Overrides and what they must end in: 'refused' (by `via`: 'validate', 'hydra' or 'data', one line holding every string in
    `names` and one of `any_of`) or 'runs' (every effect in `effects` seen in the built objects)."""

    kind: str  # data | group | misspelt | number | pair
    overrides: list[str]
    expect: str
    via: str = ""
    names: tuple[str, ...] = ()
    any_of: tuple[str, ...] = ()
    effects: tuple[Effect, ...] = ()

    @property
    def label(self) -> str:
        """The overrides as typed on a command line."""
        return " ".join(self.overrides)


def number_case(pairs: list[tuple[str, str]]) -> Case:
    """One or two numeric overrides: refused (naming the first bad key) unless every value is in VALID."""
    methods = {NUMERIC_KEYS[k] for k, _ in pairs} - {None}
    overrides = [f"method={m}" for m in methods] + [f"{k}={v}" for k, v in pairs]
    kind = "pair" if len(pairs) > 1 else "number"
    bad = [k for k, v in pairs if (k, v) not in VALID]
    if bad:  # 'must be' starts the allowed range or type in validate's one line, which names the first bad key it meets
        return Case(kind, overrides, "refused", "validate", names=("must be",), any_of=tuple(bad))
    return Case(kind, overrides, "runs", effects=tuple(VALID[p] for p in pairs))


def make_image_folder(root: Path, per_class: int = 8) -> Path:
    """A labelled image folder (train/val, 2 classes) of random 24x24 PNGs."""
    from torchvision.io import write_png

    for split in ("train", "val"):
        for c in range(2):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                write_png(torch.randint(0, 255, (3, 24, 24), dtype=torch.uint8), str(root / split / f"class{c}" / f"{i}.png"))
    return root


def data_case(overrides: list[str], *names: str) -> Case:
    """A broken-data case: refused in one line holding every string in `names`."""
    return Case("data", overrides, "refused", "data", names=names)


def corrupt_datasets(sandbox: Path) -> list[Case]:
    """Broken dataset files: corrupt/truncated/empty idx, empty and corrupt image folders, missing roots; each line names the file or folder."""
    cases = []
    names = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    for kind, payload, says in (
        ("garbage", os.urandom(4096), "not an idx file"),
        ("empty", b"", "not an idx file"),
        ("truncated", b"\x00\x00\x08\x03\x00\x00\x00\x10", "cut short"),
        ("bad-gzip", b"\x1f\x8b\x08\x00garbage", "cannot be read"),
    ):
        root = sandbox / "data" / f"idx-{kind}"
        root.mkdir(parents=True)
        for name in names:
            (root / (name + ".gz")).write_bytes(gzip.compress(payload) if kind != "bad-gzip" else payload)
        cases.append(data_case(["data=fashion_mnist", f"data.source.root={root}"], f"{root}/train-images-idx3-ubyte.gz", says))
    mismatch = sandbox / "data" / "idx-mismatch"
    mismatch.mkdir(parents=True)
    for name in names:  # labels for 3 images, 2 images
        count = 3 if "labels" in name else 2
        header = bytes([0, 0, 8, 1 if "labels" in name else 3]) + count.to_bytes(4, "big") + (b"" if "labels" in name else (28).to_bytes(4, "big") * 2)
        (mismatch / name).write_bytes(header + bytes(count * (1 if "labels" in name else 784)))
    cases.append(data_case(["data=fashion_mnist", f"data.source.root={mismatch}"], str(mismatch), "2 images but 3 labels"))
    empty = sandbox / "data" / "empty-folder"
    (empty / "train").mkdir(parents=True)
    (empty / "val").mkdir(parents=True)
    cases.append(data_case(["data=image_folder", f"data.source.root={empty}"], f"{empty}/train", "no class sub-folders"))
    bad_images = sandbox / "data" / "corrupt-images"
    for split in ("train", "val"):
        for c in range(2):
            (bad_images / split / f"c{c}").mkdir(parents=True)
            for i in range(4):
                (bad_images / split / f"c{c}" / f"{i}.png").write_bytes(os.urandom(200))
    cases.append(data_case(["data=image_folder", f"data.source.root={bad_images}", "data.batch_size=4"], str(bad_images), "unreadable images"))
    labelled = make_image_folder(sandbox / "data" / "labelled")  # the probe's data is fine: only the unlabeled folder is empty
    cases.append(
        data_case(
            ["data=unlabeled_folder", f"data.source.root={empty}", "data.source.test_limit=null", f"data.source.probe.root={labelled}"], str(empty), "no images"
        )
    )
    for data, folder in (
        ("cifar10", "/cifar-10-batches-py"),
        ("cifar100", "/cifar-100-python"),
        ("stl10", "/stl10_binary"),
        ("mnist", ""),
        ("image_folder", "/train"),
    ):
        missing = sandbox / "data" / "does-not-exist"
        cases.append(data_case([f"data={data}", f"data.source.root={missing}"], f"data.source.root: folder {missing}{folder} does not exist"))
    cifar = sandbox / "data" / "cifar-garbage" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"):
        (cifar / name).write_bytes(os.urandom(512))
    cases.append(data_case(["data=cifar10", f"data.source.root={cifar.parent}"], f"{cifar}/data_batch_1", "not a CIFAR python batch"))
    return cases


def bad_inputs(rng: random.Random, count: int | None, sandbox: Path) -> list[Case]:
    """`count` cases (None: all but pairs): broken files, unknown options, misspelt keys, every (key, number) shuffled, then pairs."""
    cases: list[Case] = corrupt_datasets(sandbox)
    cases += [Case("group", [f"{group}=no_such_{group}"], "refused", "hydra", names=(f"Could not find '{group}/no_such_{group}'",)) for group in GROUPS]
    keys = list(NUMERIC_KEYS)
    for key in keys:  # one misspelling per key
        i = rng.randrange(1, len(key) - 1)
        misspelt = key[:i] + key[i + 1 :]
        cases.append(Case("misspelt", [f"{misspelt}=1"], "refused", "hydra", names=(f"Could not override '{misspelt}'",)))
    combos = [(key, value) for key in keys for value in NUMBERS]
    rng.shuffle(combos)
    cases += [number_case([combo]) for combo in (combos if count is None else combos[: max(0, count - len(cases))])]
    while count is not None and len(cases) < count:  # two numbers at once, for keys of any method
        (k1, v1), (k2, v2) = rng.sample(combos, 2)
        if NUMERIC_KEYS[k1] is None and NUMERIC_KEYS[k2] is None and k1 != k2:
            cases.append(number_case([(k1, v1), (k2, v2)]))
    return cases if count is None else cases[:count]
