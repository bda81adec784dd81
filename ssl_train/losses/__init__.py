"""One loss per file, each a plain nn.Module documenting its paper and shapes."""

from ssl_train.losses.barlow_twins import BarlowTwinsLoss
from ssl_train.losses.clip import CLIPLoss
from ssl_train.losses.cpc import CPCLoss
from ssl_train.losses.deep_infomax import DeepInfoMaxLoss
from ssl_train.losses.dgi import DeepGraphInfomaxLoss
from ssl_train.losses.dino import DINOLoss
from ssl_train.losses.ibot import IBOTPatchLoss
from ssl_train.losses.infonce import InfoNCELoss
from ssl_train.losses.koleo import KoLeoLoss
from ssl_train.losses.latent_prediction import LatentPredictionLoss
from ssl_train.losses.margin import ContrastiveMarginLoss
from ssl_train.losses.masked_pixels import MaskedPixelLoss
from ssl_train.losses.nce import NCELoss
from ssl_train.losses.negative_cosine import NegativeCosineSimilarity
from ssl_train.losses.ntxent import NTXentLoss
from ssl_train.losses.supcon import SupConLoss
from ssl_train.losses.swav import SwAVLoss
from ssl_train.losses.triplet import TripletLoss
from ssl_train.losses.vicreg import VICRegLoss

__all__ = [
    "NTXentLoss", "InfoNCELoss", "SupConLoss", "NegativeCosineSimilarity", "BarlowTwinsLoss", "VICRegLoss",
    "DINOLoss", "SwAVLoss", "ContrastiveMarginLoss", "TripletLoss", "NCELoss", "CPCLoss", "DeepInfoMaxLoss", "DeepGraphInfomaxLoss",
    "CLIPLoss", "MaskedPixelLoss", "LatentPredictionLoss", "KoLeoLoss", "IBOTPatchLoss",
]
