"""Methods: small nn.Modules whose forward(views, labels) returns {"loss", "features", "logs"}."""

from ssl_train.methods.infomax import DeepGraphInfomaxMethod, DeepInfoMaxMethod
from ssl_train.methods.masked import IJEPAMethod, MAEMethod, SimMIMMethod
from ssl_train.methods.multicrop import DINOMethod, SwAVMethod
from ssl_train.methods.predictive_coding import CPCMethod
from ssl_train.methods.siamese import NNCLRMethod, SiameseMethod
from ssl_train.methods.target_network import TargetNetworkMethod
from ssl_train.methods.two_tower import CLIPMethod

__all__ = [
    "SiameseMethod", "NNCLRMethod", "TargetNetworkMethod", "DINOMethod", "SwAVMethod", "CPCMethod", "DeepInfoMaxMethod", "DeepGraphInfomaxMethod",
    "CLIPMethod", "MAEMethod", "SimMIMMethod", "IJEPAMethod",
]
