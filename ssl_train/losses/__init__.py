"""One loss per file, each a plain nn.Module documenting its paper and shapes."""

from ssl_train.losses.negative_cosine import NegativeCosineSimilarity
from ssl_train.losses.ntxent import NTXentLoss

__all__ = ["NTXentLoss", "NegativeCosineSimilarity"]
