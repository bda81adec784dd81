"""One home per kind of data: a Modality object (ssl_train.modalities.base) per kind, one module each, and this registry.

A source names its kind on `Splits.modality`; `modality(name)` gives the object that knows that kind's evaluation
transform, raw-input features, export input, encoder input (from `Splits.input_spec`), display names and what its
components read. The build-time check that data, views, encoder and method fit is in ssl_train.modalities.check.
A new kind is a module here with its Modality instance added to KINDS, its configs, and a test.
"""

from __future__ import annotations

from ssl_train.errors import UserError
from ssl_train.modalities.base import Modality
from ssl_train.modalities.graph import GRAPH
from ssl_train.modalities.image import IMAGE
from ssl_train.modalities.image_text import IMAGE_TEXT
from ssl_train.modalities.sequence import SEQUENCE
from ssl_train.modalities.text import TEXT
from ssl_train.modalities.waveform import WAVEFORM

KINDS: dict[str, Modality] = {kind.name: kind for kind in (IMAGE, SEQUENCE, WAVEFORM, GRAPH, TEXT, IMAGE_TEXT)}
MODALITIES = tuple(KINDS)  # the names, in the order error lines list them


def modality(name: str, where: str = "data") -> Modality:
    """The Modality named `name`; an unknown name is one line naming `where` it came from and the allowed ones."""
    try:
        return KINDS[name]
    except (KeyError, TypeError):
        raise UserError(f"{where}: unknown modality {name!r}; allowed: {', '.join(MODALITIES)}") from None


__all__ = ["KINDS", "MODALITIES", "Modality", "modality"]
