"""Views of a text, made in the loader: EDA's word edits (Wei & Zou, EMNLP 2019), a span crop, or none (SimCSE).

EDA ("Easy Data Augmentation Techniques for Boosting Performance on Text Classification Tasks"; reference code
jasonwei20/eda_nlp) edits n = max(1, alpha * words) words by synonym replacement (WordNet synonyms of non-stop words),
random insertion (a synonym of a random word at a random place), random swap, or deletes each word with
probability p; like the reference, each view applies ONE of the enabled edits, chosen at random (`compose: true`
applies all in turn instead). Unlike the reference, case and punctuation are kept (the reference lower-cases and
strips them, which would make every view differ from the evaluation text); synonyms are looked up lower-cased.
A span crop (a random run of `crop_scale` of the words, as DeCLUTR / CLEAR take spans) comes first when enabled.
With no edit enabled, the views are the text itself: SimCSE's (Gao et al., EMNLP 2021) positives differ only by
the encoder's dropout noise.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import torch

from ssl_train.constraints import Count, CropScale, FieldsOf, Fraction, NonNegative, PositiveInt
from ssl_train.data.recipes import recipes_per_view
from ssl_train.data.text import load_synonyms

# the reference's stop-word list (eda_nlp/code/eda.py), never replaced by synonyms
STOP_WORDS = frozenset(
    "i me my myself we our ours ourselves you your yours yourself yourselves he him his himself she her hers herself it its itself they them their "
    "theirs themselves what which who whom this that these those am is are was were be been being have has had having do does did doing a an the "
    "and but if or because as until while of at by for with about against between into through during before after above below to from up down in "
    "out on off over under again further then once here there when where why how all any both each few more most other some such no nor not only own "
    "same so than too very s t can will just don should now".split()
)


@dataclass(frozen=True)
class TextViewRecipe:
    """The knobs of one text view; 0 (or (1, 1) for the crop) turns an edit off."""

    synonym_fraction: NonNegative = 0.0  # EDA alpha_sr: fraction of the words replaced by a WordNet synonym
    insert_fraction: NonNegative = 0.0  # EDA alpha_ri: synonyms inserted, as a fraction of the words
    swap_fraction: NonNegative = 0.0  # EDA alpha_rs: word pairs swapped, as a fraction of the words
    delete_prob: Fraction = 0.0  # EDA p_rd: each word deleted with this probability (one always stays)
    crop_scale: CropScale = (1.0, 1.0)  # a random span of this fraction of the words
    compose: bool = False  # False: one enabled edit per view (EDA); True: every enabled edit in turn


def _edit_count(fraction: float, words: int) -> int:
    return max(1, int(fraction * words))


def _bare(word: str) -> str:
    return re.sub(r"[^a-z]", "", word.lower())


class TextEdits:
    """One view's edits of a text, with Python's `random` (seeded per worker by the run's seed)."""

    def __init__(self, recipe: TextViewRecipe, synonyms: Mapping[str, Sequence[str]]) -> None:
        self.recipe, self.synonyms = recipe, synonyms

    def synonyms_of(self, word: str) -> Sequence[str]:
        bare = _bare(word)
        return () if not bare or bare in STOP_WORDS else self.synonyms.get(bare, ())

    def replace_synonyms(self, words: list[str]) -> list[str]:
        out = list(words)
        candidates = [i for i, w in enumerate(out) if self.synonyms_of(w)]
        random.shuffle(candidates)
        for i in candidates[: _edit_count(self.recipe.synonym_fraction, len(out))]:
            out[i] = random.choice(list(self.synonyms_of(out[i])))
        return out

    def insert_synonyms(self, words: list[str]) -> list[str]:
        out = list(words)
        with_synonyms = [w for w in out if self.synonyms_of(w)]
        for _ in range(_edit_count(self.recipe.insert_fraction, len(words)) if with_synonyms else 0):
            out.insert(random.randint(0, len(out)), random.choice(list(self.synonyms_of(random.choice(with_synonyms)))))
        return out

    def swap(self, words: list[str]) -> list[str]:
        out = list(words)
        for _ in range(_edit_count(self.recipe.swap_fraction, len(out)) if len(out) > 1 else 0):
            i, j = random.sample(range(len(out)), 2)
            out[i], out[j] = out[j], out[i]
        return out

    def delete(self, words: list[str]) -> list[str]:
        if len(words) <= 1:
            return list(words)
        kept = [w for w in words if random.random() > self.recipe.delete_prob]
        return kept or [random.choice(words)]

    def crop(self, words: list[str]) -> list[str]:
        low, high = self.recipe.crop_scale
        length = max(1, round(len(words) * random.uniform(low, high)))
        start = random.randint(0, len(words) - length) if len(words) > length else 0
        return words[start : start + length]

    def __call__(self, text: str) -> str:
        r = self.recipe
        words = text.split()
        if not words:
            return text
        if tuple(r.crop_scale) != (1.0, 1.0):
            words = self.crop(words)
        edits = [
            edit
            for edit, on in (
                (self.replace_synonyms, r.synonym_fraction),
                (self.insert_synonyms, r.insert_fraction),
                (self.swap, r.swap_fraction),
                (self.delete, r.delete_prob),
            )
            if on > 0
        ]
        for edit in edits if r.compose else [random.choice(edits)] if edits else []:
            words = edit(words)
        return " ".join(words)


class TextViews:
    """The view pipeline for text (`augment=text_eda`, `augment=text_identity`): str -> `num_global` token tensors.

    `tokenizer` (the data's), `size`, `mean`, `std`, `fixed_size` are completed at run time; `recipe` sets every
    view's edits and `per_view` overrides them for one view. `synonyms`: a WordNet folder, `auto` (Debian's
    /usr/share/wordnet when installed, else the embedded table), or null (no synonym edits: they are refused).
    """

    modalities = ("text",)
    on_device = False

    def __init__(
        self,
        tokenizer: Any,
        size: Count = 0,
        mean: Sequence[float] = (),
        std: Sequence[float] = (),
        num_global: PositiveInt = 2,
        recipe: Annotated[Mapping | None, FieldsOf(TextViewRecipe)] = None,
        per_view: Sequence[Mapping] | None = None,
        synonyms: str | None = "auto",
        fixed_size: bool = True,
    ) -> None:
        _, recipes = recipes_per_view(TextViewRecipe(), recipe, per_view, num_global)
        needs_synonyms = any(r.synonym_fraction > 0 or r.insert_fraction > 0 for r in recipes)
        if needs_synonyms and synonyms is None:
            raise ValueError("augment.synonyms is null, but synonym_fraction / insert_fraction need WordNet synonyms: set synonyms=auto")
        table = load_synonyms(synonyms) if needs_synonyms else {}
        self.edits = [TextEdits(r, table) for r in recipes]
        self.tokenizer, self.num_global = tokenizer, num_global

    def texts(self, text: str) -> list[str]:
        """The views as texts (what the encoder reads, before tokenisation)."""
        return [edit(text) for edit in self.edits]

    def __call__(self, text: str) -> list[torch.Tensor]:
        return [self.tokenizer(t) for t in self.texts(text)]
