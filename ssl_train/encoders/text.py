"""Text encoders: a small pre-norm transformer and a character (byte) CNN trained from scratch on CPU, and any Hugging
Face `transformers` encoder read from a local folder (HFTextEncoder, pretrained weights or random init).

Both read int64 token ids (B, L) as the tokenizers make them (ssl_train.data.tokenizers: 0 is padding, position 0
holds BOS) and return one vector per text (`out_dim`), so every method (SimCLR, SimCSE, BYOL, ...) and every probe
uses them as they use an image encoder. In training mode their dropout is SimCSE's noise (Gao et al. 2021).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from ssl_train.constraints import BelowOne, Positive, PositiveInt
from ssl_train.data.tokenizers import HF_ID_OFFSET, PAD, ByteTokenizer, hashed_ngrams, import_transformers, load_hf_tokenizer, local_hf_folder
from ssl_train.errors import UserError

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

    def __init__(
        self,
        in_channels: PositiveInt,
        width: PositiveInt = 128,
        depth: PositiveInt = 2,
        heads: PositiveInt = 4,
        mlp_ratio: Positive = 4.0,
        dropout: BelowOne = 0.1,
        max_positions: PositiveInt = 512,
        pooling: str = "mean",
        downsample: int | str = "auto",
    ) -> None:
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

    def __init__(
        self,
        in_channels: PositiveInt,
        embed_dim: PositiveInt = 64,
        channels: PositiveInt = 128,
        kernel_sizes: Sequence[int] = (3, 5, 7),
        depth: PositiveInt = 2,
        dropout: BelowOne = 0.1,
    ) -> None:
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
            for conv, norm in zip(cast(nn.ModuleList, convs), cast(nn.ModuleList, norms), strict=True):  # ModuleList's items type as Module
                x = torch.relu(norm(conv(x)[..., : tokens.shape[1]].transpose(1, 2)).transpose(1, 2)) * keep
            pooled.append(x.masked_fill(~keep, float("-inf")).amax(-1))
        return torch.cat(pooled, dim=1)


class HFTextEncoder(nn.Module):
    """A Hugging Face `transformers` encoder (BERT, RoBERTa, DistilBERT, ...) read from the local folder `path`, never
    the hub: its pretrained weights (`pretrained=true`, SimCSE's setting: Gao et al. 2021 start from BERT) or the
    architecture of its config.json at random init; mean pooling of the last hidden states over the non-padding
    tokens (Sentence-BERT) or the first ([CLS]) token. It reads the ids of `tokenizer=hf` on the same folder (the
    model's own ids + 3, 0 = padding) and shifts them back; `in_channels` (the data's vocabulary) must be that
    tokenizer's, so a byte or BPE tokenizer stops here instead of feeding the model meaningless ids. The state dict of
    `portable_module` keeps transformers' key names."""

    modalities = ("text",)

    def __init__(self, in_channels: PositiveInt, path: str | None = None, pretrained: bool = True, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"backbone.pooling must be one of {POOLINGS}, got {pooling!r}")
        transformers = import_transformers()
        folder = local_hf_folder(path, "backbone.path")
        tokenizer = load_hf_tokenizer(folder, "backbone.path")
        model_ids = len(tokenizer) + HF_ID_OFFSET
        if model_ids != in_channels:
            raise UserError(
                f"backbone.path={path}: this model reads the ids of its own tokenizer ({len(tokenizer)} tokens + "
                f"{HF_ID_OFFSET} specials = {model_ids} ids), but the data's tokenizer has "
                f"{in_channels} ids: set tokenizer=hf tokenizer.path={path}"
            )
        progress_bar = transformers.utils.logging.is_progress_bar_enabled()
        transformers.utils.logging.disable_progress_bar()  # a bar per load (the encoder is built for the baseline too) is noise
        try:
            if pretrained:
                model = transformers.AutoModel.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
            else:
                model = transformers.AutoModel.from_config(transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False))
        except (OSError, ValueError) as error:
            hint = " (backbone.pretrained=false builds its config.json at random init)" if pretrained else ""
            raise UserError(f"backbone.path={path}: cannot load a transformers model from it{hint}: {str(error).splitlines()[0]}") from None
        finally:
            if progress_bar:
                transformers.utils.logging.enable_progress_bar()
        self.model, self.pooling, self.vocab_size = model.train(), pooling, in_channels  # from_pretrained returns eval mode: no dropout noise
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.out_dim = int(model.config.hidden_size)
        limits = [int(n) for n in (getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length) if n and n < 100_000]
        self.max_positions = min(limits) if limits else None

    @property
    def portable_module(self) -> nn.Module:
        """The transformers model itself: exports carry its key names (AutoModel.from_config(...).load_state_dict)."""
        return self.model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _check_tokens(tokens, self.vocab_size, self.max_positions)
        keep = tokens != PAD
        ids = (tokens - HF_ID_OFFSET).masked_fill(~keep, self.pad_id)
        hidden = self.model(input_ids=ids, attention_mask=keep.long()).last_hidden_state
        if self.pooling == "cls":
            return hidden[:, 0]
        weights = keep.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1).clamp_min(1)


class NGramBagEncoder(nn.Module):
    """fastText-style sentence encoder (Joulin et al. 2017, "Bag of Tricks"; Sent2Vec, Pagliardini et al. 2018): every
    token n-gram of `orders` (with byte tokens: character n-grams) hashed into `buckets` rows of an embedding table,
    averaged over the text's n-grams, then LayerNorm. Order-free and cheap: a step costs a lookup, not attention, so
    a CPU trains it on far more texts than a transformer in the same time."""

    modalities = ("text",)

    def __init__(
        self, in_channels: PositiveInt, dim: PositiveInt = 256, buckets: PositiveInt = 65536, orders: Sequence[int] = (1, 2, 3, 4), dropout: BelowOne = 0.1
    ) -> None:
        super().__init__()
        if not orders or min(orders) < 1 or buckets < 2:
            raise ValueError(f"backbone.orders must be n-gram lengths >= 1 and buckets >= 2, got {list(orders)}, {buckets}")
        self.vocab_size, self.buckets, self.orders, self.out_dim = in_channels, buckets, tuple(int(n) for n in orders), dim
        self.table = nn.EmbeddingBag(buckets, dim, mode="sum")
        nn.init.normal_(self.table.weight, std=dim**-0.5)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        _check_tokens(tokens, self.vocab_size)
        ids, keep = hashed_ngrams(tokens, self.buckets, self.orders)
        weights = self.dropout(keep.to(self.table.weight.dtype))  # n-gram dropout: SimCSE's noise for a bag
        summed = self.table(ids, per_sample_weights=weights)
        return self.norm(summed / keep.sum(1, keepdim=True).clamp_min(1))
