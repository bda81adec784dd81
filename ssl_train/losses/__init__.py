"""One loss per file, each a plain nn.Module documenting its paper and shapes; every nn.Module of the package's
modules is exported here, found, not listed (a new loss is one new file)."""

from torch import nn

from ssl_train.discovery import classes_in

_found = classes_in(__name__, __path__, lambda name, cls: issubclass(cls, nn.Module))
globals().update(_found)
__all__ = sorted(_found)
