"""Encoders exposing `out_dim`: torchvision ResNets (optional small-image stem) and a small CPU ResNet."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

try:  # validate.py reads these annotations; an export ships this file as modeling.py, where ssl_train is absent
    from ssl_train.constraints import Limit, PositiveInt, Widths
except ImportError:  # the annotations stay unevaluated strings (from __future__ import annotations): nothing to bind
    pass

NORMS = ("batch", "group")


def _norm(kind: str, channels: int) -> nn.Module:
    """BatchNorm2d, or GroupNorm (batch-independent: identical under any batch split, e.g. DDP on CPU)."""
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(8, channels), channels)


class _BasicBlock(nn.Module):
    """Two 3x3 convs with normalisation and an identity/projection shortcut (He et al., 2016)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str = "batch") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, out_ch)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), _norm(norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A narrow ResNet for 28-32 px images that trains on a laptop CPU (the default encoder).

    3x3 stem with stride `stem_stride`, one stage per entry of `widths` (stride 2 from the second),
    `blocks_per_stage` basic blocks each, then average pooling to a `pool_size` x `pool_size` grid, flattened:
    1 is global average pooling (out_dim = last width); 2 keeps a coarse layout (out_dim = 4 x last width),
    which is what a linear probe on small centred objects (Fashion-MNIST) reads best. Default widths
    (32, 64, 128) with a stride-2 stem give ~0.44 M params at ~20 MFLOPs per 28 px image.
    """

    modalities = ("image",)
    # NHWC convolutions: 1.2-1.27x faster end to end on the 2-core CPU (channels_last=auto). Not for stages narrower than
    # 16 channels: the backward of their strided 1x1 shortcut conv in NHWC corrupts the heap in torch 2.14.1's oneDNN
    # CPU kernels (8 -> 16 channels at >= 64 px aborts the process; measured, see tests/test_scaleout.py)
    MIN_CHANNELS_LAST_WIDTH = 16

    def __init__(
        self,
        in_channels: PositiveInt = 3,
        widths: Widths = (32, 64, 128),
        blocks_per_stage: PositiveInt = 1,
        stem_stride: PositiveInt = 2,
        norm: str = "batch",
        pool_size: PositiveInt = 1,
    ) -> None:
        super().__init__()
        widths = tuple(widths)
        if not widths or blocks_per_stage < 1 or stem_stride not in (1, 2):
            raise ValueError(f"SmallResNet: need widths, blocks_per_stage >= 1 and stem_stride in (1, 2); got {widths}, {blocks_per_stage}, {stem_stride}")
        if norm not in NORMS:
            raise ValueError(f"SmallResNet: norm must be one of {NORMS}, got {norm!r}")
        if pool_size < 1:
            raise ValueError(f"SmallResNet: pool_size must be >= 1, got {pool_size}")
        layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 3, stem_stride, 1, bias=False), _norm(norm, widths[0]), nn.ReLU(inplace=True)]
        in_ch = widths[0]
        self.stage_ends: list[int] = []  # index in `net` of each stage's last block
        for stage, width in enumerate(widths):
            for block in range(blocks_per_stage):
                layers.append(_BasicBlock(in_ch, width, stride=2 if stage > 0 and block == 0 else 1, norm=norm))
                in_ch = width
            self.stage_ends.append(len(layers) - 1)
        layers += [nn.AdaptiveAvgPool2d(pool_size), nn.Flatten()]
        self.net = nn.Sequential(*layers)
        self.out_dim, self.stage_widths = in_ch * pool_size * pool_size, widths
        self.prefers_channels_last = min(widths) >= self.MIN_CHANNELS_LAST_WIDTH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature map after each stage (what Deep InfoMax's local term reads); pool(stages(x)[-1]) == forward(x)."""
        maps = []
        for index, layer in enumerate(self.net[:-2]):
            x = layer(x)
            if index in self.stage_ends:
                maps.append(x)
        return maps

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.net[-1](self.net[-2](feature_map))


SMALL_STEM_MAX_SIZE = 96  # small_image_stem=auto: the 3x3 stem up to STL-10's 96 px, the ImageNet stem above


class TorchvisionResNet(nn.Module):
    """A torchvision ResNet without its classifier; `small_image_stem` swaps in a 3x3 conv and drops max-pool (CIFAR).

    The wrapped model is kept under `.model` with torchvision's own parameter names, so its state_dict
    (minus `fc`) loads into `torchvision.models.<arch>()` unchanged. Weights start random: nothing is
    downloaded.
    """

    modalities = ("image",)
    prefers_channels_last = True  # NHWC convolutions (faster on CPU and with tensor cores under mixed precision)
    needs_image_size = True  # build_encoder passes the data's image size (small_image_stem=auto reads it)

    def __init__(
        self,
        arch: str = "resnet18",
        in_channels: PositiveInt = 3,
        small_image_stem: bool | str = False,
        zero_init_residual: bool = True,
        image_size: Limit = None,
    ) -> None:
        super().__init__()
        allowed = ("resnet18", "resnet34", "resnet50", "resnet101")
        if arch not in allowed:
            raise ValueError(f"TorchvisionResNet: arch must be one of {allowed}, got {arch!r}")
        if small_image_stem == "auto":  # CIFAR/STL sizes get the 3x3 stem; 224 px the ImageNet one (at 224 px the small
            if image_size is None:  # stem keeps 224 x 224 maps through layer1: 16x the activations, OOM on CPU at batch 256)
                raise ValueError("TorchvisionResNet: small_image_stem='auto' needs image_size")
            small_image_stem = image_size <= SMALL_STEM_MAX_SIZE
        if not isinstance(small_image_stem, bool):
            raise ValueError(f"backbone.small_image_stem must be true, false or auto, got {small_image_stem!r}")
        model = getattr(torchvision.models, arch)(weights=None, zero_init_residual=zero_init_residual)
        if small_image_stem or in_channels != 3:
            kernel, stride, padding = (3, 1, 1) if small_image_stem else (7, 2, 3)
            model.conv1 = nn.Conv2d(in_channels, 64, kernel, stride, padding, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        if small_image_stem:
            model.maxpool = nn.Identity()
        self.out_dim = model.fc.in_features
        self.stage_widths = tuple(getattr(layer[-1], "bn3", layer[-1].bn2).num_features for layer in (model.layer1, model.layer2, model.layer3, model.layer4))
        model.fc = nn.Identity()
        self.model = model

    @property
    def portable_module(self) -> nn.Module:
        """The torchvision model itself: exports carry torchvision's key names (ssl_train.portable)."""
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The feature maps after layer1..layer4; pool(stages(x)[-1]) == forward(x)."""
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        maps = []
        for layer in (m.layer1, m.layer2, m.layer3, m.layer4):
            x = layer(x)
            maps.append(x)
        return maps

    def pool(self, feature_map: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.model.avgpool(feature_map), 1)
