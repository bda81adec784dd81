"""Export a trained backbone as a plain state_dict (+ JSON card, optional TorchScript / ONNX)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ssl_train.backbones import TorchvisionResNet
from ssl_train.build import build_datamodule
from ssl_train.eval.checkpoint import load_encoder


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def fresh_dir(path: Path) -> Path:
    """`path`, or path-1, path-2, ... if it exists: an export never overwrites an earlier one."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    candidate.mkdir(parents=True)
    return candidate


def export_backbone(
    ckpt_path: str | Path, out_dir: str | Path | None = None, torchscript: bool = False, onnx: bool = False, trust: bool = False,
) -> dict[str, Any]:
    """Write backbone.pt (a state_dict that loads into the matching torchvision model or SmallResNet with no key renaming),
    model_card.json, and optionally backbone.torchscript.pt / backbone.onnx. Returns the card."""
    ckpt_path = Path(ckpt_path).expanduser()
    encoder, cfg = load_encoder(ckpt_path, trust=trust)
    out = fresh_dir(Path(out_dir) if out_dir else ckpt_path.parent / "export")
    if isinstance(encoder, TorchvisionResNet):
        state = encoder.model.state_dict()  # torchvision's own names; the classifier `fc` is absent (load with strict=False)
        how = f"model = torchvision.models.{cfg.backbone.get('arch', 'resnet18')}(); "
        how += "model.load_state_dict(torch.load('backbone.pt'), strict=False)  # only fc.* missing"
        if cfg.backbone.get("small_image_stem"):
            how += "; first replace conv1 by a 3x3 stride-1 conv and maxpool by nn.Identity() (CIFAR stem)"
    else:
        state = encoder.state_dict()
        kwargs = {k: v for k, v in cfg.backbone.items() if not k.startswith("_")}
        how = f"ssl_train.backbones.SmallResNet(in_channels={_in_channels(state)}, **{kwargs})"
        how += ".load_state_dict(torch.load('backbone.pt'))"
    torch.save(state, out / "backbone.pt")
    run_metrics = ckpt_path.parent.parent / "metrics.json"
    card = {
        "checkpoint": str(ckpt_path.resolve()), "method": cfg.method.get("name"), "backbone": cfg.backbone.get("_target_"),
        "backbone_config": dict(cfg.backbone), "data": dict(cfg.data.source), "out_dim": int(encoder.out_dim), "how_to_load": how,
        "probe": json.loads(run_metrics.read_text()) if run_metrics.is_file() else None, "commit": _git_commit(),
        "config": OmegaConf.to_container(cfg, resolve=False),
    }
    size = build_datamodule(cfg.data).splits.image_size
    example = torch.zeros(1, _in_channels(state), size, size)
    if torchscript:
        torch.jit.trace(encoder.eval(), example).save(str(out / "backbone.torchscript.pt"))
        card["torchscript"] = "backbone.torchscript.pt"
    if onnx:
        torch.onnx.export(encoder.eval(), example, str(out / "backbone.onnx"), input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}})
        card["onnx"] = "backbone.onnx"
    (out / "model_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    card["export_dir"] = str(out)
    return card


def _in_channels(state: dict[str, torch.Tensor]) -> int:
    return int(next(v for v in state.values() if v.ndim == 4).shape[1])
