"""trainer=fsdp on 2 gloo CPU processes equals DDP: the same method, batch halves and steps, once under torch's
DistributedDataParallel and once sharded by ssl_train.fsdp.shard (FSDP2), give the same loss on every rank and the same
student and EMA-teacher weights after each optimizer step + EMA update (the teacher updated on its local shards). The
step is a run's: the method's configured optimizer (DINO's LARS, whose trust ratios take norms of whole parameters,
I-JEPA's AdamW, MoCo v3's SGD) at its effective learning rate, after gradient clipping at trainer.gradient_clip_val (3.0 for ViTs).

The methods are built as a run builds them (ssl_train.verify_dist_config: the composed config, seeded, one batch of real
views), in each spawned rank (a method holds local hooks that do not pickle), so every rank starts from the same weights.
"""

from __future__ import annotations

import copy
import os
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ssl_train.checkpoint_io import read_checkpoint

pytestmark = [pytest.mark.slow, pytest.mark.ddp]
pytest.importorskip("timm")
WORLD, STEPS = 2, 2
VIT = ["backbone=vit_tiny", "backbone.model_kwargs.depth=2", "augment.num_local=2"]
METHODS = {"dino": ["method=dino", *VIT], "ijepa": ["method=ijepa", *VIT[:2]], "mocov3": ["method=mocov3", *VIT[:2]]}


def _steps(method: nn.Module, call: nn.Module, cfg: Any, views: list[torch.Tensor], labels: torch.Tensor, rank: int, after_step: Any) -> list[float]:
    """STEPS optimizer steps on this rank's rows as a run takes them (the configured optimizer at its effective learning
    rate, gradients clipped by norm), each followed by the method's EMA update; the losses."""
    from ssl_train.build import instantiate

    global_batch = labels.shape[0] * WORLD
    optimizer, _, _ = instantiate("optim", cfg.optim).build(method, [], global_batch, STEPS, STEPS)
    clip = cfg.trainer.gradient_clip_val
    losses = []
    for step in range(STEPS):
        torch.manual_seed(100 * step + rank)  # the same masks / draws in both runs of this rank
        loss = call(views, labels)["loss"]
        loss.backward()
        method.on_after_backward(step, 0) if hasattr(method, "on_after_backward") else None
        if clip:
            torch.nn.utils.clip_grad_norm_([p for p in method.parameters() if p.grad is not None], clip)
        optimizer.step()
        optimizer.zero_grad()
        after_step()
        method.on_optimizer_step(step + 1, 10)
        losses.append(float(loss.detach()))
    return losses


def _worker(rank: int, cases: dict[str, list[str]], init_file: str, out: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from ssl_train.fsdp import mixed_precision_policy, reshard_all, shard
    from ssl_train.sharded_checkpoint import SHARDS_KEY, write_shards
    from ssl_train.verify_dist_config import built, training_batch

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        mesh, results = init_device_mesh("cpu", (WORLD,)), {}
        for name, overrides in cases.items():
            cfg, datamodule, method = built(overrides)
            views, labels = training_batch(datamodule)
            initial = {k: v.detach().clone() for k, v in method.state_dict().items()}
            half = labels.shape[0] // WORLD
            part = slice(rank * half, (rank + 1) * half)
            views, labels = [v[part] for v in views], labels[part]
            reference = copy.deepcopy(method)
            ddp = nn.parallel.DistributedDataParallel(reference)
            ddp_losses = _steps(reference, ddp, cfg, views, labels, rank, lambda: None)
            holder = nn.ModuleDict({"method": copy.deepcopy(method)})  # as SSLModule holds it
            wrapped = shard(holder, mesh, ["Block"], mixed_precision_policy("32-true"))
            sharded = holder["method"]
            fsdp_losses = _steps(sharded, sharded, cfg, views, labels, rank, partial(reshard_all, holder))
            shards = f"last.ckpt.shards-{STEPS}-0"  # a sharded checkpoint of the holder's weights, as trainer=fsdp writes it
            write_shards({"state_dict": get_model_state_dict(holder)}, Path(out) / name / shards)
            if rank == 0:
                torch.save({"state_dict": {}, SHARDS_KEY: shards, "global_step": STEPS}, Path(out) / name / "last.ckpt")
            teacher = {n: p for n, p in sharded.named_parameters() if not p.requires_grad and isinstance(p, DTensor) and p.ndim == 2}
            _, one = next(iter(teacher.items()))
            results[name] = {
                "ddp_losses": ddp_losses,
                "fsdp_losses": fsdp_losses,
                "ddp_state": {k: v.detach().clone() for k, v in reference.state_dict().items()},
                "fsdp_state": get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True)),
                "wrapped": wrapped,
                "initial": initial,
                "teacher_local_rows": (one.to_local().shape[0], one.shape[0]),
            }
        torch.save(results, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks() -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory(prefix="fsdp_equivalence_") as tmp:
        mp.start_processes(_worker, args=(METHODS, str(Path(tmp) / "init"), tmp), nprocs=WORLD, start_method="spawn")
        results = [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
        for name in METHODS:  # the sharded checkpoint read back whole, as export and evaluation read it
            results[0][name]["saved"] = read_checkpoint(Path(tmp) / name / "last.ckpt")["state_dict"]
        return results


def _per_rank(key: str) -> bool:
    """BatchNorm's running statistics (MoCo v3's heads): each rank's own under FSDP, overwritten with rank 0's by DDP."""
    return key.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_fsdp_loss_equals_ddp(name: str, ranks: list[dict[str, Any]]) -> None:
    for result in (r[name] for r in ranks):
        torch.testing.assert_close(torch.tensor(result["fsdp_losses"]), torch.tensor(result["ddp_losses"]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_fsdp_student_and_ema_teacher_equal_ddp(name: str, ranks: list[dict[str, Any]]) -> None:
    """Every weight after STEPS steps + EMA updates, gathered whole, equals DDP's on every rank, and so does every buffer
    (DINO's centre) but BatchNorm's running statistics, equal on rank 0 (DDP broadcasts rank 0's before each forward;
    FSDP leaves each rank its own, as both leave the batch statistics); the teacher moved (the check bites)."""
    initial = ranks[0][name]["initial"]
    teacher_keys = [k for k in initial if k.startswith(("teacher.", "target."))]
    assert teacher_keys
    for rank, result in enumerate(r[name] for r in ranks):
        assert set(result["fsdp_state"]) == set(result["ddp_state"])
        for key, expected in result["ddp_state"].items():
            if rank and _per_rank(key):
                continue
            torch.testing.assert_close(result["fsdp_state"][key], expected, atol=2e-5, rtol=1e-4, msg=key)
        moved = [k for k in teacher_keys if initial[k].is_floating_point() and not torch.equal(result["ddp_state"][k], initial[k])]
        assert len(moved) > len(teacher_keys) // 2, "the EMA update did not move the teacher"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_the_sharded_checkpoint_holds_what_ddp_saves(name: str, ranks: list[dict[str, Any]]) -> None:
    """The shards trainer=fsdp writes (sharded_checkpoint.write_shards), read back whole, hold DDP's state on rank 0 (the
    rank that writes DDP's checkpoint): every weight, and rank 0's BatchNorm statistics, not another rank's."""
    saved, expected = ranks[0][name]["saved"], ranks[0][name]["ddp_state"]
    assert set(saved) == {f"method.{key}" for key in expected}
    for key, value in expected.items():
        torch.testing.assert_close(saved[f"method.{key}"], value, atol=2e-5, rtol=1e-4, msg=key)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_teacher_is_sharded_like_its_student(name: str, ranks: list[dict[str, Any]]) -> None:
    """The teacher's blocks are FSDP units as the student's are, and each rank holds half the rows of a teacher weight."""
    result = ranks[0][name]
    wrapped = [n.removeprefix("method.") for n in result["wrapped"]]  # names under the holder, as under SSLModule
    student = sorted(n.split("backbone.", 1)[1] for n in wrapped if n.startswith("backbone.") and "blocks" in n)
    teacher = sorted(n.split(".", 2)[2] for n in wrapped if n.startswith(("teacher.backbone.", "target.backbone.", "target.encoder.")) and "blocks" in n)
    assert student and teacher == student
    local, whole = result["teacher_local_rows"]
    assert local * WORLD == whole
