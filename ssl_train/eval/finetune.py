"""Full fine-tuning evaluation (the protocol masked-modelling encoders are judged by, MAE §4): a copy of the encoder and
a linear head trained end to end on the labelled train split; the pretrained encoder is left untouched."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Sized
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision.transforms import v2

from ssl_train.constraints import AboveZero, BelowOne, CropScale, LearningRate, Limit, NonNegative, PositiveInt, Seed, WarmupEpochs, WeightDecay
from ssl_train.eval.linear_probe import extract_features, topk_accuracy
from ssl_train.eval.sgd_probe import _Augmented

NO_DECAY_NAMES = ("pos_embed", "cls_token", "mask_token", "reg_token", "dist_token")
BLOCK = re.compile(r"(?:^|\.)blocks\.(\d+)\.")
EMBEDDING = ("patch_embed", "pos_embed", "cls_token", "reg_token", "dist_token")


def layer_of(name: str, num_blocks: int) -> int:
    """BEiT/MAE layer id for layer-wise LR decay: embeddings 0, transformer block i -> i + 1, everything after
    (final norm, head) num_blocks + 1; an encoder without `blocks.N` (a CNN) is one layer."""
    found = BLOCK.search(name)
    if found:
        return int(found.group(1)) + 1
    if any(part in name for part in EMBEDDING):
        return 0
    return num_blocks + 1


def layer_decay_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """Param groups with lr x layer_decay^(num_blocks + 1 - layer) and no weight decay on biases, norms, position
    embeddings and class tokens (as MAE's param_groups_lrd)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    num_blocks = 1 + max((int(m.group(1)) for n in names if (m := BLOCK.search(n))), default=-1)
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = layer_of(name, num_blocks) if num_blocks else 0
        decays = not (param.ndim <= 1 or any(k in name for k in NO_DECAY_NAMES))
        scale = layer_decay ** ((num_blocks + 1 - layer) if num_blocks else 0)
        group = groups.setdefault((layer, decays), {"params": [], "lr": lr * scale, "weight_decay": weight_decay if decays else 0.0})
        group["params"].append(param)
    return list(groups.values())


class FineTune:
    """Evaluator (`eval=[finetune,...]`): fine-tune a copy of the encoder + a linear head for `epochs` with AdamW, layer-wise
    LR decay `layer_decay` (ViTs; 1.0 off), warm-up then cosine, label smoothing, random-resized-crop + flip and optional
    mixup / cutmix (alpha 0: off); report the test top-1 (and top-5). `max_train_samples` caps the labelled set (CPU)."""

    def __init__(
        self,
        epochs: PositiveInt = 5,
        lr: LearningRate = 4e-3,
        batch_size: PositiveInt = 32,
        weight_decay: WeightDecay = 0.05,
        layer_decay: AboveZero = 0.75,
        label_smoothing: BelowOne = 0.0,
        warmup_epochs: WarmupEpochs = 1.0,
        crop_scale: CropScale = (0.9, 1.0),
        mixup_alpha: NonNegative = 0.0,
        cutmix_alpha: NonNegative = 0.0,
        max_train_samples: Limit = None,
        seed: Seed = 0,
    ) -> None:
        if epochs < 1 or lr <= 0 or not 0 < layer_decay <= 1:
            raise ValueError(f"eval.finetune: epochs >= 1, lr > 0 and 0 < layer_decay <= 1 required, got {epochs}, {lr}, {layer_decay}")
        self.epochs, self.lr, self.batch_size, self.weight_decay, self.layer_decay = epochs, lr, batch_size, weight_decay, layer_decay
        self.label_smoothing, self.warmup_epochs, self.crop_scale = label_smoothing, warmup_epochs, tuple(crop_scale)
        self.mixup_alpha, self.cutmix_alpha, self.max_train_samples, self.seed = mixup_alpha, cutmix_alpha, max_train_samples, seed

    def _mixing(self, num_classes: int) -> v2.Transform | None:
        made = [kind(alpha=alpha, num_classes=num_classes) for alpha, kind in ((self.mixup_alpha, v2.MixUp), (self.cutmix_alpha, v2.CutMix)) if alpha > 0]
        return None if not made else made[0] if len(made) == 1 else v2.RandomChoice(made)

    def evaluate_encoder(
        self, encoder: nn.Module, train_set: Dataset, test_set: Dataset, num_classes: int, device: str | torch.device = "cpu"
    ) -> dict[str, float]:
        torch.manual_seed(self.seed)
        encoder = copy.deepcopy(encoder).to(device)
        head = self._head(encoder, train_set, num_classes, device)
        lr = self.lr * self.batch_size / 256
        groups = layer_decay_groups(encoder, lr, self.weight_decay, self.layer_decay) + [{"params": list(head.parameters()), "lr": lr, "weight_decay": 0.0}]
        classifier = nn.Sequential(encoder, head)
        self._train(classifier, groups, train_set, num_classes, device)
        return self._test(encoder, head, test_set, num_classes, device, trainable=sum(p.numel() for g in groups for p in g["params"]))

    def _head(self, encoder: nn.Module, train_set: Dataset, num_classes: int, device: str | torch.device) -> nn.Linear:
        """A linear classifier on the encoder's features, initialised as MAE's fine-tuning head (tiny weights, zero bias)."""
        in_dim = int(getattr(encoder, "out_dim", 0))
        if not in_dim:
            with torch.no_grad():
                in_dim = encoder(train_set[0][0][None].to(device)).shape[1]
        head = nn.Linear(in_dim, num_classes).to(device)
        nn.init.trunc_normal_(head.weight, std=2e-5)
        nn.init.zeros_(head.bias)
        return head

    def _train(self, classifier: nn.Module, groups: list[dict], train_set: Dataset, num_classes: int, device: str | torch.device) -> None:
        """AdamW over `groups` (each keeps its own lr) with warm-up then cosine, on augmented (and optionally mixed) images."""
        generator = torch.Generator().manual_seed(self.seed)
        if self.max_train_samples:
            train_set = Subset(train_set, torch.randperm(len(cast(Sized, train_set)), generator=generator)[: self.max_train_samples].tolist())
        size = train_set[0][0].shape[-1]
        augment = v2.Compose([v2.RandomResizedCrop(size, scale=self.crop_scale, antialias=True), v2.RandomHorizontalFlip()])
        loader = DataLoader(
            _Augmented(train_set, augment),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=len(cast(Sized, train_set)) > self.batch_size,
            generator=generator,
        )
        for group in groups:
            group["base_lr"] = group["lr"]
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
        total, warmup = self.epochs * len(loader), int(self.warmup_epochs * len(loader))
        mixing = self._mixing(num_classes)
        classifier.train()
        step = 0
        for _ in range(self.epochs):
            for images, labels in loader:
                factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
                for group in optimizer.param_groups:
                    group["lr"] = group["base_lr"] * factor
                images, labels = images.to(device), labels.to(device)
                if mixing is not None:
                    images, labels = mixing(images, labels)
                loss = F.cross_entropy(classifier(images), labels, label_smoothing=self.label_smoothing)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                step += 1
        classifier.eval()

    def _test(self, encoder: nn.Module, head: nn.Module, test_set: Dataset, num_classes: int, device: str | torch.device, trainable: int) -> dict[str, float]:
        test_x, test_y = extract_features(encoder.eval(), test_set, self.batch_size * 2, device)
        with torch.no_grad():
            logits = head(test_x.to(device)).cpu()
        result = {"top1": topk_accuracy(logits, test_y, 1), "trainable_params": float(trainable)}
        if num_classes > 5:
            result["top5"] = topk_accuracy(logits, test_y, 5)
        return result
