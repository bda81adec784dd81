"""Representation metrics on known cases: identical embeddings, uniform spread, rank, alignment."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from ssl_train.eval.metrics import alignment, normalised_std, rankme, representation_metrics, uniformity


def test_identical_embeddings_uniformity_zero_and_collapse_warning(caplog: pytest.LogCaptureFixture) -> None:
    z = torch.ones(50, 8)
    assert uniformity(z) == pytest.approx(0.0, abs=1e-6)
    with caplog.at_level(logging.WARNING):
        result = representation_metrics(z)
    assert result["collapsed"] == 1.0 and result["embedding_std"] == pytest.approx(0.0, abs=1e-6)
    assert "representation collapse" in caplog.text


def test_spread_embeddings_are_uniform_and_full_rank() -> None:
    z = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    assert uniformity(z) < -3.0  # far from 0: points spread on the sphere
    assert rankme(z) > 15.0
    assert normalised_std(z) == pytest.approx(1 / math.sqrt(16), rel=0.1)
    assert representation_metrics(z)["collapsed"] == 0.0


def test_rankme_of_low_rank_matrix() -> None:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(500, 3, generator=g) @ torch.randn(3, 32, generator=g)
    assert 2.0 < rankme(z) < 3.5


def test_alignment_matches_definition() -> None:
    a, b = torch.randn(10, 4), torch.randn(10, 4)
    na, nb = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    assert alignment(a, b) == pytest.approx(((na - nb).norm(dim=1) ** 2).mean().item(), abs=1e-6)
    assert alignment(a, 3 * a) == pytest.approx(0.0, abs=1e-6)


def _naive_lidar(features: np.ndarray, delta: float = 1e-4, eps: float = 1e-7) -> float:
    """LiDAR written out: covariances by explicit sums of outer products, eigenvalues of inv(Sigma_w) @ Sigma_b."""
    n, q, d = features.shape
    means = [features[i].mean(axis=0) for i in range(n)]
    grand = sum(means) / n
    between = sum(np.outer(m - grand, m - grand) for m in means) / n
    within = sum(np.outer(features[i, j] - means[i], features[i, j] - means[i]) for i in range(n) for j in range(q)) / (n * q)
    within = within + delta * np.eye(d)
    spectrum = np.clip(np.linalg.eigvals(np.linalg.inv(within) @ between).real, 0, None)
    p = spectrum / spectrum.sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def test_lidar_equals_the_naive_computation_and_ignores_rotations() -> None:
    from ssl_train.eval.metrics import lidar

    g = torch.Generator().manual_seed(0)
    z = torch.randn(20, 5, 6, generator=g) + 3 * torch.randn(20, 1, 6, generator=g)  # 20 surrogate classes of 5 views
    assert lidar(z) == pytest.approx(_naive_lidar(z.double().numpy()), rel=1e-6)
    rotation, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    assert lidar(z @ rotation) == pytest.approx(lidar(z), rel=1e-6)
    # class means that differ along 2 of 6 directions only: an LDA rank of about 2
    low = torch.zeros(40, 4, 6)
    low[:, :, :2] = 5 * torch.randn(40, 1, 2, generator=g)
    low += 0.1 * torch.randn(40, 4, 6, generator=g)
    assert 1.5 < lidar(low) < 2.5 and lidar(z) > 4
    with pytest.raises(ValueError, match=r"q >= 2 views"):
        lidar(torch.randn(10, 1, 4))
    diverged = z.clone()
    diverged[0, 0, 0] = float("inf")
    assert math.isnan(lidar(diverged)) and math.isnan(lidar(torch.zeros(4, 3, 5)))  # nothing to rank: NaN, never an exception


def _naive_map_at_r(queries: torch.Tensor, query_labels: torch.Tensor, gallery: torch.Tensor, gallery_labels: torch.Tensor) -> float:
    scores = []
    for query, label in zip(queries, query_labels, strict=True):
        similarity = [float(torch.nn.functional.cosine_similarity(query, item, dim=0)) for item in gallery]
        order = sorted(range(len(gallery)), key=lambda i: -similarity[i])
        r = int((gallery_labels == label).sum())
        hits, precision_sum = 0, 0.0
        for rank, index in enumerate(order[:r], start=1):
            if gallery_labels[index] == label:
                hits += 1
                precision_sum += hits / rank
        scores.append(precision_sum / r)
    return sum(scores) / len(scores)


def test_map_at_r_equals_the_naive_computation() -> None:
    from ssl_train.eval.retrieval import LabelRetrieval, map_at_r

    g = torch.Generator().manual_seed(1)
    gallery_labels, query_labels = torch.randint(0, 4, (60,), generator=g), torch.randint(0, 4, (25,), generator=g)
    centres = torch.randn(4, 8, generator=g)
    gallery = centres[gallery_labels] + 0.9 * torch.randn(60, 8, generator=g)
    queries = centres[query_labels] + 0.9 * torch.randn(25, 8, generator=g)
    expected = _naive_map_at_r(queries, query_labels, gallery, gallery_labels)
    assert 0.2 < expected < 0.95  # neither trivial nor perfect
    assert map_at_r(queries, query_labels, gallery, gallery_labels, chunk=7) == pytest.approx(expected, abs=1e-6)
    perfect = LabelRetrieval(ks=(1, 5)).evaluate_features(centres[gallery_labels], gallery_labels, centres[query_labels], query_labels, 4)
    assert perfect == {"map_at_r": pytest.approx(1.0), "recall_at_1": 1.0, "recall_at_5": 1.0}


def test_positive_pairs_and_lidar_views_of_images_of_mixed_sizes() -> None:
    """An image folder's files differ in size: with views made on the device (the hybrid path) they cannot be stacked,
    so the pairs and LiDAR views go through the per-sample pipeline instead of stopping the online evaluation."""
    from ssl_train.data.views import MultiViewTransform
    from ssl_train.encoders.resnet import SmallResNet
    from ssl_train.eval.metrics import augmented_view_features, positive_pair_features

    views = MultiViewTransform(16, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), fixed_size=False)
    assert views.on_device and views.path == "hybrid"
    images = [torch.randint(0, 256, (3, 20 + 4 * i, 24), dtype=torch.uint8) for i in range(4)]
    encoder = SmallResNet(in_channels=3, widths=(4, 8))
    z_a, z_b = positive_pair_features(encoder, views, images)
    assert z_a.shape == z_b.shape == (4, encoder.out_dim) and not torch.equal(z_a, z_b)
    assert augmented_view_features(encoder, views, images, 3).shape == (4, 3, encoder.out_dim)
