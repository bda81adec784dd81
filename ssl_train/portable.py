"""Portable encoders: a folder with model.safetensors, config.json and a README model card (a layout the Hugging Face hub
accepts), loaded back with `ssl_train.load_encoder(DIR)` without Hydra; and the weights an encoder starts from
(`backbone.weights=PATH`: a .safetensors file, an exported folder or an ssl_train checkpoint).

The tensors keep the architecture's own key layout: a torchvision ResNet's state dict is torchvision's (it loads into
`torchvision.models.resnet18()`), ssl_train's SmallResNet ships its defining source beside it (modeling.py), so an export
loads with only torch + safetensors (+ torchvision) installed.
"""

from __future__ import annotations

import importlib
import inspect
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_train.checkpoint_io import read_checkpoint, state_dict_mismatch
from ssl_train.errors import UserError
from ssl_train.trust import check_stored_config, current_target

WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, MODELING_FILE = "model.safetensors", "config.json", "README.md", "modeling.py"
BACKBONE_PREFIX = "method.backbone."
# backbone.* keys that configure the run around the encoder, not its constructor
RUN_KEYS = ("weights", "gradient_clip_val")


def portable_module(encoder: nn.Module) -> nn.Module:
    """The module whose state dict is exported: the wrapped torchvision/timm model when the encoder wraps one (its own key
    names), else the encoder itself."""
    return getattr(encoder, "portable_module", encoder)


def encoder_spec(encoder: nn.Module, backbone_cfg: dict[str, Any], in_channels: int, modality: str | None, image_size: int | None = None) -> dict[str, Any]:
    """{'_target_': class path, constructor kwargs...}: what rebuilds `encoder` (random init) without Hydra."""
    spec = {k: v for k, v in backbone_cfg.items() if not k.startswith("_") and k not in RUN_KEYS}
    accepted = inspect.signature(type(encoder)).parameters
    spec["in_channels"] = in_channels
    if image_size is not None and "image_size" in accepted:
        spec["image_size"] = image_size
    if modality is not None and "modality" in accepted:
        spec["modality"] = modality
    return {"_target_": f"{type(encoder).__module__}.{type(encoder).__qualname__}", **spec}


def build_from_spec(spec: Any, source: str) -> nn.Module:
    """Instantiate an encoder spec (config.json's `encoder`): a registered component with plain arguments (ssl_train.trust)."""
    if not isinstance(spec, dict):
        raise UserError(f"{source}/{CONFIG_FILE}: its encoder is a {type(spec).__name__}, not a mapping: not an ssl_train export")
    check_stored_config({"backbone": spec}, f"{source}/{CONFIG_FILE}")
    spec = dict(spec)
    target = current_target(str(spec.pop("_target_", "")))  # an export written before the encoders moved names the old module
    if not target:
        raise UserError(f"{source}/{CONFIG_FILE}: its encoder names no _target_: not an ssl_train export")
    special = [k for k in spec if k.startswith("_")]
    if special:
        raise UserError(f"{source}/{CONFIG_FILE}: its encoder sets {special[0]} (only constructor arguments): refused")
    module_name, _, class_name = target.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise UserError(f"{source}: config.json names encoder {target!r}, which this installation cannot import") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a constructor's warning about odd arguments: the line below, or the encoder, says it all
            return cls(**spec)
    except UserError:
        raise
    except Exception as error:  # any failure of a constructor on arguments from a file is that file's fault
        raise UserError(
            f"{source}/{CONFIG_FILE}: its encoder arguments do not build {class_name} ({type(error).__name__}: "
            f"{str(error).splitlines()[0][:200] if str(error) else ''})"
        ) from None


def load_safetensors(path: Path, key: str) -> dict[str, torch.Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise UserError(f"{key}: reading {path.name} needs the safetensors package (pip install safetensors)") from None
    try:
        return load_file(str(path))
    except Exception as error:  # safetensors raises its own error types for truncated/corrupt headers
        raise UserError(f"{key}: {path} is not a readable .safetensors file ({type(error).__name__}: {error})") from None


def load_encoder(path: str | Path) -> nn.Module:
    """The encoder of an export folder (config.json + model.safetensors), rebuilt without Hydra, in eval mode."""
    folder = Path(path).expanduser()
    config_path = folder / CONFIG_FILE
    if not config_path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise UserError(
            f"load_encoder: {folder} is not an ssl_train export (needs {CONFIG_FILE} and {WEIGHTS_FILE}; "
            "make one with python -m ssl_train.toolkit export --ckpt CKPT)"
        )
    try:
        config = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError, RecursionError) as error:
        raise UserError(f"load_encoder: {config_path} is not valid JSON or nests too deeply ({type(error).__name__})") from None
    if not isinstance(config, dict) or "encoder" not in config:
        raise UserError(f"load_encoder: {config_path} has no 'encoder' entry: not an ssl_train export")
    encoder = build_from_spec(config["encoder"], str(folder))
    _load_into(encoder, load_safetensors(folder / WEIGHTS_FILE, "load_encoder"), str(folder), portable=True)
    return encoder.eval()


def _load_into(encoder: nn.Module, state: dict[str, torch.Tensor], source: str, portable: bool) -> None:
    target = portable_module(encoder) if portable else encoder
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise UserError(f"{source}: its weights do not fit this encoder ({state_dict_mismatch(error)}): check backbone.* matches the export") from None
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(
            f"{source}: its weights do not fit this encoder ({what}, {len(missing) + len(unexpected)} keys in all): "
            "check backbone.* matches the architecture the weights came from"
        )


def load_initial_weights(encoder: nn.Module, weights: str | Path, trust: bool = False) -> nn.Module:
    """`backbone.weights=PATH`: start from given weights — an export folder, a .safetensors file (the export layout) or an
    ssl_train/Lightning checkpoint (its method.backbone.* tensors) — instead of a random init. Returns `encoder`."""
    path = Path(weights).expanduser()
    key = f"backbone.weights={weights}"
    if path.is_dir():
        if not (path / WEIGHTS_FILE).is_file():
            raise UserError(f"{key}: the folder has no {WEIGHTS_FILE} (an export from python -m ssl_train.toolkit export has one)")
        _load_into(encoder, load_safetensors(path / WEIGHTS_FILE, key), key, portable=True)
    elif path.suffix == ".safetensors":
        if not path.is_file():
            raise UserError(f"{key}: no such file")
        _load_into(encoder, load_safetensors(path, key), key, portable=True)
    elif path.is_file():
        state = read_checkpoint(path, trust=trust, key="backbone.weights")["state_dict"]
        backbone = {k[len(BACKBONE_PREFIX) :]: v for k, v in state.items() if k.startswith(BACKBONE_PREFIX)}
        if not backbone:
            raise UserError(f"{key}: the checkpoint holds no {BACKBONE_PREFIX}* weights (not an ssl_train checkpoint?)")
        _load_into(encoder, backbone, key, portable=False)
    else:
        raise UserError(f"{key}: no such file or folder (give a .safetensors file, an export folder or a .ckpt)")
    return encoder
