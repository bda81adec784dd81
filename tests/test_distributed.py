"""Two gloo processes, each with half the batch, equal one process with the whole batch: losses, gradients, queues, centres.

The harness is ssl_train.verify_dist (the same checker users run on their own losses); its docstring states the criterion:
mean of the ranks' losses = the one-process loss, the ranks' input-row gradients / world size = the one-process ones,
buffers (DINO's centre, a queue) identical.
"""

from __future__ import annotations

import pytest
import torch

from ssl_train import losses
from ssl_train.losses import (
    BarlowTwinsLoss,
    CLIPLoss,
    CPCLoss,
    DeepInfoMaxLoss,
    DINOLoss,
    IBOTPatchLoss,
    InfoNCELoss,
    NTXentLoss,
    SupConLoss,
    SwAVLoss,
    VICRegLoss,
)
from ssl_train.methods.queue import FeatureQueue
from ssl_train.protocols import takes
from ssl_train.verify_dist import EQUAL, Case, Verdict, verify
from tests.fixtures import is_pair_loss

pytestmark = [pytest.mark.slow, pytest.mark.ddp]
N, D = 8, 6


def _pair_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)]


def _labels() -> torch.Tensor:
    return torch.tensor([0, 1, 2, 0, 1, 2, 0, 3])


def _swav_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return [torch.randn(N, 5, generator=g) * 0.5 for _ in range(3)]


def _sequence_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)  # latents (N, T, D) and CPC predictions (N, T, K, D)
    return [torch.randn(N, 5, D, generator=g) * 0.5, torch.randn(N, 5, 2, D, generator=g) * 0.5]


def _infomax_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(4)  # local features (N, D, L) and global vectors (N, D)
    return [torch.randn(N, D, 4, generator=g) * 0.5, torch.randn(N, D, generator=g) * 0.5]


def _patch_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(5)  # iBOT: the student's patch outputs (N, L, K) of 2 global views
    return [torch.randn(N, 4, 5, generator=g) for _ in range(2)]


def _ibot_call(loss: IBOTPatchLoss, *student: torch.Tensor) -> torch.Tensor:
    """Teacher outputs and masks made row by row from the student's (so each rank sees its rows' own), some rows unmasked."""
    return loss(list(student), [s.detach().flip(-1) * 2 for s in student], [s.detach()[..., 0] > 0.3 for s in student])


def _swav_call(loss: SwAVLoss, *crops: torch.Tensor) -> torch.Tensor:
    return loss(list(crops), num_global=2)


def _dino_call(loss: DINOLoss, *crops: torch.Tensor) -> torch.Tensor:
    return loss(list(crops), list(crops[:2]))


def _push(queue: FeatureQueue, features: torch.Tensor) -> torch.Tensor:
    """The queue case: push this rank's rows (the queue gathers every rank's), no loss."""
    queue.push(features)
    return features.sum() * 0


def _cases() -> dict[str, Case]:
    """Every loss that gathers across ranks (gather on), and MoCo's queue; the calls are module functions (pickled to the ranks)."""
    pairs = _pair_inputs()
    cases = {
        "ntxent": Case(NTXentLoss(0.5, gather_distributed=True), pairs),
        "dcl": Case(NTXentLoss(0.5, gather_distributed=True, decoupled=True), pairs),
        "infonce": Case(InfoNCELoss(0.3, gather_distributed=True), pairs),
        "supcon": Case(SupConLoss(0.3, gather_distributed=True), [*pairs, _labels()]),
        "barlow_twins": Case(BarlowTwinsLoss(gather_distributed=True), pairs),
        "vicreg": Case(VICRegLoss(gather_distributed=True), pairs),
        "swav": Case(SwAVLoss(), _swav_inputs(), call=_swav_call),
        "dino": Case(DINOLoss(out_dim=5, teacher_temp=0.07), _swav_inputs(), call=_dino_call),
        "dino_sinkhorn": Case(DINOLoss(out_dim=5, teacher_temp=0.07, centering="sinkhorn_knopp"), _swav_inputs(), call=_dino_call),
        "ibot_patch": Case(IBOTPatchLoss(out_dim=5, teacher_temp=0.07), _patch_inputs(), call=_ibot_call),
        "cpc": Case(CPCLoss(gather_distributed=True), _sequence_inputs()),
        "dim_infonce": Case(DeepInfoMaxLoss("infonce", gather_distributed=True), _infomax_inputs()),
        "dim_jsd": Case(DeepInfoMaxLoss("jsd", gather_distributed=True), _infomax_inputs()),
        "clip": Case(CLIPLoss(init_temperature=0.2, gather_distributed=True), pairs),
        "queue": Case(FeatureQueue(2 * N, D), [pairs[0]], call=_push),
    }
    return {**cases, **_other_pair_losses(pairs, {type(case.module).__name__ for case in cases.values()})}


def _other_pair_losses(pairs: list[torch.Tensor], covered: set[str]) -> dict[str, Case]:
    """Every other loss of ssl_train.losses.__all__ on two views that can gather (a new one joins without being listed)."""
    found = {}
    for name in sorted(set(losses.__all__) - covered):
        loss_class = getattr(losses, name)
        if is_pair_loss(loss_class) and takes(loss_class, "gather_distributed"):
            widths = {key: D for key in ("dim", "out_dim") if takes(loss_class, key)}
            found[name] = Case(loss_class(gather_distributed=True, **widths), pairs)
    return found


CASES = sorted(_cases())


@pytest.fixture(scope="module")
def verdicts() -> dict[str, Verdict]:
    return verify(_cases())


@pytest.mark.parametrize("name", CASES)
def test_two_ranks_equal_one_process(name: str, verdicts: dict[str, Verdict]) -> None:
    assert verdicts[name].verdict == EQUAL, verdicts[name].line()


def test_queue_push_gathers_all_ranks() -> None:
    """The queue case compares buffers, so its verdict means: every rank's queue holds the whole batch, as one process's does."""
    queue = FeatureQueue(2 * N, D)
    _push(queue, _pair_inputs()[0])
    assert int(queue.filled) == N
