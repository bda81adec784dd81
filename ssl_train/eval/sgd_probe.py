"""SGD linear evaluation with augmentation on a frozen encoder (the protocol of SimCLR/BYOL/MoCo papers)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from ssl_train.constraints import CropScale, LearningRate, PositiveInt, Seed, WeightDecay
from ssl_train.eval.linear_probe import extract_features, topk_accuracy


class _Augmented(Dataset):
    def __init__(self, base: Dataset, transform: v2.Transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[i]
        return self.transform(image), label


class SGDLinearProbe:
    """Train nn.Linear on frozen features of augmented images (random resized crop + flip) with SGD (momentum 0.9,
    cosine schedule, lr scaled by batch/256); report top-1/top-5 on un-augmented test images. Deterministic per seed."""

    def __init__(
        self,
        epochs: PositiveInt = 10,
        lr: LearningRate = 0.1,
        batch_size: PositiveInt = 256,
        weight_decay: WeightDecay = 0.0,
        crop_scale: CropScale = (0.5, 1.0),
        seed: Seed = 0,
    ) -> None:
        if epochs < 1 or lr <= 0:
            raise ValueError(f"eval.sgd_linear: epochs >= 1 and lr > 0 required, got {epochs}, {lr}")
        self.epochs, self.lr, self.batch_size, self.weight_decay = epochs, lr, batch_size, weight_decay
        self.crop_scale, self.seed = tuple(crop_scale), seed

    def evaluate_encoder(
        self, encoder: nn.Module, train_set: Dataset, test_set: Dataset, num_classes: int, device: str | torch.device = "cpu"
    ) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.seed)
        sample = train_set[0][0]
        augment = v2.Compose([v2.RandomResizedCrop(sample.shape[-1], scale=self.crop_scale, antialias=True), v2.RandomHorizontalFlip()])
        loader = DataLoader(_Augmented(train_set, augment), batch_size=self.batch_size, shuffle=True, drop_last=True, generator=generator)
        was_training = encoder.training
        encoder.eval().to(device)
        with torch.no_grad():
            dim = encoder(sample[None].to(device)).shape[1]
        torch.manual_seed(self.seed)
        head = nn.Linear(dim, num_classes).to(device)
        lr = self.lr * self.batch_size / 256
        optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=self.weight_decay)
        total = self.epochs * max(1, len(loader))
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
        for _ in range(self.epochs):
            for images, labels in loader:
                with torch.no_grad():
                    features = encoder(images.to(device)).float()
                loss = F.cross_entropy(head(features), labels.to(device))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
        test_x, test_y = extract_features(encoder, test_set, self.batch_size, device)
        encoder.train(was_training)
        with torch.no_grad():
            logits = head(test_x.to(device)).cpu()
        result = {"top1": topk_accuracy(logits, test_y, 1)}
        if num_classes > 5:
            result["top5"] = topk_accuracy(logits, test_y, 5)
        return result
