"""SSLModule's own parts that need no Trainer: the online probe's loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ssl_train.module import online_probe_loss


def test_online_probe_loss_is_the_mean_over_labelled_rows_and_ignores_unlabelled_ones() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([2, -1, 0, 3, -1, 1])
    loss = online_probe_loss(logits, labels)
    reference = torch.stack([F.cross_entropy(logits[i : i + 1], labels[i : i + 1]) for i in (0, 2, 3, 5)]).mean()
    assert torch.allclose(loss, reference, atol=1e-6)
    loss.backward()
    assert logits.grad is not None
    assert torch.count_nonzero(logits.grad[[1, 4]]) == 0  # unlabelled rows get no gradient
    assert torch.count_nonzero(logits.grad[[0, 2, 3, 5]]) == 4 * 4


def test_online_probe_loss_of_a_batch_without_labels_is_zero_with_zero_gradient() -> None:
    logits = torch.randn(3, 5, requires_grad=True)
    loss = online_probe_loss(logits, torch.full((3,), -1))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None and torch.count_nonzero(logits.grad) == 0


def test_online_probe_loss_counts_any_negative_label_as_unlabelled() -> None:
    torch.manual_seed(1)
    logits = torch.randn(4, 3)
    assert torch.equal(online_probe_loss(logits, torch.tensor([1, -2, 0, -100])), online_probe_loss(logits, torch.tensor([1, -1, 0, -1])))
