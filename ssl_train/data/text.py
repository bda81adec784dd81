"""Text sources read from local files: WordNet 3.0 glosses (embedded subset, or Debian's wordnet-base) and your own
text / CSV / JSONL files.

A text sample is a str; the view pipeline (ssl_train.data.text_views) and the evaluation transform (the tokenizer)
turn it into a fixed-length int64 tensor of token ids. The tokenizer is made from the train split's texts when the
splits load (`Splits.tokenizer`); `Splits.input_spec` holds its vocabulary size and token length.
Unreadable rows (a line that does not decode as UTF-8, invalid JSON or JSON nested past the recursion limit, a missing
column, an empty text) are skipped, counted, and reported in one line; so are WordNet data-file lines that are not
synset lines (a file with none is refused in one line). A CSV field over csv.field_size_limit() is NOT skipped but refused in one line naming
the file and row: it almost always means an unclosed quote that swallowed the rows after it, which skipping would
silently drop.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ssl_train.constraints import Limit, OpenFraction
from ssl_train.data.datasets import InputSpec, Splits
from ssl_train.data.text_records import SkipCount, read_rows
from ssl_train.data.tokenizers import byte_tokenizer
from ssl_train.errors import DataNotFoundError, UserError

log = logging.getLogger(__name__)

WORDNET_ROOT = "/usr/share/wordnet"
WORDNET_PARTS = ("noun", "verb", "adj", "adv")
EMBEDDED_GLOSSES = Path(__file__).with_name("embedded") / "wordnet_glosses.npz"
# WordNet 3.0's 45 lexicographer files (lexnames), in file-number order: the labels of the glosses
LEXNAMES = (
    "adj.all",
    "adj.pert",
    "adv.all",
    "noun.Tops",
    "noun.act",
    "noun.animal",
    "noun.artifact",
    "noun.attribute",
    "noun.body",
    "noun.cognition",
    "noun.communication",
    "noun.event",
    "noun.feeling",
    "noun.food",
    "noun.group",
    "noun.location",
    "noun.motive",
    "noun.object",
    "noun.person",
    "noun.phenomenon",
    "noun.plant",
    "noun.possession",
    "noun.process",
    "noun.quantity",
    "noun.relation",
    "noun.shape",
    "noun.state",
    "noun.substance",
    "noun.time",
    "verb.body",
    "verb.change",
    "verb.cognition",
    "verb.communication",
    "verb.competition",
    "verb.consumption",
    "verb.contact",
    "verb.creation",
    "verb.emotion",
    "verb.motion",
    "verb.perception",
    "verb.possession",
    "verb.social",
    "verb.stative",
    "verb.weather",
    "adj.ppl",
)
TokenizerFactory = Callable[..., Any]


class TextDataset(Dataset):
    """Texts with int64 labels held in memory; returns (text, label). `skipped` counts the rows left out when read."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int] | torch.Tensor | np.ndarray, skipped: int = 0) -> None:
        if len(texts) != len(labels):
            raise ValueError(f"TextDataset: {len(texts)} texts but {len(labels)} labels")
        self.texts, self.labels, self.skipped = list(texts), torch.as_tensor(labels, dtype=torch.long), skipped

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> tuple[str, int]:
        return self.texts[index], int(self.labels[index])


def text_splits(
    train: TextDataset, test: TextDataset, tokenizer: TokenizerFactory | None, class_names: Sequence[str], where: str, pretrain: TextDataset | None = None
) -> Splits:
    """Splits of texts (modality 'text') with the tokenizer made from the pretraining texts."""
    for name, part in (("train", train), ("test", test)):
        if len(part) == 0:
            raise UserError(f"{where}: the {name} split holds no readable text")
    tokenizer = (tokenizer or byte_tokenizer)(corpus=(pretrain or train).texts)
    spec = InputSpec(length=tokenizer.max_length, vocab_size=tokenizer.vocab_size)
    return Splits(
        train,
        test,
        num_classes=len(class_names),
        mean=(),
        std=(),
        input_spec=spec,
        pretrain=pretrain,
        modality="text",
        tokenizer=tokenizer,
        class_names=tuple(class_names),
    )


def limited_texts(dataset: TextDataset, limit: int | None, seed: int) -> TextDataset:
    """The first `limit` texts of a fixed-seed shuffle (all of them, in order, when limit is None)."""
    if limit is None:
        return dataset
    keep = np.random.default_rng(seed).permutation(len(dataset))[:limit].tolist()
    return TextDataset([dataset.texts[i] for i in keep], dataset.labels[keep], dataset.skipped)


class TextFiles:
    """Your texts: `train` and `test` files (.csv / .jsonl with `text_column` and `label_column`, or .txt lines
    `label<TAB>text`), optionally `unlabeled` texts (.txt one per line, or a .csv / .jsonl text column) added to
    pretraining. Labels are any strings; class ids follow their sorted order in train. Without `test`,
    `test_fraction` of train is held out (fixed seed)."""

    modalities = ("text",)

    def __init__(
        self,
        train: str,
        test: str | None = None,
        unlabeled: str | None = None,
        text_column: str = "text",
        label_column: str = "label",
        test_fraction: OpenFraction = 0.2,
        tokenizer: TokenizerFactory | None = None,
        train_limit: Limit = None,
        test_limit: Limit = None,
    ) -> None:
        self.train_limit, self.test_limit = train_limit, test_limit
        if not 0 < test_fraction < 1:
            raise UserError(f"data.source.test_fraction must be in (0, 1), got {test_fraction}")
        self.train, self.test = Path(train).expanduser(), Path(test).expanduser() if test else None
        self.unlabeled = Path(unlabeled).expanduser() if unlabeled else None
        self.text_column, self.label_column, self.test_fraction, self.tokenizer = text_column, label_column, test_fraction, tokenizer

    def load(self) -> Splits:
        texts, labels, skips = read_rows(self.train, self.text_column, self.label_column)
        if self.test is not None:
            test_texts, test_labels, test_skips = read_rows(self.test, self.text_column, self.label_column)
        else:
            order = np.random.default_rng(0).permutation(len(texts))
            n_test = max(1, int(len(texts) * self.test_fraction))
            held = set(order[:n_test].tolist())
            test_texts, test_labels = [t for i, t in enumerate(texts) if i in held], [y for i, y in enumerate(labels) if i in held]
            texts, labels = [t for i, t in enumerate(texts) if i not in held], [y for i, y in enumerate(labels) if i not in held]
            test_skips = SkipCount(self.train)
        class_names = sorted({str(y) for y in labels})
        ids = {name: i for i, name in enumerate(class_names)}
        unseen = sum(1 for y in test_labels if y not in ids)
        if unseen:
            log.warning("%s: skipped %d test row(s) whose label is not in the train split", self.test or self.train, unseen)
        test_pairs = [(t, ids[y]) for t, y in zip(test_texts, test_labels, strict=True) if y in ids]
        train_set = limited_texts(TextDataset(texts, [ids[str(y)] for y in labels], skips.total()), self.train_limit, seed=0)
        test_set = limited_texts(TextDataset([t for t, _ in test_pairs], [y for _, y in test_pairs], test_skips.total() + unseen), self.test_limit, seed=1)
        pretrain = None
        if self.unlabeled is not None:
            extra, _, extra_skips = read_rows(self.unlabeled, self.text_column, None)
            pretrain = TextDataset(train_set.texts + extra, [*train_set.labels.tolist(), *([-1] * len(extra))], extra_skips.total())
        return text_splits(train_set, test_set, self.tokenizer, class_names, f"data.source.train={self.train}", pretrain)


def wordnet_lemma(word: str) -> str:
    """A WordNet lemma as text: 'take_a_breath' -> 'take a breath', adjective markers ('(a)', '(p)') dropped."""
    return re.sub(r"\([a-z]+\)$", "", word).replace("_", " ")


def parse_wordnet_line(line: str) -> tuple[str, int, list[str]] | str:
    """(gloss, lexicographer-file number, lemmas) of one synset line of a WordNet data file
    ('offset lex_filenum ss_type w_cnt word lex_id ... | gloss'), or why it is not one."""
    head, bar, gloss = line.partition(" | ")
    fields = head.split()
    if len(fields) < 4 or not bar:
        return "not 'offset lex_filenum ss_type w_cnt word lex_id ... | gloss'"
    if not gloss.strip():
        return "an empty gloss"
    lexfile, words = fields[1], fields[3]
    if not (len(lexfile) <= 3 and lexfile.isascii() and lexfile.isdigit() and int(lexfile) < len(LEXNAMES)):
        return f"lexicographer file {lexfile[:20]!r} is not a number 0..{len(LEXNAMES) - 1}"
    if not (words.isascii() and all(c in "0123456789abcdefABCDEF" for c in words)) or not 0 < int(words, 16) <= (len(fields) - 4) // 2:
        return f"word count {words[:20]!r} is not a hexadecimal count of the words on the line"
    return gloss.strip(), int(lexfile), [wordnet_lemma(w) for w in fields[4 : 4 + 2 * int(words, 16) : 2]]


def parse_wordnet_glosses(root: Path, key: str = "data.source.root") -> tuple[list[str], list[int], list[list[str]]]:
    """(glosses, lexicographer-file numbers, lemmas per synset) of every synset in WordNet's data.{noun,verb,adj,adv}.
    A line that is not a synset line is skipped, counted and reported in one line naming the file and the first such
    line; a file none of whose lines is a synset line is one UserError naming it."""
    glosses, lexfiles, lemmas = [], [], []
    for part in WORDNET_PARTS:
        path = root / f"data.{part}"
        if not path.is_file():
            raise DataNotFoundError(f"{key}: {path} not found; apt-get install wordnet-base puts WordNet 3.0 in {WORDNET_ROOT}")
        read, bad, first_bad = 0, 0, ""
        with open(path, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                if line.startswith(" ") or not line.strip():  # licence header
                    continue
                synset = parse_wordnet_line(line)
                if isinstance(synset, str):
                    bad, first_bad = bad + 1, first_bad or f"line {number}: {synset}"
                    continue
                read += 1
                glosses.append(synset[0])
                lexfiles.append(synset[1])
                lemmas.append(synset[2])
        if bad and not read:
            raise UserError(f"{key}: {path} holds no WordNet synset line ({first_bad}); expected WordNet 3.0's data.{part}")
        if bad:
            log.warning("%s: skipped %d line(s) that are not WordNet synset lines (first: %s)", path, bad, first_bad)
    return glosses, lexfiles, lemmas


def synonym_table(lemmas: Sequence[Sequence[str]]) -> dict[str, list[str]]:
    """word -> the other lemmas of every synset it is in (lower case, sorted), from WordNet's synsets."""
    table: dict[str, set[str]] = {}
    for synset in lemmas:
        lowered = [w.lower() for w in synset]
        for word in lowered:
            if " " not in word:
                table.setdefault(word, set()).update(w for w in lowered if w != word)
    return {w: sorted(s) for w, s in table.items() if s}


def read_embedded_glosses() -> dict[str, Any]:
    """The embedded WordNet subset: train/test texts and labels, and the synonym table of their words."""
    if not EMBEDDED_GLOSSES.is_file():
        raise DataNotFoundError(f"the embedded glosses {EMBEDDED_GLOSSES} are missing: reinstall ssl_train or run scripts/make_wordnet_glosses.py")
    with np.load(EMBEDDED_GLOSSES, allow_pickle=False) as arrays:
        return {k: arrays[k] for k in arrays.files}


class WordNetGlosses:
    """WordNet 3.0 glosses ("draw air into, and expel out of, the lungs; ...") labelled by their 45 lexicographer files
    (noun.animal, verb.motion, ...): a real labelled corpus read offline.

    `root: null` (default) reads the subset inside the package (up to 200 train / 40 test glosses per file: 8,388 /
    1,686; WordNet licence in ssl_train/data/embedded/LICENSE); `root=/usr/share/wordnet` (apt-get install wordnet-base)
    reads all 117,659 synsets, 80/20 split by a fixed seed. `unlabeled=/usr/share/wordnet` adds every gloss of that
    WordNet to pretraining, unlabeled, except those of the test split (the probe still reads the labelled train split):
    the semi-supervised protocol of STL-10, for text. WordNet 3.0, Princeton University (Miller 1995).
    """

    modalities = ("text",)

    def __init__(
        self,
        root: str | None = None,
        train_limit: Limit = None,
        test_limit: Limit = None,
        tokenizer: TokenizerFactory | None = None,
        unlabeled: str | None = None,
    ) -> None:
        self.root = Path(root).expanduser() if root else None
        self.unlabeled = Path(unlabeled).expanduser() if unlabeled else None
        self.train_limit, self.test_limit, self.tokenizer = train_limit, test_limit, tokenizer

    def texts_and_labels(self) -> tuple[list[str], np.ndarray, list[str], np.ndarray]:
        if self.root is None:
            arrays = read_embedded_glosses()
            return list(arrays["train_text"]), arrays["train_label"], list(arrays["test_text"]), arrays["test_label"]
        glosses, lexfiles, _ = parse_wordnet_glosses(self.root)
        order = np.random.default_rng(0).permutation(len(glosses))
        n_test = len(glosses) // 5
        labels = np.asarray(lexfiles, dtype=np.int64)
        return [glosses[i] for i in order[n_test:]], labels[order[n_test:]], [glosses[i] for i in order[:n_test]], labels[order[:n_test]]

    def load(self) -> Splits:
        train_x, train_y, test_x, test_y = self.texts_and_labels()
        train = limited_texts(TextDataset([str(t) for t in train_x], train_y), self.train_limit, seed=0)
        test = limited_texts(TextDataset([str(t) for t in test_x], test_y), self.test_limit, seed=1)
        pretrain = None
        if self.unlabeled is not None:
            held_out = set(test.texts) | set(train.texts)  # test glosses never pretrain; train ones are in once
            extra = [g for g in dict.fromkeys(parse_wordnet_glosses(self.unlabeled, "data.source.unlabeled")[0]) if g not in held_out]
            pretrain = TextDataset(train.texts + extra, [*train.labels.tolist(), *([-1] * len(extra))])
            log.info("pretraining on %d glosses: %d of the train split + %d unlabeled from %s", len(pretrain), len(train), len(extra), self.unlabeled)
        return text_splits(train, test, self.tokenizer, LEXNAMES, f"data.source.root={self.root or 'embedded'}", pretrain)


def load_synonyms(root: str | None = "auto") -> dict[str, list[str]]:
    """WordNet synonyms: from `root` (auto: Debian's /usr/share/wordnet when installed), else the embedded table
    (the words of the embedded glosses)."""
    if root == "auto":
        root = WORDNET_ROOT if (Path(WORDNET_ROOT) / "data.noun").is_file() else None
    if root:
        return synonym_table(parse_wordnet_glosses(Path(root).expanduser())[2])
    return json.loads(str(read_embedded_glosses()["synonyms_json"]))
