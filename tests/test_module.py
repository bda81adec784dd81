"""SSLModule's own parts that need no Trainer: the online probe's loss."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F

from ssl_train import module
from ssl_train.build import build
from ssl_train.metrics import PROBE_ONLINE_LOSS, PROBE_ONLINE_TOP1, TRAIN_LOSS
from ssl_train.module import online_probe_loss
from tests.fixtures import compose_config


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


STEP_KEYS = (TRAIN_LOSS, PROBE_ONLINE_LOSS, PROBE_ONLINE_TOP1)


def _logged_step_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, through_self_log: bool) -> tuple[list[dict[str, str]], dict[str, float]]:
    """The metrics.csv rows holding train/loss of a tiny SimCLR run (4 optimizer steps of 2 batches, logging every 2),
    and the step values in trainer.callback_metrics after it."""
    if through_self_log:  # Lightning's own path, which publish_step_values replaced: one self.log per key
        monkeypatch.setattr(module, "publish_step_values", lambda trainer, values: [trainer.lightning_module.log(k, v) for k, v in values.items()])
    cfg = compose_config(
        [
            "method=simclr",
            "logger=csv",
            "data.source.train_limit=256",
            "trainer.limit_train_batches=8",
            "trainer.accumulate_grad_batches=2",
            "trainer.log_every_n_steps=2",
        ],
        tmp_path,
    )
    cfg.eval = None  # the rows of training only
    pl.seed_everything(0, verbose=False)
    built = build(cfg)
    built.trainer.fit(built.module, datamodule=built.datamodule)
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get(TRAIN_LOSS)]
    return rows, {key: float(built.trainer.callback_metrics[key]) for key in STEP_KEYS}


def test_step_values_reach_the_loggers_as_self_log_would_write_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """publish_step_values writes the same rows as Lightning's self.log (same steps, epoch, keys and values), once per
    logging step under gradient accumulation, and leaves the same values in callback_metrics (the progress bar and
    history read them there)."""
    ours, our_callback_metrics = _logged_step_rows(tmp_path / "ours", monkeypatch, through_self_log=False)
    theirs, their_callback_metrics = _logged_step_rows(tmp_path / "self_log", monkeypatch, through_self_log=True)
    keys = [*STEP_KEYS, "step", "epoch"]
    assert [row["step"] for row in ours] == ["1", "3"]  # optimizer steps 2 and 4 (Lightning counts from 0), not each batch
    assert [{k: row[k] for k in keys} for row in ours] == [{k: row[k] for k in keys} for row in theirs]
    assert our_callback_metrics == their_callback_metrics == {key: float(ours[-1][key]) for key in STEP_KEYS}


def test_publish_step_values_copies_all_tensors_to_the_host_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors (of any shape with one element) and plain numbers alike reach callback_metrics and the connector's
    log_metrics as 0-d tensors on the host, through one tolist and no item per key (each is a sync on a GPU)."""

    class Connector:
        logged: dict[str, torch.Tensor] = {}

        def log_metrics(self, metrics: dict[str, torch.Tensor]) -> None:
            self.logged = metrics

    class Trainer:
        callback_metrics: dict[str, torch.Tensor] = {}
        _logger_connector = Connector()

    copies: list[str] = []
    for name in ("tolist", "item", "__float__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _name=name, _original=original: copies.append(_name) or _original(self, *a))
    trainer = Trainer()
    module.publish_step_values(trainer, {"train/loss": torch.tensor(2.5), "train/momentum": 0.99, "probe/top1": torch.tensor([0.25])})  # type: ignore[arg-type]
    assert copies == ["tolist"]
    monkeypatch.undo()
    expected = pytest.approx({"train/loss": 2.5, "train/momentum": 0.99, "probe/top1": 0.25})
    assert {k: float(v) for k, v in trainer._logger_connector.logged.items()} == expected
    assert {k: float(v) for k, v in trainer.callback_metrics.items()} == expected
    assert all(v.device.type == "cpu" and v.ndim == 0 for v in trainer.callback_metrics.values())
