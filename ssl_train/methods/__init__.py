"""Methods: small nn.Modules whose forward(views, labels) returns {"loss", "features", "logs"}; every `*Method` class of the
package's modules is exported here, found, not listed."""

from ssl_train.discovery import classes_in

_found = classes_in(__name__, __path__, lambda name, cls: name.endswith("Method"))
globals().update(_found)
__all__ = sorted(_found)
