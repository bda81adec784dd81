"""Export a trained encoder: model.safetensors (or backbone.pt) + config.json + a README model card; optional TorchScript / ONNX.

The folder is what the Hugging Face hub accepts as a model repository (`huggingface-cli upload USER/NAME DIR`, not needed
to use it) and what `ssl_train.load_encoder(DIR)` and `backbone.weights=DIR` read.
"""

from __future__ import annotations

import html
import inspect
import json
import re
from pathlib import Path
from typing import Any, cast

import torch
import yaml
from omegaconf import OmegaConf

from ssl_train.build import build_datamodule
from ssl_train.encoders import resnet
from ssl_train.encoders.resnet import TorchvisionResNet
from ssl_train.errors import UserError
from ssl_train.eval.checkpoint import encoder_from_checkpoint, input_of
from ssl_train.launch import method_name_of
from ssl_train.metrics import EPOCHS, GLOBAL_BATCH_SIZE, KNN_TOP1, LINEAR_TOP1, RANDOM_INIT_LINEAR_TOP1, RAW_INPUT_LINEAR_TOP1, STEPS
from ssl_train.modalities import modality as kind_named
from ssl_train.modalities.check import modalities_of
from ssl_train.portable import CARD_FILE, CONFIG_FILE, MODELING_FILE, WEIGHTS_FILE, encoder_spec, portable_module
from ssl_train.protocols import width_of
from ssl_train.run_dir import METRICS_FILE, fresh_dir
from ssl_train.tracking.trackers import git_commit

FORMATS = ("safetensors", "torch")


def how_to_load(encoder: torch.nn.Module, spec: dict[str, Any], weights_file: str) -> dict[str, str]:
    """Python snippets that rebuild the encoder: with ssl_train, and with only torch + safetensors (+ torchvision)."""
    read = "safetensors.torch.load_file('model.safetensors')" if weights_file == WEIGHTS_FILE else "torch.load('backbone.pt')"
    with_ssl_train = "import ssl_train\nencoder = ssl_train.load_encoder('DIR')  # eval mode; encoder(images) -> (N, out_dim) features"
    if isinstance(encoder, TorchvisionResNet):
        model = encoder.model
        lines = ["import safetensors.torch, torch, torchvision", f"model = torchvision.models.{spec.get('arch', 'resnet18')}()"]
        conv = model.conv1
        if (conv.in_channels, conv.kernel_size, conv.stride) != (3, (7, 7), (2, 2)):  # stem changes the torchvision model needs
            lines.append(f"model.conv1 = torch.nn.Conv2d({conv.in_channels}, 64, {conv.kernel_size[0]}, {conv.stride[0]}, {conv.padding[0]}, bias=False)")
        if isinstance(model.maxpool, torch.nn.Identity):
            lines.append("model.maxpool = torch.nn.Identity()")
        lines += ["model.fc = torch.nn.Identity()  # the features, not ImageNet logits", f"model.load_state_dict({read})", "model.eval()"]
        return {"ssl_train": with_ssl_train, "standalone": "\n".join(lines)}
    if isinstance(encoder, resnet.SmallResNet):
        kwargs = ", ".join(f"{k}={v!r}" for k, v in spec.items() if k != "_target_")
        standalone = "\n".join(
            [
                "import safetensors.torch",
                "from modeling import SmallResNet  # modeling.py in this folder: torch + torchvision only",
                f"model = SmallResNet({kwargs})",
                f"model.load_state_dict({read})",
                "model.eval()",
            ]
        )
        return {"ssl_train": with_ssl_train, "standalone": standalone}
    return {"ssl_train": with_ssl_train}


MARKDOWN_PUNCTUATION = re.compile(r"([\\`*_\[\]{}()#+!|~])")


def _md_text(value: Any) -> str:
    """A config value as Markdown text: one line, HTML-escaped, Markdown syntax (links, emphasis, code, tables) backslash-escaped."""
    return html.escape(MARKDOWN_PUNCTUATION.sub(r"\\\1", " ".join(str(value).splitlines())), quote=False)


def _md_code(value: Any) -> str:
    """A config value as an inline code span: one line, backticks (which would end the span) replaced, HTML-escaped."""
    return "`" + html.escape(" ".join(str(value).replace("`", "'").splitlines()), quote=False) + "`"


def _md_number(value: Any) -> str:
    """A number or a list of numbers as written, anything else as escaped Markdown text."""
    numbers = value if isinstance(value, (list, tuple)) else [value]
    plain = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in numbers)
    return str(list(value) if isinstance(value, tuple) else value) if plain else _md_text(value)


def _code_block(code: str, language: str = "python") -> list[str]:
    """A fenced code block whose fence is longer than any backtick run inside, so the code cannot close it."""
    fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", code)), default=0))
    return [fence + language, code, fence]


def model_card(config: dict[str, Any], figures: dict[str, Any] | None, snippets: dict[str, str]) -> str:
    """README.md with Hugging Face front matter: what was trained on what, the run's figures (its metrics.json) beside both baselines, how to load."""
    method, data, modality = config["method"] or "?", config["data"] or "?", config["modality"]
    one_line = lambda value: " ".join(str(value).splitlines())  # a tag is one line; safe_dump quotes the rest
    front_matter = {
        "library_name": "ssl_train",
        "tags": ["self-supervised-learning", one_line(method), f"{one_line(modality)}-feature-extraction"],
        "pipeline_tag": kind_named(str(modality), "config.json modality").pipeline_tag,
    }  # a dict dumped: a name cannot add keys
    encoder = str(config["encoder"]["_target_"]).rsplit(".", 1)[-1]
    lines = [
        "---",
        yaml.safe_dump(front_matter, sort_keys=False, default_flow_style=False).rstrip("\n"),
        "---",
        "",
        f"# {_md_text(method)} encoder ({_md_text(encoder)}, {_md_number(config['out_dim'])}-d features)",
        "",
        f"Self-supervised with ssl_train: method {_md_code(method)} on data {_md_code(data)}"
        + (
            f", {_md_number(figures.get(EPOCHS))} epochs ({_md_number(figures.get(STEPS))} steps, global batch {_md_number(figures.get(GLOBAL_BATCH_SIZE))})"
            if figures
            else ""
        )
        + ".",
        "",
    ]
    if figures:
        rows = [
            (label, figures.get(key))
            for label, key in (
                ("linear probe top-1", LINEAR_TOP1),
                ("kNN (k=20) top-1", KNN_TOP1),
                ("raw input, same linear probe", RAW_INPUT_LINEAR_TOP1),
                ("random-init encoder, same linear probe", RANDOM_INIT_LINEAR_TOP1),
            )
        ]
        lines += ["| evaluation (frozen features, test split) | top-1 |", "|---|---|"]
        lines += [f"| {label} | {value:.4f} |" for label, value in rows if value is not None]
        lines.append("")
    image = config["input"]
    lines += [
        "## Input",
        "",
        f"Modality {_md_code(modality)}"
        + (
            f", {_md_number(image['channels'])} channel(s), {_md_number(image['image_size'])} px, normalised with mean {_md_number(image['mean'])} "
            f"and std {_md_number(image['std'])} (x / 255, then (x - mean) / std)"
            if image.get("image_size")
            else ""
        )
        + ".",
        "",
        "## How to load",
        "",
        *_code_block(snippets["ssl_train"]),
        "",
    ]
    if "standalone" in snippets:
        lines += ["Without ssl_train (torch + safetensors + torchvision):", "", *_code_block(snippets["standalone"]), ""]
    lines += [
        "Continue pretraining from it: `python -m ssl_train backbone.weights=DIR ...` (same `backbone` option and settings).",
        "",
        "## Provenance",
        "",
        f"- checkpoint: {_md_code(config['checkpoint'])}",
        f"- ssl_train commit: {_md_code(config['commit'])}",
        "- the full training config is in config.json (`training_config`)",
        "",
        "Publishing is optional: `huggingface-cli upload USER/NAME DIR` uploads this folder as a model repository.",
        "",
    ]
    return "\n".join(lines)


def export_backbone(
    ckpt_path: str | Path,
    out_dir: str | Path | None = None,
    fmt: str = "safetensors",
    torchscript: bool = False,
    onnx: bool = False,
    trust: bool = False,
) -> dict[str, Any]:
    """Write model.safetensors (or backbone.pt for fmt='torch'), config.json, README.md (+ modeling.py for ssl_train's own
    CNN; + TorchScript / ONNX when asked) into a new folder. Returns config.json's content plus `export_dir`."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    ckpt_path = Path(ckpt_path).expanduser()
    encoder, cfg = encoder_from_checkpoint(ckpt_path, trust=trust)
    encoder.eval()
    out = fresh_dir(Path(out_dir) if out_dir else ckpt_path.parent / "export")
    state = {k: v.contiguous() for k, v in portable_module(encoder).state_dict().items()}
    in_channels, modality = input_of(cfg, encoder.state_dict())
    serves = modalities_of(cfg.backbone) or ()
    splits, kind = build_datamodule(cfg.data).splits, kind_named(modality)
    spec = encoder_spec(
        encoder,
        cast(dict[str, Any], OmegaConf.to_container(cfg.backbone, resolve=True)),
        in_channels,
        modality if len(serves) > 1 else None,
        kind.size(splits.input_spec),
    )  # kept only by an encoder that takes image_size (a ViT)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        weights_file = WEIGHTS_FILE
        save_file(state, str(out / weights_file), metadata={"format": "pt", "library": "ssl_train"})
    else:
        weights_file = "backbone.pt"
        torch.save(state, out / weights_file)
    run_metrics = ckpt_path.parent.parent / METRICS_FILE
    figures = json.loads(run_metrics.read_text()) if run_metrics.is_file() else None
    config = {
        "library": "ssl_train",
        "encoder": spec,
        "weights": weights_file,
        "modality": modality,
        "out_dim": int(width_of(encoder)),
        "input": kind.export_input(splits),
        "method": method_name_of(cfg),
        "data": cfg.data.source.get("_target_", "?").rsplit(".", 1)[-1],
        "checkpoint": str(ckpt_path.resolve()),
        "commit": git_commit(),
        "probe": figures,  # the run's metrics.json, under the key exports have always used
        "training_config": OmegaConf.to_container(cfg, resolve=False),
    }
    snippets = how_to_load(encoder, spec, weights_file)
    config["how_to_load"] = snippets
    if isinstance(encoder, resnet.SmallResNet):
        (out / MODELING_FILE).write_text(inspect.getsource(resnet))  # torch + torchvision only: the class travels with its weights
    example = kind.example_input(splits.input_spec, in_channels)
    if example is not None:  # a traceable input (images)
        if torchscript:
            torch.jit.trace(encoder, example).save(str(out / "backbone.torchscript.pt"))
            config["torchscript"] = "backbone.torchscript.pt"
        if onnx:
            torch.onnx.export(
                encoder,
                example,  # type: ignore[arg-type]  # a Tensor stands for (tensor,), as torch.onnx.export's documentation says
                str(out / "backbone.onnx"),
                input_names=["images"],
                output_names=["features"],
                dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}},
            )
            config["onnx"] = "backbone.onnx"
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + "\n")
    (out / CARD_FILE).write_text(model_card(config, figures, snippets))
    return {**config, "export_dir": str(out)}
