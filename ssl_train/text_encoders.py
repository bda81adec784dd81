"""Text encoders trained from scratch on CPU: a small pre-norm transformer and a character (byte) CNN.

Both read int64 token ids (B, L) as the tokenizers make them (ssl_train.data.tokenizers: 0 is padding, position 0
holds BOS) and return one vector per text (`out_dim`), so every method (SimCLR, SimCSE, BYOL, ...) and every probe
uses them as they use an image encoder. In training mode their dropout is SimCSE's noise (Gao et al. 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ssl_train.data.tokenizers import PAD, ByteTokenizer

POOLINGS = ("mean", "cls")


def _check_tokens(tokens: torch.Tensor, vocab_size: int, max_positions: int | None = None) -> None:
    if tokens.dtype != torch.long or tokens.ndim != 2:
        raise ValueError(f"text encoders take int64 token ids (B, L), got {tokens.dtype} {tuple(tokens.shape)}")
    if max_positions is not None and tokens.shape[1] > max_positions:
        raise ValueError(f"{tokens.shape[1]} tokens per text but backbone.max_positions={max_positions}: raise it or the tokenizer's max_length")


class TransformerTextEncoder(nn.Module):
    """Token + learned position embeddings, `depth` pre-norm transformer layers (GELU), a final LayerNorm, then mean
    pooling over the non-padding tokens (SimCSE/Sentence-BERT style) or the first (BOS = CLS) token.

    Attention ignores padding (key padding mask). `in_channels` is the tokenizer's vocabulary size (from the data).
    `downsample` > 1 first merges that many consecutive token embeddings with a strided convolution (CANINE, Clark et
    al. 2022: character transformers downsample by 4), so bytes cost what subwords cost; `auto`: 4 for the byte
    tokenizer's vocabulary (measured on 2 CPU cores, 256 texts x 128 bytes, fwd+bwd: 4.3 s at 1, ~0.7 s at 4), 1 else.
    """

    modalities = ("text",)

    def __init__(self, in_channels: int, width: int = 128, depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0, dropout: float = 0.1,
                 max_positions: int = 512, pooling: str = "mean", downsample: int | str = "auto") -> None:
        super().__init__()
        if downsample == "auto":
            downsample = 4 if in_channels == ByteTokenizer.vocab_size else 1
        if not isinstance(downsample, int) or downsample < 1:
            raise ValueError(f"backbone.downsample must be an integer >= 1 or auto, got {downsample!r}")
        if pooling not in POOLINGS:
            raise ValueError(f"backbone.pooling must be one of {POOLINGS}, got {pooling!r}")
        if width % heads:
            raise ValueError(f"backbone.width={width} must be a multiple of backbone.heads={heads}")
        self.vocab_size, self.max_positions, self.pooling, self.out_dim, self.downsample = in_channels, max_positions, pooling, width, downsample
        self.tokens = nn.Embedding(in_channels, width, padding_idx=PAD)
        self.merge = nn.Conv1d(width, width, downsample, stride=downsample) if downsample > 1 else None
        self.positions = nn.Parameter(torch.zeros(1, max_positions, width))
        nn.init.normal_(self.positions, std=0.02)
        nn.init.normal_(self.tokens.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(width, heads, int(width * mlp_ratio), dropout, activation="gelu", batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)

    def token_features(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, L', width) features of every (merged) token and the (B, L') padding mask (True where all padding);
        L' = ceil(L / downsample)."""
        _check_tokens(tokens, self.vocab_size, self.max_positions)
        x = self.tokens(tokens)
        padding = tokens == PAD
        if self.merge is not None:
            r = self.downsample
            extra = -tokens.shape[1] % r
            x = nn.functional.pad(x, (0, 0, 0, extra))
            padding = nn.functional.pad(padding, (0, extra), value=True).unflatten(1, (-1, r)).all(-1)
            x = self.merge(x.transpose(1, 2)).transpose(1, 2)
        x = self.dropout(x + self.positions[:, : x.shape[1]])
        return self.norm(self.layers(x, src_key_padding_mask=padding)), padding

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        features, padding = self.token_features(tokens)
        if self.pooling == "cls":
            return features[:, 0]
        keep = (~padding).unsqueeze(-1).to(features.dtype)
        return (features * keep).sum(1) / keep.sum(1).clamp_min(1)


class CharCNNEncoder(nn.Module):
    """Byte/character CNN (Kim 2014 widths over characters, Zhang et al. 2015): embeddings, parallel stacks of 1-D
    convolutions of several widths (LayerNorm over channels, ReLU), max over the non-padding positions, concatenated
    (`out_dim` = channels x widths). Padding positions are zeroed after every layer, so extra padding changes nothing."""

    modalities = ("text",)

    def __init__(self, in_channels: int, embed_dim: int = 64, channels: int = 128, kernel_sizes: Sequence[int] = (3, 5, 7), depth: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if not kernel_sizes or depth < 1:
            raise ValueError(f"backbone.kernel_sizes must be non-empty and depth >= 1, got {list(kernel_sizes)}, {depth}")
        self.vocab_size = in_channels
        self.tokens = nn.Embedding(in_channels, embed_dim, padding_idx=PAD)
        self.convs = nn.ModuleList(
            nn.ModuleList(nn.Conv1d(embed_dim if i == 0 else channels, channels, k, padding=k // 2) for i in range(depth)) for k in kernel_sizes
        )
        self.norms = nn.ModuleList(nn.ModuleList(nn.LayerNorm(channels) for _ in range(depth)) for _ in kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.out_dim = channels * len(kernel_sizes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _check_tokens(tokens, self.vocab_size)
        keep = (tokens != PAD).unsqueeze(1)  # (B, 1, L)
        embedded = self.dropout(self.tokens(tokens)).transpose(1, 2)  # (B, E, L)
        pooled = []
        for convs, norms in zip(self.convs, self.norms, strict=True):
            x = embedded
            for conv, norm in zip(convs, norms, strict=True):
                x = torch.relu(norm(conv(x)[..., : tokens.shape[1]].transpose(1, 2)).transpose(1, 2)) * keep
            pooled.append(x.masked_fill(~keep, float("-inf")).amax(-1))
        return torch.cat(pooled, dim=1)
