"""Methods: small nn.Modules whose forward(views, labels) returns {"loss", "features", "logs"}."""

from ssl_train.methods.distill import DistillMethod
from ssl_train.methods.self_distill import DINOMethod, SwAVMethod
from ssl_train.methods.siamese import NNCLRMethod, SiameseMethod

__all__ = ["SiameseMethod", "NNCLRMethod", "DistillMethod", "DINOMethod", "SwAVMethod"]
