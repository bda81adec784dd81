"""LoRA fine-tuning evaluation: low-rank adapters (LoRA, Hu et al., ICLR 2022, proposed for adapting language models;
used here as a parameter-efficient alternative to eval=finetune, not a protocol of that paper) on the encoder's layers
plus a linear head are trained, the pretrained weights stay frozen — no forgetting, one small adapter per downstream
task (the `peft` library)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ssl_train.constraints import BelowOne, CropScale, LearningRate, Limit, NonNegative, Positive, PositiveInt, Seed, WarmupEpochs, WeightDecay
from ssl_train.errors import UserError
from ssl_train.eval.finetune import FineTune
from ssl_train.run_dir import fresh_dir


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise UserError("eval=lora needs the peft package: pip install -e '.[lora]'") from None
    return peft


def lora_targets(encoder: nn.Module) -> list[str]:
    """The layers LoRA adapts by default: a ViT's fused attention input projection `qkv` (W_q, W_k and W_v together; the
    LoRA paper's GPT-3 runs adapt W_q and W_v only), else every convolution and linear layer (CNNs)."""
    names = [name for name, module in encoder.named_modules() if isinstance(module, nn.Linear) and name.split(".")[-1] == "qkv"]
    return names or [name for name, module in encoder.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


class _Classifier(nn.Module):
    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(images))


class LoRAFineTune(FineTune):
    """Evaluator (`eval=[lora,...]`): rank-`rank` adapters (scale `alpha / rank`) on `target_modules` (null: lora_targets)
    and a linear head, trained as FineTune trains (AdamW, warm-up + cosine, label smoothing, crops + flips); the encoder's
    own weights never change. Reports top-1 (and top-5) and the trainable-parameter count; with `adapter_dir` the adapter
    and head are saved there in peft's format (`adapter_model.safetensors` + `adapter_config.json`; a new numbered folder
    when one exists), loadable with `peft.PeftModel.from_pretrained`."""

    def __init__(
        self,
        rank: PositiveInt = 8,
        alpha: Positive = 16.0,
        dropout: BelowOne = 0.0,
        target_modules: Sequence[str] | None = None,
        adapter_dir: str | None = None,
        epochs: PositiveInt = 5,
        lr: LearningRate = 5e-3,
        batch_size: PositiveInt = 128,
        weight_decay: WeightDecay = 0.0,
        label_smoothing: BelowOne = 0.1,
        warmup_epochs: WarmupEpochs = 1.0,
        crop_scale: CropScale = (0.5, 1.0),
        mixup_alpha: NonNegative = 0.0,
        cutmix_alpha: NonNegative = 0.0,
        max_train_samples: Limit = None,
        seed: Seed = 0,
    ) -> None:
        super().__init__(
            epochs=epochs,
            lr=lr,
            batch_size=batch_size,
            weight_decay=weight_decay,
            layer_decay=1.0,
            label_smoothing=label_smoothing,
            warmup_epochs=warmup_epochs,
            crop_scale=crop_scale,
            mixup_alpha=mixup_alpha,
            cutmix_alpha=cutmix_alpha,
            max_train_samples=max_train_samples,
            seed=seed,
        )
        if rank < 1 or alpha <= 0 or not 0 <= dropout < 1:
            raise UserError(f"eval.lora: rank >= 1, alpha > 0 and 0 <= dropout < 1 required, got {rank}, {alpha}, {dropout}")
        self.rank, self.alpha, self.dropout = rank, alpha, dropout
        self.target_modules = list(target_modules) if target_modules else None
        self.adapter_dir = adapter_dir

    def evaluate_encoder(
        self, encoder: nn.Module, train_set: Dataset, test_set: Dataset, num_classes: int, device: str | torch.device = "cpu"
    ) -> dict[str, float]:
        peft = _peft()
        torch.manual_seed(self.seed)
        frozen = copy.deepcopy(encoder).to(device)
        targets = self.target_modules or lora_targets(frozen)
        known = {name for name, _ in frozen.named_modules()}
        unknown = [t for t in targets if t not in known and not any(name.endswith(f".{t}") for name in known)]
        if unknown:
            raise UserError(f"eval.lora.target_modules: {unknown} name no layer of the encoder (e.g. {sorted(known - {''})[:4]}); null picks them")
        classifier = _Classifier(frozen, self._head(frozen, train_set, num_classes, device))
        config = peft.LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            modules_to_save=["head"],
            target_modules=[f"encoder.{t}" if t in known else t for t in targets],
        )
        adapted = peft.get_peft_model(classifier, config)
        trainable = [p for p in adapted.parameters() if p.requires_grad]
        groups = [{"params": trainable, "lr": self.lr * self.batch_size / 256, "weight_decay": self.weight_decay}]
        self._train(adapted, groups, train_set, num_classes, device)
        if self.adapter_dir:
            adapted.save_pretrained(str(fresh_dir(Path(self.adapter_dir))))
        model = adapted.base_model.model  # the classifier with adapters in place
        result = self._test(model.encoder, model.head, test_set, num_classes, device, trainable=sum(p.numel() for p in trainable))
        result["total_params"] = float(sum(p.numel() for p in adapted.parameters()))
        return result
