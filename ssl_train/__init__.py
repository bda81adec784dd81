"""ssl_train: config-driven self-supervised pretraining with a linear-probe evaluation."""

__version__ = "0.1.0"
