"""Hard-negative weighting (HCL) against the reference estimator, and the m-per-class sampler for metric learning."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from ssl_train.data.sampling import MPerClassSampler
from ssl_train.losses import InfoNCELoss, NTXentLoss


def hcl_reference(out_1: torch.Tensor, out_2: torch.Tensor, tau_plus: float, beta: float, temperature: float) -> torch.Tensor:
    """joshr17/HCL image/main.py `criterion` (estimator='hard'), on normalised projections, transcribed."""
    batch_size = out_1.shape[0]
    out = torch.cat([out_1, out_2], dim=0)
    neg = torch.exp(torch.mm(out, out.t().contiguous()) / temperature)
    mask = torch.ones((batch_size, 2 * batch_size), dtype=torch.bool)
    for i in range(batch_size):
        mask[i, i] = 0
        mask[i, i + batch_size] = 0
    mask = torch.cat((mask, mask), 0)
    neg = neg.masked_select(mask).view(2 * batch_size, -1)
    pos = torch.exp(torch.sum(out_1 * out_2, dim=-1) / temperature)
    pos = torch.cat([pos, pos], dim=0)
    n = batch_size * 2 - 2
    imp = (beta * neg.log()).exp()
    reweight_neg = (imp * neg).sum(dim=-1) / imp.mean(dim=-1)
    ng = (-tau_plus * n * pos + reweight_neg) / (1 - tau_plus)
    ng = torch.clamp(ng, min=n * math.e ** (-1 / temperature))
    return (-torch.log(pos / (pos + ng))).mean()


@pytest.mark.parametrize(("tau_plus", "beta", "temperature"), [(0.1, 1.0, 0.5), (0.0, 0.5, 0.2), (0.05, 2.0, 0.5)])
def test_ntxent_with_hard_negatives_equals_the_hcl_reference(tau_plus: float, beta: float, temperature: float) -> None:
    torch.manual_seed(0)
    a, b = torch.randn(10, 8), torch.randn(10, 8)
    ours = NTXentLoss(temperature, debiased_tau_plus=tau_plus, hard_negative_beta=beta)(a, b)
    reference = hcl_reference(F.normalize(a, dim=1), F.normalize(b, dim=1), tau_plus, beta, temperature)
    assert torch.allclose(ours, reference, rtol=1e-4)


def test_hard_negative_weighting_raises_the_loss_of_close_negatives_and_is_off_at_zero() -> None:
    torch.manual_seed(1)
    q, k = torch.randn(12, 8), torch.randn(12, 8)
    plain = InfoNCELoss(0.2)(q, k)
    assert torch.allclose(InfoNCELoss(0.2, hard_negative_beta=0.0)(q, k), plain)
    assert InfoNCELoss(0.2, hard_negative_beta=1.0)(q, k) > plain  # close negatives weigh more than the mean: a larger denominator
    # InfoNCE's HCL: each query's negatives weighted exp(beta s) / mean exp(beta s), by a per-row loop
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).T / 0.2
    rows = []
    for i in range(12):
        negatives = torch.cat([logits[i, :i], logits[i, i + 1 :]])
        weights = (1.0 * negatives).exp() / (1.0 * negatives).exp().mean()
        rows.append(-logits[i, i] + torch.log(logits[i, i].exp() + (weights * negatives.exp()).sum()))
    assert torch.allclose(InfoNCELoss(0.2, hard_negative_beta=1.0)(q, k), torch.stack(rows).mean(), rtol=1e-5)
    with pytest.raises(ValueError, match="hard_negative_beta must be >= 0"):
        NTXentLoss(0.5, hard_negative_beta=-1)


def _labels(n_classes: int = 6, per_class: int = 10) -> torch.Tensor:
    return torch.arange(n_classes).repeat_interleave(per_class)


def test_m_per_class_batches_hold_batch_over_m_classes_m_times_each() -> None:
    labels = _labels()
    sampler = MPerClassSampler(TensorDataset(labels), labels, m=4, batch_size=12, seed=0)
    order = list(sampler)
    assert len(order) == len(sampler) == (60 // 12) * 12
    for start in range(0, len(order), 12):
        counts = Counter(labels[order[start : start + 12]].tolist())
        assert len(counts) == 3 and set(counts.values()) == {4}
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new draw per epoch, fixed by (seed, epoch)
    sampler.set_epoch(0)
    assert list(sampler) == order


def test_m_per_class_shards_each_global_batch_into_balanced_device_batches() -> None:
    labels = _labels()
    single = MPerClassSampler(TensorDataset(labels), labels, m=2, batch_size=8, seed=3, num_replicas=2, rank=0)
    other = MPerClassSampler(TensorDataset(labels), labels, m=2, batch_size=8, seed=3, num_replicas=2, rank=1)
    mine, theirs = list(single), list(other)
    assert len(mine) == len(theirs) == (60 // 16) * 8
    for start in range(0, len(mine), 8):
        for part in (mine[start : start + 8], theirs[start : start + 8]):
            assert set(Counter(labels[part].tolist()).values()) == {2} and len(set(labels[part].tolist())) == 4
    single.resume_at(0, 1)
    assert list(single) == mine[8:]  # a resumed run continues after the batches it already trained on


def test_m_per_class_refuses_what_cannot_be_balanced() -> None:
    labels = _labels(n_classes=2)
    with pytest.raises(ValueError, match="must divide"):
        MPerClassSampler(TensorDataset(labels), labels, m=3, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="needs 4 classes, the data has 2"):
        MPerClassSampler(TensorDataset(labels), labels, m=2, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="labelled"):
        MPerClassSampler(TensorDataset(labels), -torch.ones(20, dtype=torch.long), m=2, batch_size=4, seed=0)
