"""What the tests share: the repository's paths, the tiny-run overrides and compose_config, and the writers of the small
data sets, models and files the tests read (idx/CIFAR/STL-10/image folders, a Hugging Face model, sequence, audio and
graph arrays, crafted PNGs). Test modules import from here, never from each other; tests/conftest.py keeps the hooks."""

from __future__ import annotations

import gzip
import inspect
import multiprocessing
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from ssl_train.composed import CONFIG_DIR  # the one home of the config tree's path (re-exported: tests import it from here)
from ssl_train.launch import from_composed
from tests.optional import require_what_config_needs

REPO = Path(__file__).resolve().parents[1]

TINY_DATA = [
    "data.source.train_limit=128",
    "data.source.test_limit=64",
    "data.batch_size=32",
    "data.num_workers=0",
    "data.eval_batch_size=64",
]
TINY_MODEL = ["backbone.widths=[8,16]"]
TINY_RUN = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "eval.linear.max_iter=10",
    "eval.linear.l2_grid=[0.0,0.001]",
]


class WritesMarkerWhenUnpickled:
    """A pickle payload that creates a file when loaded: stands in for code a crafted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return open, (str(self.marker), "w")


def compose_config(overrides: list[str], output_dir: Path, config_name: str = "train", tiny: bool = True) -> DictConfig:
    """The real config `config_name` with `overrides`, shrunk for CPU tests when `tiny`, writing under output_dir."""
    shrink: list[str] = []
    if tiny:
        shrink = TINY_DATA + TINY_RUN if config_name == "train" else []
        chosen_eval = next((o for o in overrides if o.startswith("eval=")), "eval=linear")
        if "linear" not in chosen_eval.split("=", 1)[1].strip("[]").split(","):
            shrink = [o for o in shrink if not o.startswith("eval.linear")]
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        own_cache = any(o.startswith("paths.cache_dir=") for o in overrides)
        paths = [f"paths.output_dir={output_dir}"] + ([] if own_cache else [f"paths.cache_dir={output_dir}/cache"])
        cfg = from_composed(compose(config_name, overrides=shrink + list(overrides) + paths, return_hydra_config=True))  # method_name as the CLI stores it
        if tiny and config_name == "train" and cfg.backbone.get("_target_", "").endswith("SmallResNet"):  # the one the method or user chose
            cfg = from_composed(compose(config_name, overrides=shrink + TINY_MODEL + list(overrides) + paths, return_hydra_config=True))
    require_what_config_needs(cfg)  # a config that needs a Debian package or an extra this machine lacks: skipped, naming it
    return cfg


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    """Write `array` (uint8) as an idx file, gzip-compressed when `compress`."""
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


def make_idx_dataset(root: Path, n_train: int = 60, n_test: int = 30, compress: bool = True, seed: int = 0) -> Path:
    """A tiny MNIST-format dataset on disk: class c images are bright in row band c (learnable), 10 classes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
        for i, c in enumerate(labels):
            images[i, 2 * c : 2 * c + 4] = 220
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress)
    return root


def class_images(n: int, channels: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uint8 images (n, C, size, size) whose class (i % 10) is a bright horizontal band: learnable, deterministic."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = rng.integers(0, 60, size=(n, channels, size, size), dtype=np.uint8)
    band = max(1, size // 12)
    for i, c in enumerate(labels):
        images[i, :, band * c : band * c + band] = 220
    return images, labels


def make_cifar(root: Path, num_classes: int = 10, n_train: int = 40, n_test: int = 20) -> Path:
    """The CIFAR python layout (pickled dicts of bytes keys) with tiny random batches."""
    import pickle

    folder = root / ("cifar-10-batches-py" if num_classes == 10 else "cifar-100-python")
    folder.mkdir(parents=True, exist_ok=True)
    key = b"labels" if num_classes == 10 else b"fine_labels"
    names = [f"data_batch_{i}" for i in range(1, 6)] if num_classes == 10 else ["train"]
    images, labels = class_images(n_train, 3, 32, 0)
    for part, name in zip(np.array_split(np.arange(n_train), len(names)), names, strict=True):
        (folder / name).write_bytes(pickle.dumps({key: labels[part].tolist(), b"data": images[part].reshape(len(part), -1)}))
    images, labels = class_images(n_test, 3, 32, 1)
    (folder / ("test_batch" if num_classes == 10 else "test")).write_bytes(pickle.dumps({key: labels.tolist(), b"data": images.reshape(n_test, -1)}))
    return root


def make_stl10(root: Path, n_train: int = 20, n_test: int = 20, n_unlabeled: int = 30) -> Path:
    """The STL-10 binary layout (column-major 3x96x96 uint8, labels 1..10)."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    for split, n, seed in (("train", n_train, 0), ("test", n_test, 1), ("unlabeled", n_unlabeled, 2)):
        images, labels = class_images(n, 3, 96, seed)
        images.transpose(0, 1, 3, 2).tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            (labels + 1).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    return root


def make_image_folder(root: Path, n_per_class: int = 3, classes: int = 4, size: int = 40, corrupt: int = 0) -> Path:
    """<root>/train/<class>/*.png and <root>/val/<class>/*.png, plus `corrupt` unreadable .jpg files in train."""
    from torchvision.io import write_png

    for split, seed in (("train", 0), ("val", 1)):
        images, labels = class_images(n_per_class * classes, 3, size, seed)
        for i, (image, label) in enumerate(zip(images, labels % classes, strict=True)):
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True, exist_ok=True)
            write_png(torch.from_numpy(image), str(folder / f"{i:04d}.png"))
    for i in range(corrupt):
        (root / "train" / "class_0" / f"broken_{i}.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return root


HF_WORDS = (
    "the a of to and in is that for on with as by or an be from at which it this are not person animal move act "
    "something plant body food place state make change used having relating quality"
).split()


def make_hf_model(root: Path, hidden: int = 32, layers: int = 2) -> Path:
    """A tiny BERT (WordPiece vocabulary learned locally, random weights) saved as a Hugging Face model folder: what
    `save_pretrained` writes for a real one (config.json, model.safetensors, tokenizer files). Needs transformers."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(1234)  # not the tests' seed: a random init there must differ from these weights
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator([" ".join(HF_WORDS)] * 4, trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials, show_progress=False))
    fast = BertTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = BertConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
        pad_token_id=fast.pad_token_id,
    )
    root.mkdir(parents=True, exist_ok=True)
    BertModel(config).save_pretrained(root)
    fast.save_pretrained(root)
    return root


PAIR_ARGUMENTS = (["z_a", "z_b"], ["query", "positive_key"], ["p", "z"])  # the forward of a loss on two (N, D) views


def is_pair_loss(loss_class: type) -> bool:
    """Whether `loss_class` scores two (N, D) views (what the siamese and target-network methods call)."""
    return list(inspect.signature(loss_class.forward).parameters)[1:3] in PAIR_ARGUMENTS


def make_sequence_arrays(path: Path, n_train: int = 24, n_test: int = 12, steps: int = 16, features: int = 3) -> Path:
    """A tiny .npz of (N, T, F) sequences whose class sets the frequency of a sine: learnable, deterministic."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 3
        t = np.arange(steps)[None, :, None]
        arrays[f"{split}_x"] = (np.sin(t * (labels[:, None, None] + 1) * 0.4) + 0.1 * rng.standard_normal((n, steps, features))).astype(np.float32)
        arrays[f"{split}_y"] = labels
    np.savez(path, **arrays)
    return path


def make_audio_folder(root: Path, per_class: int = 3, corrupt: int = 1, rate: int = 8000) -> Path:
    """<root>/{train,test}/<tone_k>/*.wav: class k is a sine of 200 (k + 1) Hz; `corrupt` broken files in train. Needs soundfile."""
    import soundfile

    for split in ("train", "test"):
        for k in range(3):
            folder = root / split / f"tone_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                t = np.arange(int(0.5 * rate)) / rate
                soundfile.write(folder / f"{i}.wav", 0.3 * np.sin(2 * np.pi * 200 * (k + 1) * t + i), rate)
    for i in range(corrupt):
        (root / "train" / "tone_0" / f"broken_{i}.wav").write_bytes(b"RIFF\x00\x00 not a wave file")
    return root


def karate() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Zachary's karate club (x, edge_index, y). Needs torch_geometric, which ships it in its source: no download."""
    from torch_geometric.datasets import KarateClub

    data = KarateClub()[0]
    return data.x, data.edge_index, data.y


def make_graph_arrays(path: Path, **drop: bool) -> Path:
    """Karate club as a .npz (x, edge_index, y, train_mask), leaving out the keys named in `drop`. Needs torch_geometric."""
    x, edge_index, y = karate()
    arrays = {"x": x.numpy(), "edge_index": edge_index.numpy(), "y": y.numpy(), "train_mask": (torch.arange(34) < 24).numpy()}
    np.savez(path, **{k: v for k, v in arrays.items() if not drop.get(k)})
    return path


def one_line(error: pytest.ExceptionInfo[BaseException]) -> str:
    """The exception's message, asserted to be one line."""
    message = str(error.value)
    assert "\n" not in message
    return message


def chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk with its length and CRC."""
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png(width: int, height: int, depth: int = 8, colour: int = 2, interlace: int = 0, idat: bytes | None = None, extra: bytes = b"") -> bytes:
    """A PNG of zero pixels (or with the IDAT payload `idat`), CRCs correct."""
    from ssl_train.data.image_guard import png_rows

    if idat is None:
        rows = png_rows(width, height, depth * {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour], interlace)
        idat = zlib.compress(b"".join(b"\x00" * stride for stride, count in rows for _ in range(count)))
    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, interlace))
    return b"\x89PNG\r\n\x1a\n" + header + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def crashing_png() -> bytes:
    """69 bytes: a 64x64 RGB PNG whose IDAT zlib stream is cut to 12 bytes (torchvision's decoder segfaults on it)."""
    return png(64, 64, idat=png(64, 64)[41:53])


def decode_in_child(paths: list[Path]) -> tuple[int | None, Any]:
    """Read every image through ImageFileDataset in a forked child process (a segfault there fails the test, not pytest):
    (the child's exit code, its (skipped, shapes, warnings))."""
    from ssl_train.data.folders import ImageFileDataset

    context = multiprocessing.get_context("fork")
    receive, send = context.Pipe(duplex=False)

    def child() -> None:
        dataset = ImageFileDataset(paths, [0] * len(paths))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            shapes = [tuple(dataset[i][0].shape) for i in range(len(paths))]
        send.send((dataset.skipped, shapes, [str(w.message) for w in caught if "skipping" in str(w.message)]))

    process = context.Process(target=child)
    process.start()
    process.join(60)
    return process.exitcode, receive.recv() if receive.poll() else None


def tiny_vit(image_size: int = 28, channels: int = 1) -> Any:
    """A 2-block timm ViT-Tiny with 4 px patches (a TimmEncoder). Needs timm."""
    from ssl_train.encoders.timm_encoder import TimmEncoder

    return TimmEncoder("vit_tiny_patch16_224", in_channels=channels, image_size=image_size, patch_size=4, model_kwargs={"depth": 2})


def separable_images(n: int, generator: torch.Generator) -> torch.utils.data.TensorDataset:
    """n (1, 28, 28) images in 4 classes, class c a bright band in rows 7c..7c+6 over noise: linearly separable."""
    labels = torch.arange(n) % 4
    images = 0.3 * torch.randn(n, 1, 28, 28, generator=generator)
    for i, c in enumerate(labels):
        images[i, :, 7 * c : 7 * c + 7] += 2.0  # class c: a bright band
    return torch.utils.data.TensorDataset(images, labels)


def make_shards(root: Path, per_class: int = 12, shard_size: int = 6, corrupt: int = 0) -> Path:
    """root/shards: a 4-class image folder (per_class x 4 train and val images of 40 px) written by `toolkit shard`."""
    from ssl_train.toolkit.shard import shard_data

    folder = make_image_folder(root / "folder", n_per_class=per_class, classes=4, size=40, corrupt=corrupt)
    shard_data("image_folder", [f"data.source.root={folder}", "data.source.train_limit=null", "data.source.test_limit=null"], root / "shards", shard_size)
    return root / "shards"


def make_hf_dataset(root: Path, per_class: int = 6, classes: int = 4, captions: bool = False, corrupt: int = 0) -> Path:
    """A `save_to_disk` DatasetDict (train, test) of 40 px PNGs in an Image column, a ClassLabel, optional captions."""
    import datasets
    from torchvision.io import encode_png

    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=[f"class_{c}" for c in range(classes)])}
    splits = {}
    for split, seed in (("train", 0), ("test", 1)):
        images, labels = class_images(per_class * classes, 3, 40, seed)
        rows: dict[str, list] = {"image": [{"bytes": encode_png(torch.from_numpy(im)).numpy().tobytes(), "path": None} for im in images]}
        rows["label"] = [int(c) % classes for c in labels]
        if split == "train":
            for i in range(corrupt):
                rows["image"][i] = {"bytes": b"\x89PNG\r\n\x1a\n broken", "path": None}
        if captions:
            rows["text"] = [f"a picture of class {c}" for c in rows["label"]]
        splits[split] = datasets.Dataset.from_dict(rows, features=datasets.Features({**features, **({"text": datasets.Value("string")} if captions else {})}))
    datasets.DatasetDict(splits).save_to_disk(str(root))
    return root
