"""`python -m ssl_train.toolkit COMMAND --ckpt PATH [options]`: export, embed, search, anomaly, map, views, attention;
`python -m ssl_train.toolkit shard --data OPTION --out DIR`: a data option as WebDataset shards (ssl_train.toolkit.shard).

Outputs go to a new folder beside the checkpoint (<ckpt dir>/<command>[-N]) unless --out is given; nothing is overwritten.
Data defaults to the checkpoint's own training data; --data OPTION picks another config of configs/data
(with --set data.source.root=DIR style overrides), --images DIR embeds a folder of image files.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.utils.data import Subset
from torchvision.io import write_png

from ssl_train.build import build_datamodule, instantiate
from ssl_train.cli import report_user_errors
from ssl_train.composed import compose_run_config
from ssl_train.data.datamodule import SSLDataModule, TransformedDataset
from ssl_train.data.folders import ImageFileDataset, list_images
from ssl_train.data.views import eval_transform
from ssl_train.errors import UserError
from ssl_train.eval.checkpoint import encoder_from_checkpoint
from ssl_train.eval.linear_probe import extract_features
from ssl_train.run_dir import fresh_dir
from ssl_train.toolkit.anomaly import auroc, knn_anomaly_scores, mahalanobis_scores
from ssl_train.toolkit.export import export_backbone
from ssl_train.toolkit.pictures import attention_grid, save_map, view_grid
from ssl_train.toolkit.search import knn_search, label_recall_at_k
from ssl_train.toolkit.shard import add_parser as add_shard_parser


def _datamodule(args: argparse.Namespace, train_cfg: Any, views: Any = None) -> SSLDataModule:
    """The checkpoint's training data, or `--data OPTION [--set ...]`; with the partial view pipeline `views` when given."""
    if args.data is None:
        return build_datamodule(train_cfg.data, views=views)
    return build_datamodule(compose_run_config([f"data={args.data}", *args.set]).data, views=views)


def _features(args: argparse.Namespace) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], Any, list[str] | None]:
    """{'train': (x, y), 'test': (x, y)} features of the chosen data (or {'images': ...} for --images) and the run config."""
    encoder, train_cfg = encoder_from_checkpoint(args.ckpt, trust=args.trust_checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    datamodule = _datamodule(args, train_cfg)
    if getattr(args, "images", None):
        paths = list_images(Path(args.images))
        if not paths:
            raise UserError(f"--images: no image files under {args.images}")
        s = datamodule.splits
        dataset = TransformedDataset(
            ImageFileDataset(paths, [-1] * len(paths), cast(int, s.input_spec.channels)), eval_transform(s.mean, s.std, s.input_spec.size)
        )
        return {"images": extract_features(encoder, dataset, 256, device)}, train_cfg, [str(p) for p in paths]
    train, test = datamodule.evaluation_datasets()
    if args.limit:
        train, test = Subset(train, range(min(args.limit, len(cast(Sized, train))))), Subset(test, range(min(args.limit, len(cast(Sized, test)))))
    return {"train": extract_features(encoder, train, 256, device), "test": extract_features(encoder, test, 256, device)}, train_cfg, None


def _out(args: argparse.Namespace, command: str) -> Path:
    return fresh_dir(Path(args.out) if args.out else Path(args.ckpt).expanduser().parent / command)


def cmd_export(args: argparse.Namespace) -> dict:
    card = export_backbone(args.ckpt, args.out, fmt=args.format, torchscript=args.torchscript, onnx=args.onnx, trust=args.trust_checkpoint)
    return {"export_dir": card["export_dir"], "files": sorted(p.name for p in Path(card["export_dir"]).iterdir()), "how_to_load": card["how_to_load"]}


def cmd_embed(args: argparse.Namespace) -> dict:
    features, _, ids = _features(args)
    out = _out(args, "embed")
    for split, (x, y) in features.items():
        if args.split and split not in (args.split, "images"):
            continue
        np.save(out / f"{split}_embeddings.npy", x.numpy())
        if bool((y >= 0).any()):
            np.save(out / f"{split}_labels.npy", y.numpy())
        (out / f"{split}_ids.txt").write_text("\n".join(ids if ids else map(str, range(len(x)))) + "\n")
    return {"out": str(out), "splits": {k: list(v[0].shape) for k, v in features.items()}}


def cmd_search(args: argparse.Namespace) -> dict:
    features, _, _ = _features(args)
    (gallery, gallery_y), (queries, query_y) = features["train"], features["test"]
    sims, idx = knn_search(queries, gallery, args.k)
    out = _out(args, "search")
    np.save(out / "neighbours.npy", idx.numpy())
    np.save(out / "similarities.npy", sims.numpy())
    result = {"out": str(out), "queries": len(queries), "gallery": len(gallery), **label_recall_at_k(query_y, gallery_y, idx, (1, 5, args.k))}
    (out / "recall.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def cmd_anomaly(args: argparse.Namespace) -> dict:
    features, _, _ = _features(args)
    (train_x, train_y), (test_x, test_y) = features["train"], features["test"]
    normal = train_x[train_y != args.holdout_class]
    scores = knn_anomaly_scores(normal, test_x, args.k) if args.method == "knn" else mahalanobis_scores(normal, test_x)
    out = _out(args, "anomaly")
    np.save(out / "scores.npy", scores.numpy())
    result = {"out": str(out), "method": args.method, "holdout_class": args.holdout_class, "auroc": auroc(scores, test_y == args.holdout_class)}
    (out / "auroc.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def cmd_map(args: argparse.Namespace) -> dict:
    features, _, _ = _features(args)
    x, y = features[args.split or "test"]
    out = _out(args, "map")
    used = save_map(x, y if bool((y >= 0).any()) else None, out / "embedding_map.png", out / "tensorboard", args.method)
    return {"out": str(out / "embedding_map.png"), "method": used, "points": len(x)}


def cmd_views(args: argparse.Namespace) -> dict:
    _, train_cfg = encoder_from_checkpoint(args.ckpt, trust=args.trust_checkpoint)
    datamodule = _datamodule(args, train_cfg, views=instantiate("augment", train_cfg.augment))
    s, views = datamodule.splits, datamodule.views()
    images = [s.pretrain_set[i][0] for i in range(min(args.count, len(cast(Sized, s.pretrain_set))))]
    if not s.fixed_size:
        channels, size = cast(int, s.input_spec.channels), cast(int, s.input_spec.size)  # image data: both set
        images = [eval_transform((0.0,) * channels, (1 / 255,) * channels, round(size / 0.875))(im).round().to(torch.uint8) for im in images]
    out = _out(args, "views")
    write_png(view_grid(views, images, s.mean, s.std), str(out / "views.png"))
    return {"out": str(out / "views.png"), "images": len(images), "views_per_image": len(views(images[0]))}


def cmd_attention(args: argparse.Namespace) -> dict:
    encoder, train_cfg = encoder_from_checkpoint(args.ckpt, trust=args.trust_checkpoint)
    if not callable(getattr(encoder, "cls_attention", None)):
        raise UserError(f"attention: the checkpoint's encoder ({type(encoder).__name__}) is not a vision transformer; train with backbone=vit_tiny / vit_small")
    datamodule = _datamodule(args, train_cfg)
    s = datamodule.splits
    _, test = datamodule.evaluation_datasets()
    images = torch.stack([test[i][0] for i in range(min(args.count, len(cast(Sized, test))))])
    vit: Any = encoder  # a ViT: its cls_attention, checked above
    attention = vit.eval().cls_attention(images)
    out = _out(args, "attention")
    write_png(attention_grid(images, attention, s.mean, s.std), str(out / "attention.png"))
    np.save(out / "attention.npy", attention.numpy())
    return {"out": str(out / "attention.png"), "images": len(images), "heads": int(attention.shape[1]), "grid": int(attention.shape[-1])}


def parser() -> argparse.ArgumentParser:
    main = argparse.ArgumentParser(prog="python -m ssl_train.toolkit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = main.add_subparsers(dest="command", required=True)
    specs = {
        "export": (cmd_export, "encoder as model.safetensors + config.json + README model card (+ --torchscript, --onnx)"),
        "embed": (cmd_embed, "embeddings .npy (+ labels, ids) of a dataset's splits or an image folder"),
        "search": (cmd_search, "top-k neighbours of the test split in the train split, recall@k"),
        "anomaly": (cmd_anomaly, "kNN / Mahalanobis anomaly scores; AUROC with one class held out as the anomaly"),
        "map": (cmd_map, "2-D map of embeddings (auto: UMAP if umap-learn is installed, else PCA; or --method tsne) as PNG and TensorBoard"),
        "views": (cmd_views, "grid of augmented views of a few training images (what the augment config does)"),
        "attention": (cmd_attention, "a ViT's class-token attention in its last block, mean and per head, over a few test images (PNG + .npy)"),
    }
    for name, (function, help_text) in specs.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(function=function)
        sub.add_argument("--ckpt", required=True, help="an ssl_train checkpoint (last.ckpt or best-*.ckpt)")
        sub.add_argument(
            "--trust-checkpoint",
            action="store_true",
            help="read --ckpt with the full unpickler and build any _target_ its config names (can run code): only for files you trust",
        )
        sub.add_argument("--out", default=None, help="output folder (default: a new folder beside the checkpoint)")
        sub.add_argument("--data", default=None, help="a configs/data option (default: the checkpoint's training data)")
        sub.add_argument("--set", nargs="*", default=[], help="extra overrides for --data, e.g. data.source.root=DIR")
        sub.add_argument("--limit", type=int, default=None, help="use only the first N images of each split")
    commands.choices["export"].add_argument(
        "--format", choices=["safetensors", "torch"], default="safetensors", help="model.safetensors (default) or backbone.pt (torch.save of the state dict)"
    )
    commands.choices["export"].add_argument("--torchscript", action="store_true")
    commands.choices["export"].add_argument("--onnx", action="store_true", help="needs the onnx package")
    commands.choices["embed"].add_argument("--images", default=None, help="a folder of image files to embed instead of a dataset")
    commands.choices["embed"].add_argument("--split", choices=["train", "test"], default=None)
    commands.choices["search"].add_argument("--k", type=int, default=10)
    commands.choices["anomaly"].add_argument("--holdout-class", type=int, required=True)
    commands.choices["anomaly"].add_argument("--method", choices=["knn", "mahalanobis"], default="knn")
    commands.choices["anomaly"].add_argument("--k", type=int, default=5)
    commands.choices["map"].add_argument("--split", choices=["train", "test"], default="test")
    commands.choices["map"].add_argument("--method", choices=["auto", "umap", "tsne", "pca"], default="auto")
    commands.choices["views"].add_argument("--count", type=int, default=8, help="how many images")
    commands.choices["attention"].add_argument("--count", type=int, default=8, help="how many test images")
    add_shard_parser(commands)  # reads a data option, not a checkpoint
    return main


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    result = report_user_errors(lambda: args.function(args))
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
