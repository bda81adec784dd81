"""Methods: small nn.Modules whose forward(views, labels) returns {"loss", "features", "logs"}."""

from ssl_train.methods.distill import DistillMethod
from ssl_train.methods.siamese import SiameseMethod

__all__ = ["SiameseMethod", "DistillMethod"]
