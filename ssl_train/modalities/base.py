"""The Modality interface: everything that differs between kinds of data, so the rest of the code asks one object."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import torch

from ssl_train.data.datasets import InputSpec, Splits
from ssl_train.errors import UserError


class Modality:
    """One kind of data (image, sequence, ...): its names, what its components read, and its input in the encoder's terms.

    Subclasses set the class attributes and override the methods their kind does differently; one instance per kind
    lives in the registry (ssl_train.modalities.modality).
    """

    name: str = ""
    holds: str = ""  # how a one-line error names the samples: "data=X holds images"
    raw_input_name: str = ""  # the raw-input baseline in summaries ("raw pixels")
    views_pair_samples: bool = True  # its views make two views of one sample (alignment); graph views perturb the whole graph
    lidar: bool = False  # LiDAR of augmented views of test samples is measured (images: surrogate classes of 8 crops)
    captioned: bool = False  # samples carry captions: zero-shot and retrieval evaluations can read them
    pipeline_tag: str = "feature-extraction"  # the Hugging Face pipeline an export's model card names
    component_input: Mapping[str, str] = MappingProxyType({})  # config group -> the kind its component reads (default: this one)
    spec_fields: tuple[str, ...] = ()  # the InputSpec fields a source of this kind must set

    def reads(self, group: str) -> str:
        """The kind of input a component of config group `group` takes from a sample of this kind."""
        return self.component_input.get(group, self.name)

    def check_spec(self, spec: InputSpec, where: str) -> None:
        """One line when a source left a field of its kind's input spec unset."""
        unset = [f for f in self.spec_fields if getattr(spec, f) is None]
        if unset:
            raise UserError(f"{where}: a {self.name} source must set input_spec.{', input_spec.'.join(unset)}")

    def in_channels(self, spec: InputSpec) -> int:
        """What the encoder's first layer takes per position (image channels, features per step, vocabulary size)."""
        raise NotImplementedError

    def size(self, spec: InputSpec) -> int:
        """The size views and size-aware encoders work at (image side, sequence length, token length, nodes)."""
        raise NotImplementedError

    def eval_transform(self, splits: Splits) -> Callable[[Any], Any]:
        """The deterministic transform of one test sample into what the encoder reads (evaluation and probes)."""
        raise NotImplementedError

    def raw_features(self, batch: Any, max_dim: int) -> torch.Tensor:
        """(N, D) float features of a batch of evaluation inputs themselves: what the raw-input baseline probes."""
        return batch.float().flatten(1)

    def export_input(self, splits: Splits) -> dict[str, Any]:
        """What an export's config.json says about the input its encoder expects ({} where the card says nothing more)."""
        return {}

    def example_input(self, spec: InputSpec, in_channels: int) -> torch.Tensor | None:
        """One example input for tracing (TorchScript, ONNX); None where an export is not traced."""
        return None
