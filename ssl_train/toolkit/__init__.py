"""What to do with a trained encoder: export it, embed data, search neighbours, score anomalies, draw maps."""

from ssl_train.toolkit.anomaly import auroc, knn_anomaly_scores, mahalanobis_scores
from ssl_train.toolkit.export import export_backbone
from ssl_train.toolkit.pictures import embedding_map, render_scatter, view_grid
from ssl_train.toolkit.search import knn_search, label_recall_at_k

__all__ = [
    "export_backbone",
    "knn_search",
    "label_recall_at_k",
    "knn_anomaly_scores",
    "mahalanobis_scores",
    "auroc",
    "embedding_map",
    "render_scatter",
    "view_grid",
]
