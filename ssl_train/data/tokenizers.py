"""Offline tokenisation: UTF-8 bytes (no vocabulary at all) by default, or a byte-level BPE trained locally.

Every tokenizer maps a text to a fixed-length int64 tensor: [BOS] tokens... [EOS] then [PAD] up to `max_length`
(longer texts are cut). Ids 0, 1, 2 are PAD, BOS and EOS in every tokenizer, so encoders mask padding with
`tokens == PAD` and read the first position for CLS pooling without knowing which tokenizer made the ids.
A tokenizer is made by a factory that gets the training texts (`corpus`): the byte tokenizer ignores them, the BPE
learns its merges from them (`tokenizers` library, seconds for 10k sentences) or reads a tokenizer.json it saved, and
`tokenizer=hf` reads a Hugging Face tokenizer from a local folder (the model's own ids shifted by 3, so 0 stays PAD).
Nothing is ever fetched from a hub.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ssl_train.constraints import PositiveInt, TokenLength
from ssl_train.errors import DataNotFoundError, UserError

PAD, BOS, EOS = 0, 1, 2
SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]")


def _check_length(max_length: int) -> None:
    if not isinstance(max_length, int) or max_length < 3:
        raise UserError(f"data.source.tokenizer.max_length must be an integer >= 3 (BOS, one token, EOS), got {max_length!r}")


def framed(ids: Sequence[int], max_length: int) -> torch.Tensor:
    """[BOS] ids[: max_length - 2] [EOS] [PAD]...: one row of length `max_length`."""
    body = list(ids)[: max_length - 2]
    row = torch.full((max_length,), PAD, dtype=torch.long)
    row[: len(body) + 2] = torch.tensor([BOS, *body, EOS], dtype=torch.long)
    return row


class ByteTokenizer:
    """UTF-8 bytes as tokens (id = byte + 3): nothing to learn or fetch, any language, no unknown token."""

    vocab_size = 256 + len(SPECIAL_TOKENS)

    def __init__(self, max_length: int = 128) -> None:
        _check_length(max_length)
        self.max_length = max_length

    def __call__(self, text: str) -> torch.Tensor:
        return framed([b + len(SPECIAL_TOKENS) for b in text.encode("utf-8")], self.max_length)

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.stack([self(t) for t in texts]) if texts else torch.zeros(0, self.max_length, dtype=torch.long)

    def decode(self, ids: torch.Tensor) -> str:
        data = bytes(int(i) - len(SPECIAL_TOKENS) for i in ids.tolist() if int(i) >= len(SPECIAL_TOKENS))
        return data.decode("utf-8", errors="replace")


class BPETokenizer:
    """A byte-level BPE (`tokenizers` library) with PAD/BOS/EOS as ids 0/1/2: learned from local texts or read from a
    tokenizer.json it saved (`save`); picklable, so it travels to DataLoader workers."""

    def __init__(self, tokenizer: object, max_length: int = 64) -> None:
        _check_length(max_length)
        self.tokenizer, self.max_length = tokenizer, max_length
        ids = [tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]  # type: ignore[attr-defined]
        if ids != [PAD, BOS, EOS]:
            raise UserError(f"the tokenizer's special tokens {SPECIAL_TOKENS} must be ids 0, 1, 2 (they are {ids}): use one trained by ssl_train")
        self.vocab_size = int(tokenizer.get_vocab_size())  # type: ignore[attr-defined]

    @classmethod
    def train(cls, corpus: Sequence[str], vocab_size: int = 4000, max_length: int = 64, min_frequency: int = 2) -> BPETokenizer:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        if vocab_size < 300:
            raise UserError(f"data.source.tokenizer.vocab_size must be >= 300 (256 bytes + specials + merges), got {vocab_size}")
        if not corpus:
            raise UserError("data.source.tokenizer: no training texts to learn the BPE from")
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(corpus, trainer=trainer)
        return cls(tokenizer, max_length)

    @classmethod
    def from_file(cls, path: str | Path, max_length: int = 64) -> BPETokenizer:
        """A tokenizer.json (or a folder holding one) saved by `save`; never a download."""
        from tokenizers import Tokenizer

        file = Path(path).expanduser()
        file = file / "tokenizer.json" if file.is_dir() else file
        if not file.is_file():
            raise DataNotFoundError(f"data.source.tokenizer.path: no tokenizer.json at {file}")
        try:
            return cls(Tokenizer.from_file(str(file)), max_length)
        except Exception as error:  # the tokenizers library raises its own Exception type
            raise UserError(f"data.source.tokenizer.path: {file} is not a tokenizer.json ({error})") from None

    def save(self, path: str | Path) -> None:
        self.tokenizer.save(str(path))  # type: ignore[attr-defined]

    def __call__(self, text: str) -> torch.Tensor:
        return framed(self.tokenizer.encode(text, add_special_tokens=False).ids, self.max_length)  # type: ignore[attr-defined]

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.max_length, dtype=torch.long)
        encodings = self.tokenizer.encode_batch(list(texts), add_special_tokens=False)  # type: ignore[attr-defined]
        return torch.stack([framed(e.ids, self.max_length) for e in encodings])

    def decode(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode([int(i) for i in ids.tolist() if int(i) > EOS])  # type: ignore[attr-defined]


def hashed_ngrams(tokens: torch.Tensor, buckets: int, orders: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, P) bucket ids of every token n-gram (B, L) `tokens` hold, for each length in `orders`, hashed into `buckets`,
    and the (B, P) mask of the n-grams that hold no padding (the bag-of-n-grams baseline and NGramBagEncoder)."""
    ids, masks = [], []
    for n in orders:
        if tokens.shape[1] < n:
            continue
        windows = tokens.unfold(1, n, 1)  # (B, L - n + 1, n)
        code = torch.zeros_like(windows[..., 0])
        for i in range(n):
            code = code * 1_000_003 + windows[..., i]
        ids.append((code * 2_654_435_761 + n) % buckets)
        masks.append((windows != PAD).all(-1))
    return torch.cat(ids, 1), torch.cat(masks, 1)


HF_ID_OFFSET = len(SPECIAL_TOKENS)  # HFTokenizer's ids are the Hugging Face tokenizer's + 3: 0 stays padding


def import_transformers() -> Any:
    try:
        import transformers
    except ImportError:
        raise UserError("tokenizer=hf / backbone=hf_text need the `transformers` package: pip install 'ssl_train[hf]'") from None
    return transformers


def local_hf_folder(path: str | Path | None, key: str) -> Path:
    """The local folder of a Hugging Face model or tokenizer; never a hub name."""
    if not path:
        raise UserError(
            f"{key}: give the local folder of a Hugging Face model (save_pretrained's output): tokenizer=hf "
            "tokenizer.path=~/models/bert-base-uncased (backbone.path follows it); nothing is fetched from the hub"
        )
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataNotFoundError(
            f"{key}={path}: no such folder (a local Hugging Face model folder, e.g. from huggingface-cli download "
            "NAME --local-dir DIR on a machine with internet); nothing is fetched from the hub"
        )
    return folder


def load_hf_tokenizer(path: str | Path | None, key: str = "tokenizer.path") -> Any:
    """A `transformers.AutoTokenizer` read from a local folder only (local_files_only: never the hub)."""
    folder = local_hf_folder(path, key)
    try:
        return import_transformers().AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError) as error:
        raise UserError(f"{key}={path}: not a Hugging Face tokenizer folder ({str(error).splitlines()[0]})") from None


class HFTokenizer:
    """A Hugging Face tokenizer from a local folder, with the model's own framing ([CLS] ... [SEP] for BERT, <s> ... </s>
    for RoBERTa) and truncation at `max_length`; its ids are shifted by 3 (HF_ID_OFFSET) so that 0 is padding as in
    every ssl_train tokenizer, and ssl_train.encoders.text.HFTextEncoder shifts them back. Picklable (DataLoader workers)."""

    def __init__(self, path: str | Path | None, max_length: int = 128) -> None:
        _check_length(max_length)
        self.tokenizer, self.max_length = load_hf_tokenizer(path), max_length
        self.vocab_size = len(self.tokenizer) + HF_ID_OFFSET

    def encode_batch(self, texts: Sequence[str]) -> torch.Tensor:
        if not texts:
            return torch.zeros(0, self.max_length, dtype=torch.long)
        encoded = self.tokenizer(list(texts), max_length=self.max_length, truncation=True, padding="max_length", return_tensors="pt")
        return (encoded["input_ids"].long() + HF_ID_OFFSET).masked_fill(encoded["attention_mask"] == 0, PAD)

    def __call__(self, text: str) -> torch.Tensor:
        return self.encode_batch([text])[0]

    def decode(self, ids: torch.Tensor) -> str:
        return self.tokenizer.decode([int(i) - HF_ID_OFFSET for i in ids.tolist() if int(i) != PAD], skip_special_tokens=True)


def byte_tokenizer(corpus: Sequence[str] = (), max_length: TokenLength = 128) -> ByteTokenizer:
    """`tokenizer=bytes`: the byte tokenizer (the corpus is not needed)."""
    return ByteTokenizer(max_length)


def bpe_tokenizer(
    corpus: Sequence[str] = (), vocab_size: PositiveInt = 4000, max_length: TokenLength = 64, min_frequency: PositiveInt = 2, path: str | None = None
) -> BPETokenizer:
    """`tokenizer=bpe`: a BPE learned from the training texts, or read from `path` (a tokenizer.json saved earlier)."""
    if path:
        return BPETokenizer.from_file(path, max_length)
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        raise UserError("data.source.tokenizer=bpe needs the `tokenizers` package: pip install 'ssl_train[text]'") from None
    return BPETokenizer.train(corpus, vocab_size, max_length, min_frequency)


def hf_tokenizer(corpus: Sequence[str] = (), path: str | None = None, max_length: TokenLength = 128) -> HFTokenizer:
    """`tokenizer=hf`: the Hugging Face tokenizer in the local folder `path` (the corpus is not needed)."""
    return HFTokenizer(path, max_length)
