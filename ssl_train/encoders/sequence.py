"""Encoders for sequences (B, T, F) and waveforms (B, T): a per-step front-end, then a GRU context network.

The shape of CPC's encoder (van den Oord et al. 2018): z_t = g_enc(x) per (down-sampled) time step, c_t = g_ar(z_<=t).
`encode_steps` and `context` expose both for CPC; `forward` pools the context over time into one vector
(`out_dim`), which every other method and the probes use, so SimCLR or BYOL train the same encoder on sequences.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ssl_train.constraints import PositiveInt

FRONTENDS = ("auto", "steps", "conv", "logmel")


class StepFrontend(nn.Module):
    """Per-step MLP on feature sequences: (B, T, F) -> (B, T, D); every step is encoded alone (CPC's g_enc for features)."""

    def __init__(self, in_channels: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_channels, dim), nn.LayerNorm(dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.stride = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ConvFrontend(nn.Module):
    """Strided 1-D convolutions on raw waveforms: (B, T) -> (B, T / prod(strides), D); CPC's audio g_enc.

    The paper's stack has strides (5, 4, 2, 2, 2) and kernels (10, 8, 4, 4, 4): one step per 160 samples, 10 ms at
    16 kHz (20 ms at 8 kHz). Each conv is followed by GroupNorm over channels (per sample: safe for any batch split) and ReLU.
    """

    def __init__(self, dim: int, strides: Sequence[int] = (5, 4, 2, 2, 2), kernels: Sequence[int] = (10, 8, 4, 4, 4)) -> None:
        super().__init__()
        if len(strides) != len(kernels) or not strides:
            raise ValueError(f"backbone.conv_strides and conv_kernels need the same non-zero length, got {list(strides)}, {list(kernels)}")
        layers: list[nn.Module] = []
        in_ch = 1
        for stride, kernel in zip(strides, kernels, strict=True):
            layers += [nn.Conv1d(in_ch, dim, kernel, stride, padding=(kernel - stride + 1) // 2, bias=False), nn.GroupNorm(1, dim), nn.ReLU(inplace=True)]
            in_ch = dim
        self.net = nn.Sequential(*layers)
        self.stride = int(torch.tensor(list(strides)).prod())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, None]).transpose(1, 2)


class LogMelFrontend(nn.Module):
    """Log-mel spectrogram by torch.stft (no torchaudio), SpecAugment time/frequency masks in training mode, then a
    per-step MLP: (B, T) -> (B, frames, D)."""

    # buffers (register_buffer below)
    window: torch.Tensor
    mel: torch.Tensor

    def __init__(
        self, dim: int, sample_rate: int = 8000, n_fft: int = 256, hop: int = 80, n_mels: int = 40, freq_masks: int = 1, freq_mask_width: int = 6
    ) -> None:
        super().__init__()
        self.n_fft, self.hop, self.freq_masks, self.freq_mask_width = n_fft, hop, freq_masks, freq_mask_width
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("mel", mel_filterbank(n_mels, n_fft, sample_rate), persistent=False)
        self.steps = StepFrontend(n_mels, dim)
        self.stride = hop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spectrum = torch.stft(x.float(), self.n_fft, self.hop, window=self.window, return_complex=True).abs().pow(2)  # (B, freq, frames)
        logmel = torch.log(self.mel @ spectrum + 1e-6).transpose(1, 2)  # (B, frames, mels)
        logmel = (logmel - logmel.mean(dim=(1, 2), keepdim=True)) / logmel.std(dim=(1, 2), keepdim=True).clamp_min(1e-5)
        if self.training and self.freq_masks > 0:
            bins = torch.arange(logmel.shape[-1], device=x.device)[None, :]
            for _ in range(self.freq_masks):
                width = torch.randint(0, self.freq_mask_width + 1, (len(x),), device=x.device)
                begin = (torch.rand(len(x), device=x.device) * (logmel.shape[-1] - width + 1)).long()
                logmel = logmel * ~((bins >= begin[:, None]) & (bins < (begin + width)[:, None]))[:, None, :]
        return self.steps(logmel)


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int) -> torch.Tensor:
    """Triangular mel filters (HTK mel scale), (n_mels, n_fft // 2 + 1)."""

    def to_mel(hz: torch.Tensor) -> torch.Tensor:
        return 2595 * torch.log10(1 + hz / 700)

    def to_hz(mel: torch.Tensor) -> torch.Tensor:
        return 700 * (10 ** (mel / 2595) - 1)

    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1)
    edges = to_hz(torch.linspace(0, float(to_mel(torch.tensor(sample_rate / 2.0))), n_mels + 2))
    low, centre, high = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising, falling = (freqs - low) / (centre - low), (high - freqs) / (high - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0)


class RecurrentEncoder(nn.Module):
    """Front-end per step + GRU context (CPC's encoder); forward pools the context over time: (B, T[, F]) -> (B, out_dim).

    `frontend`: `steps` (per-step MLP, feature sequences), `conv` (strided convs, raw waveforms), `logmel` (log-mel +
    MLP, waveforms), `auto` = steps for sequences, conv for waveforms. `pooling`: `mean` over time steps or `last`.
    """

    modalities = ("sequence", "waveform")

    def __init__(
        self,
        in_channels: PositiveInt,
        modality: str = "sequence",
        frontend: str = "auto",
        step_dim: PositiveInt = 128,
        context_dim: PositiveInt = 128,
        pooling: str = "mean",
        conv_strides: Sequence[int] = (5, 4, 2, 2, 2),
        conv_kernels: Sequence[int] = (10, 8, 4, 4, 4),
        sample_rate: PositiveInt = 8000,
    ) -> None:
        super().__init__()
        if frontend not in FRONTENDS:
            raise ValueError(f"backbone.frontend must be one of {FRONTENDS}, got {frontend!r}")
        if pooling not in ("mean", "last"):
            raise ValueError(f"backbone.pooling must be mean or last, got {pooling!r}")
        if frontend == "auto":
            frontend = "conv" if modality == "waveform" else "steps"
        if frontend in ("conv", "logmel") and modality != "waveform":
            raise ValueError(f"backbone.frontend={frontend} reads raw waveforms, but the data holds {modality}s; use frontend=steps")
        if frontend == "steps" and modality == "waveform":
            raise ValueError("backbone.frontend=steps encodes feature sequences, but the data holds raw waveforms; use frontend=conv or logmel")
        self.frontend_name = frontend
        self.frontend: nn.Module = {
            "steps": lambda: StepFrontend(in_channels, step_dim),
            "conv": lambda: ConvFrontend(step_dim, conv_strides, conv_kernels),
            "logmel": lambda: LogMelFrontend(step_dim, sample_rate),
        }[frontend]()
        self.gru = nn.GRU(step_dim, context_dim, batch_first=True)
        self.step_dim, self.out_dim, self.pooling = step_dim, context_dim, pooling

    def encode_steps(self, x: torch.Tensor) -> torch.Tensor:
        """z: (B, T', step_dim), one latent per (down-sampled) time step."""
        return self.frontend(x)

    def context(self, z: torch.Tensor) -> torch.Tensor:
        """c: (B, T', out_dim), c_t summarising z_1..z_t (causal)."""
        return self.gru(z)[0]

    def pool(self, c: torch.Tensor) -> torch.Tensor:
        return c.mean(dim=1) if self.pooling == "mean" else c[:, -1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.context(self.encode_steps(x)))
