"""ssl_train.modalities: one object per kind of data; an unknown kind is refused in one line naming the allowed ones."""

from __future__ import annotations

import pytest
import torch

from ssl_train.data.datamodule import SSLDataModule
from ssl_train.data.datasets import EmbeddedFashionMNIST, InputSpec
from ssl_train.errors import UserError
from ssl_train.modalities import KINDS, MODALITIES, modality
from ssl_train.modalities.check import check_fits


class RelabelledSource:
    """The embedded images, told to be of another kind (what a new source with a typo in its modality looks like)."""

    def __init__(self, kind: str, spec: InputSpec | None = None) -> None:
        self.kind, self.spec = kind, spec

    def load(self):
        splits = EmbeddedFashionMNIST(train_limit=64, test_limit=32).load()
        splits.modality = self.kind
        splits.input_spec = self.spec or splits.input_spec
        return splits


def test_every_kind_has_its_names_and_module() -> None:
    assert MODALITIES == ("image", "sequence", "waveform", "graph", "text", "image_text")
    for name, kind in KINDS.items():
        assert kind.name == name and kind.holds and kind.raw_input_name and kind.spec_fields
        assert type(kind).__module__ == f"ssl_train.modalities.{name}"


def test_an_unknown_modality_is_one_line_naming_the_allowed_ones() -> None:
    with pytest.raises(UserError, match=r"^data.source: unknown modality 'audio'; allowed: image, sequence, waveform, graph, text, image_text$"):
        SSLDataModule(RelabelledSource("audio"), batch_size=8).splits  # noqa: B018 - loading checks it
    with pytest.raises(UserError, match="data=x: unknown modality 'audio'; allowed: image, "):
        check_fits("audio", "x", {})


def test_a_source_that_leaves_its_kinds_input_unset_is_refused() -> None:
    with pytest.raises(UserError, match=r"a text source must set input_spec.length, input_spec.vocab_size"):
        SSLDataModule(RelabelledSource("text", InputSpec(channels=1, size=28)), batch_size=8).splits  # noqa: B018


def test_each_kind_reads_its_own_fields_of_the_input_spec() -> None:
    spec = InputSpec(channels=3, size=32, length=64, features=5, nodes=100, vocab_size=259)
    assert [(k.in_channels(spec), k.size(spec)) for k in KINDS.values()] == [(3, 32), (5, 64), (5, 64), (5, 100), (259, 64), (3, 32)]


def test_what_differs_between_kinds() -> None:
    assert modality("image_text").reads("backbone") == "image" and modality("image_text").reads("augment") == "image_text"
    assert [k.name for k in KINDS.values() if not k.views_pair_samples] == ["graph", "image_text"]
    assert [k.name for k in KINDS.values() if k.lidar] == ["image"] and [k.name for k in KINDS.values() if k.captioned] == ["image_text"]
    images = torch.zeros(2, 3, 96, 96, dtype=torch.uint8)
    assert modality("image").raw_features(images, 4096).shape == (2, 3 * 36 * 36)  # pooled to the largest grid that fits
    assert modality("sequence").raw_features(torch.zeros(2, 7, 3), 4096).shape == (2, 21)
    assert modality("text").raw_features(torch.ones(2, 9, dtype=torch.long), 4096).shape == (2, 4096)
