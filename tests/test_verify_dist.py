"""ssl_train.verify_dist: a loss that forgets to gather its negatives is caught, NT-Xent passes, per-rank BatchNorm and
random draws get their own verdicts, and a bad override is one line. The classes here are what a user would write; the
spawned ranks import them from this module."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ssl_train.losses import NTXentLoss
from ssl_train.verify_dist import EQUAL, NOT_GATHERED, RANDOM, UNSYNCED_BN, Case, decide, verify
from ssl_train.verify_dist_config import loss_only
from tests.fixtures import REPO


class ForgetfulNTXent(nn.Module):
    """NT-Xent written plainly, negatives from this process only: right in one process, wrong under DDP."""

    def __init__(self, temperature: float = 0.5, **unused: object) -> None:  # takes the ntxent node's other keys
        super().__init__()
        self.temperature = temperature

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        z = F.normalize(torch.cat([z_a, z_b]), dim=1)
        logits = (z @ z.T / self.temperature).fill_diagonal_(float("-inf"))
        n = len(z_a)
        targets = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return F.cross_entropy(logits, targets)


class BatchNormThenNTXent(nn.Module):
    """A gathered NT-Xent after a BatchNorm layer: right but for the per-rank batch statistics."""

    def __init__(self) -> None:
        super().__init__()
        self.norm, self.loss = nn.BatchNorm1d(6), NTXentLoss(0.5, gather_distributed=True)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return self.loss(self.norm(z_a), self.norm(z_b))


class DropoutThenNTXent(nn.Module):
    """A gathered NT-Xent after dropout: a random draw per row that no split reproduces."""

    def __init__(self) -> None:
        super().__init__()
        self.drop, self.loss = nn.Dropout(0.5), NTXentLoss(0.5, gather_distributed=True)

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        return self.loss(self.drop(z_a), self.drop(z_b))


def _pairs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)]


def test_verdict_rule() -> None:
    """equal in train mode wins; equal in eval mode: batch statistics; else random draws, or a loss not gathered."""
    assert decide((1e-7, True), (1e-7, True), seeded_alike=True) == EQUAL
    assert decide((0.3, False), (1e-7, True), seeded_alike=True) == UNSYNCED_BN
    assert decide((0.3, False), (1e-7, True), seeded_alike=False) == UNSYNCED_BN  # MoCo v2's shuffled BatchNorm
    assert decide((0.3, False), (0.3, False), seeded_alike=True) == NOT_GATHERED
    assert decide((0.3, False), (0.3, False), seeded_alike=False) == RANDOM


def test_loss_only_overrides_check_the_loss() -> None:
    assert loss_only(["loss._target_=my_pkg.MyLoss", "loss.temperature=0.2"]) and loss_only(["loss=dcl"])
    assert not loss_only(["method=simclr"]) and not loss_only(["loss=dcl", "backbone.widths=[8]"]) and not loss_only([])


def test_bad_override_is_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "ssl_train.verify_dist", "method=no_such_method"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["ssl_train error: overrides method=no_such_method: In 'train': Could not find 'method/no_such_method'"]


@pytest.mark.slow
@pytest.mark.ddp
def test_forgotten_gather_caught_and_ntxent_passes() -> None:
    verdicts = verify(
        {
            "forgetful": Case(ForgetfulNTXent(), _pairs()),
            "ntxent": Case(NTXentLoss(0.5, gather_distributed=True), _pairs()),
            "batchnorm": Case(BatchNormThenNTXent(), _pairs()),
            "dropout": Case(DropoutThenNTXent(), _pairs()),
        }
    )
    assert verdicts["forgetful"].verdict == NOT_GATHERED and verdicts["forgetful"].eval_diff > 1e-3
    assert verdicts["ntxent"].verdict == EQUAL and verdicts["ntxent"].train_diff < 1e-5
    assert verdicts["batchnorm"].verdict == UNSYNCED_BN
    assert verdicts["dropout"].verdict == RANDOM


@pytest.mark.slow
@pytest.mark.ddp
@pytest.mark.parametrize(
    ("override", "verdict", "code"),
    [
        ("loss._target_=tests.test_verify_dist.ForgetfulNTXent", NOT_GATHERED, 1),
        ("loss=ntxent", EQUAL, 0),
    ],
)
def test_command_on_a_users_loss(override: str, verdict: str, code: int) -> None:
    """The command composes the run's config with the user's `_target_` and checks it on what SimCLR hands its loss."""
    done = subprocess.run([sys.executable, "-m", "ssl_train.verify_dist", override], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == code, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith(f"[verify_dist] loss {'tests.test_verify_dist.ForgetfulNTXent' if code else 'ssl_train.losses.NTXentLoss'}: {verdict}")
