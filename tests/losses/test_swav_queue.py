"""SwAV's queue under DDP: the same gathered queue on every rank joins Sinkhorn once, as the reference's per-rank queues."""

from __future__ import annotations

import pytest
import torch

from ssl_train.losses import SwAVLoss
from ssl_train.losses.swav import sinkhorn
from ssl_train.verify_dist import EQUAL, Case, verify

N, K, QUEUED = 8, 5, 6  # batch rows (split across 2 ranks), prototypes, queued rows (the same on every rank)


def _crops() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(N, K, generator=g) * 0.5 for _ in range(3)]


def _queue() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(QUEUED, K, generator=g) * 0.5 for _ in range(2)]


def _swav_with_queue(loss: SwAVLoss, *crops: torch.Tensor) -> torch.Tensor:
    """Module-level (pickled to the ranks): every rank scores the whole queue, as FeatureQueue holds every rank's rows."""
    return loss(list(crops), num_global=2, queue_scores=_queue())


def test_one_process_queue_extends_the_sinkhorn_batch_and_codes_only_the_batch() -> None:
    crops, queue = _crops(), _queue()
    loss = SwAVLoss()(crops, num_global=2, queue_scores=queue)
    expected = 0.0
    for i in range(2):
        codes = sinkhorn(torch.cat([crops[i], queue[i]]))[:N]  # the queue only shapes the equal partition
        expected += sum(-(codes * torch.log_softmax(crops[j] / 0.1, dim=1)).sum(1).mean() for j in range(3) if j != i)
    torch.testing.assert_close(loss, expected / 4)


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_with_the_gathered_queue_equal_one_process() -> None:
    verdict = verify({"swav_queue": Case(SwAVLoss(), _crops(), call=_swav_with_queue)})["swav_queue"]
    assert verdict.verdict == EQUAL, verdict.line()  # before: each rank added the whole queue, so Sinkhorn counted it twice
