"""Two gloo processes, each with half the batch, equal one process with the whole batch: losses, gradients, queues, centres.

DDP averages parameter gradients over ranks, so the criterion is: mean over ranks of the per-rank loss equals the
single-process loss, and each rank's gradient w.r.t. its own rows, divided by the world size, equals the
single-process gradient of those rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

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

pytestmark = [pytest.mark.slow, pytest.mark.ddp]
WORLD, N, D = 2, 8, 6


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


def _ibot_call(loss: IBOTPatchLoss, student: list[torch.Tensor]) -> torch.Tensor:
    """Teacher outputs and masks made row by row from the student's (so each rank sees its rows' own), some rows unmasked."""
    return loss(student, [s.detach().flip(-1) * 2 for s in student], [s.detach()[..., 0] > 0.3 for s in student])


# name -> (loss factory given gather flag, inputs factory, call(loss, local inputs, local labels))
CASES: dict[str, tuple[Callable, Callable, Callable]] = {
    "ntxent": (lambda g: NTXentLoss(0.5, gather_distributed=g), _pair_inputs, lambda f, x, y: f(*x)),
    "dcl": (lambda g: NTXentLoss(0.5, gather_distributed=g, decoupled=True), _pair_inputs, lambda f, x, y: f(*x)),
    "infonce": (lambda g: InfoNCELoss(0.3, gather_distributed=g), _pair_inputs, lambda f, x, y: f(*x)),
    "supcon": (lambda g: SupConLoss(0.3, gather_distributed=g), _pair_inputs, lambda f, x, y: f(*x, y)),
    "barlow_twins": (lambda g: BarlowTwinsLoss(gather_distributed=g), _pair_inputs, lambda f, x, y: f(*x)),
    "vicreg": (lambda g: VICRegLoss(gather_distributed=g), _pair_inputs, lambda f, x, y: f(*x)),
    "swav": (lambda g: SwAVLoss(), _swav_inputs, lambda f, x, y: f(x, num_global=2)),
    "dino": (lambda g: DINOLoss(out_dim=5, teacher_temp=0.07), _swav_inputs, lambda f, x, y: f(x, x[:2])),
    "ibot_patch": (lambda g: IBOTPatchLoss(out_dim=5, teacher_temp=0.07), _patch_inputs, lambda f, x, y: _ibot_call(f, x)),
    "cpc": (lambda g: CPCLoss(gather_distributed=g), _sequence_inputs, lambda f, x, y: f(*x)),
    "dim_infonce": (lambda g: DeepInfoMaxLoss("infonce", gather_distributed=g), _infomax_inputs, lambda f, x, y: f(*x)),
    "dim_jsd": (lambda g: DeepInfoMaxLoss("jsd", gather_distributed=g), _infomax_inputs, lambda f, x, y: f(*x)),
    "clip": (lambda g: CLIPLoss(init_temperature=0.2, gather_distributed=g), _pair_inputs, lambda f, x, y: f(*x)),
}


def _evaluate(gather: bool, rows: slice) -> dict[str, dict]:
    """Loss value, gradients of the given rows and loss state for every case."""
    out: dict[str, dict] = {}
    for name, (make_loss, make_inputs, call) in CASES.items():
        loss_fn = make_loss(gather)
        inputs = [x[rows].clone().requires_grad_(True) for x in make_inputs()]
        value = call(loss_fn, inputs, _labels()[rows])
        value.backward()
        out[name] = {"loss": value.item(), "grads": [x.grad.clone() for x in inputs], "state": {k: v.clone() for k, v in loss_fn.state_dict().items()}}
    queue = FeatureQueue(2 * N, D)
    queue.push(_pair_inputs()[0][rows])
    out["queue"] = {"features": queue.features.clone(), "filled": int(queue.filled)}
    return out


def _worker(rank: int, init_file: str, result_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        per_rank = N // WORLD
        torch.save(_evaluate(True, slice(rank * per_rank, (rank + 1) * per_rank)), os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict]]:
    tmp = tmp_path_factory.mktemp("ddp")
    mp.start_processes(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, start_method="spawn")
    ranks = [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]
    return _evaluate(False, slice(None)), ranks


@pytest.mark.parametrize("name", sorted(CASES))
def test_loss_and_gradients_match_single_process(name: str, results: tuple[dict, list[dict]]) -> None:
    single, ranks = results
    mean_loss = sum(r[name]["loss"] for r in ranks) / WORLD
    assert mean_loss == pytest.approx(single[name]["loss"], abs=1e-5)
    for i, full_grad in enumerate(single[name]["grads"]):
        gathered = torch.cat([r[name]["grads"][i] for r in ranks]) / WORLD
        torch.testing.assert_close(gathered, full_grad, atol=1e-6, rtol=1e-4)
    for key, value in single[name]["state"].items():  # e.g. DINO's centre: all-reduced, identical to one process
        for r in ranks:
            torch.testing.assert_close(r[name]["state"][key], value)


def test_queue_push_gathers_all_ranks(results: tuple[dict, list[dict]]) -> None:
    single, ranks = results
    for r in ranks:
        torch.testing.assert_close(r["queue"]["features"], single["queue"]["features"])
        assert r["queue"]["filled"] == single["queue"]["filled"] == N
