"""`python -m ssl_train.verify_dist <overrides>`: do 2 gloo CPU processes holding half the batch each give the loss and
gradients of 1 process holding the whole batch? For any loss or method, built-in or a user's `_target_`.

Criterion (DDP averages parameter gradients over ranks): the mean of the ranks' losses equals the one-process loss; the
mean of the ranks' parameter gradients equals the one-process gradient; each rank's gradient w.r.t. its own input rows,
times 1 / world size, equals the one-process gradient of those rows; buffers (queues, centres) end the same everywhere.

Verdict rule. Every case runs twice: BatchNorm layers in train mode (batch statistics, as in training) and in eval mode
(running statistics: each row is computed on its own, so nothing batch-wide is left in the model).
- equal in train mode: "equal";
- different in eval mode too: the rows still meet inside the loss (negatives, a batch-wide normalisation) and the
  ranks do not see each other's: "differs: the loss is not gathered" (gather with ssl_train.dist.gather_with_grad);
- equal in eval mode only: the difference is the per-rank batch statistics: "differs: batch statistics not
  synchronised" (trainer.sync_batchnorm=true on GPUs, or backbone.norm=group);
- different in eval mode, and the one-process loss (BatchNorm in eval mode) changes with the seed on the same batch
  (random masks, dropout): "cannot compare: the loss draws random numbers per batch", since each rank draws for its half
  what one process draws for the whole batch. (Randomness that only reaches BatchNorm, MoCo v2's shuffled BN, is the
  batch-statistics case.)
Processes are spawned (a fork after torch has started threads can deadlock); the case travels to them pickled.
"""

from __future__ import annotations

import copy
import os
import pickle
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from ssl_train.errors import UserError

WORLD = 2
LOSS_ATOL, GRAD_ATOL, RTOL = 1e-5, 1e-6, 1e-4
EQUAL = "equal"
NOT_GATHERED = "differs: the loss is not gathered"
UNSYNCED_BN = "differs: batch statistics not synchronised"
RANDOM = "cannot compare: the loss draws random numbers per batch (masks, dropout), one process draws them differently"
HINTS = {
    NOT_GATHERED: "gather what the rows meet (negatives, batch-wide statistics) with ssl_train.dist.gather_with_grad",
    UNSYNCED_BN: "BatchNorm sees each rank's half: trainer.sync_batchnorm=true on GPUs, or backbone.norm=group / no BatchNorm in the head",
}


@dataclass
class Case:
    """One call to compare: `module` (a loss or a method, built once: every process starts from these weights) on the whole
    batch `inputs` (positional) and `kwargs`; every tensor with `rows` rows, also inside lists, is split across ranks."""

    module: nn.Module | None
    inputs: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    call: Callable[..., torch.Tensor] | None = None  # call(module, *inputs, **kwargs) -> scalar; default: the module's output
    rows: int | None = None  # the batch size; default: the first tensor's leading size
    rebuild: Callable[[], nn.Module] | None = None  # for a module that does not pickle: builds it again in a rank
    state: dict[str, torch.Tensor] | None = None  # the module's weights, sent with `rebuild` instead of the module


@dataclass(frozen=True)
class Verdict:
    """The outcome for one case: the verdict and the largest difference with BatchNorm in train and in eval mode."""

    name: str
    verdict: str
    train_diff: float
    eval_diff: float

    def line(self) -> str:
        """One line: name, verdict, max differences."""
        return f"{self.name}: {self.verdict} (max difference {self.train_diff:.2e}; BatchNorm in eval mode {self.eval_diff:.2e})"


def module_output(module: nn.Module, *inputs: Any, **kwargs: Any) -> torch.Tensor:
    """The module's loss: its output, or the 'loss' entry of a method's output dict."""
    out = module(*inputs, **kwargs)
    return out["loss"] if isinstance(out, dict) else out


def batch_rows(case: Case) -> int:
    """The batch size of a case: given, or the leading size of its first tensor."""
    if case.rows is not None:
        return case.rows
    found = [t for t in flat_tensors(case.inputs) + flat_tensors(list(case.kwargs.values())) if t.ndim > 0]
    if not found:
        raise UserError("verify_dist: the case has no tensor with a batch dimension to split")
    return int(found[0].shape[0])


def flat_tensors(obj: Any) -> list[torch.Tensor]:
    """Every tensor in nested lists, tuples and dicts."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in flat_tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in flat_tensors(item)]
    return []


def take_rows(obj: Any, rows: int, part: slice, leaves: list[torch.Tensor]) -> Any:
    """`obj` with every tensor of `rows` rows cut to `part` (float ones as new leaves that need gradients, kept in `leaves`)."""
    if isinstance(obj, torch.Tensor):
        if obj.ndim == 0 or obj.shape[0] != rows:
            return obj.clone()
        piece = obj[part].clone()
        if piece.is_floating_point():
            piece.requires_grad_(True)
            leaves.append(piece)
        return piece
    if isinstance(obj, (list, tuple)):
        return type(obj)(take_rows(item, rows, part, leaves) for item in obj)
    if isinstance(obj, dict):
        return {key: take_rows(item, rows, part, leaves) for key, item in obj.items()}
    return obj


def set_batchnorm_eval(module: nn.Module, eval_mode: bool) -> None:
    """BatchNorm layers read running statistics (eval) or batch statistics (train); the rest stays as built."""
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.train(not eval_mode)


def shippable(case: Case) -> Case:
    """The case as the spawned ranks get it: itself when it pickles, else without its module, which a rank rebuilds
    (case.rebuild) and loads these weights into."""
    try:
        pickle.dumps(case)
        return case
    except Exception as error:  # any pickling failure is the same problem
        if case.rebuild is None or case.module is None:
            raise UserError(f"verify_dist: the loss or method cannot be sent to the spawned processes (not picklable): {error}") from None
        return replace(case, module=None, state={k: v.detach().clone() for k, v in case.module.state_dict().items()})


def received(case: Case) -> Case:
    """A shipped case with its module again: rebuilt here with the sender's weights when it came without one."""
    if case.module is not None or case.rebuild is None:
        return case
    module = case.rebuild()
    module.load_state_dict(case.state or {})
    return replace(case, module=module, state=None)


def outcome(case: Case, part: slice, bn_eval: bool, seed: int = 0) -> dict[str, Any]:
    """Loss, gradients of the input rows and of the parameters, and buffers after one call on the rows `part`."""
    module = copy.deepcopy(case.module)
    assert module is not None, "a shipped case is received() before it runs"
    set_batchnorm_eval(module, bn_eval)
    leaves: list[torch.Tensor] = []
    rows = batch_rows(case)
    inputs = take_rows(case.inputs, rows, part, leaves)
    kwargs = take_rows(case.kwargs, rows, part, leaves)
    torch.manual_seed(seed)
    loss = (case.call or module_output)(module, *inputs, **kwargs)
    if loss.requires_grad:
        loss.backward()
    return {
        "loss": torch.as_tensor(loss.detach().float()).reshape(()),
        "inputs": [leaf.grad.clone() if leaf.grad is not None else torch.zeros_like(leaf) for leaf in leaves],
        "params": {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None},
        "state": {name: b.clone() for name, b in module.named_buffers()},
    }


def excess(actual: torch.Tensor, expected: torch.Tensor, atol: float) -> tuple[float, bool]:
    """The largest absolute difference, and whether every element is within atol + RTOL x |expected|."""
    if actual.shape != expected.shape:
        return float("inf"), False
    a, e = actual.double(), expected.double()
    gap = (a - e).abs()
    return (float(gap.max()) if gap.numel() else 0.0), bool((gap <= atol + RTOL * e.abs()).all())


def compare(single: dict[str, Any], ranks: list[dict[str, Any]]) -> tuple[float, bool]:
    """Max difference and agreement of the ranks' outcomes with the one-process outcome (the criterion of the module docstring)."""
    world = len(ranks)
    checks = [(torch.stack([r["loss"] for r in ranks]).mean(), single["loss"], LOSS_ATOL)]
    checks += [(torch.cat([r["inputs"][i] for r in ranks]) / world, single["inputs"][i], GRAD_ATOL) for i in range(len(single["inputs"]))]
    for name, grad in single["params"].items():
        rank_grads = [r["params"].get(name, torch.zeros_like(grad)) for r in ranks]
        checks.append((torch.stack(rank_grads).mean(0), grad, GRAD_ATOL))
    checks += [(r["state"][name], value.float() if value.is_floating_point() else value, GRAD_ATOL) for name, value in single["state"].items() for r in ranks]
    results = [excess(a.float() if a.is_floating_point() else a, e, tol) for a, e, tol in checks]
    return max((d for d, _ in results), default=0.0), all(ok for _, ok in results)


def _worker(rank: int, cases: dict[str, Case], init_file: str, result_dir: str) -> None:
    """One rank: its rows of every case, BatchNorm in train and in eval mode, saved for the parent."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        results = {}
        for name, case in ((name, received(case)) for name, case in cases.items()):
            per_rank = batch_rows(case) // WORLD
            part = slice(rank * per_rank, (rank + 1) * per_rank)
            results[name] = {mode: outcome(case, part, bn_eval=mode) for mode in (False, True)}
        torch.save(results, os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(cases: dict[str, Case]) -> list[dict[str, Any]]:
    """Every case on WORLD spawned gloo processes; their outcomes, rank by rank."""
    for name, case in cases.items():
        if batch_rows(case) % WORLD:
            raise UserError(f"verify_dist: {name} has a batch of {batch_rows(case)} rows, which does not split into {WORLD} equal halves")
    shipped = {name: shippable(case) for name, case in cases.items()}
    with tempfile.TemporaryDirectory(prefix="verify_dist_") as tmp:
        try:
            mp.start_processes(_worker, args=(shipped, str(Path(tmp) / "init"), tmp), nprocs=WORLD, start_method="spawn")
        except mp.ProcessRaisedException as error:
            raise UserError(f"verify_dist: a rank failed: {str(error).strip().splitlines()[-1]}") from None
        return [torch.load(Path(tmp) / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def decide(train: tuple[float, bool], evaluated: tuple[float, bool], seeded_alike: bool) -> str:
    """The verdict from the train-mode and eval-mode comparisons and the eval-mode seed check (the rule of the module docstring)."""
    if train[1]:
        return EQUAL
    if evaluated[1]:
        return UNSYNCED_BN
    return NOT_GATHERED if seeded_alike else RANDOM


def verify(cases: dict[str, Case]) -> dict[str, Verdict]:
    """Run every case on WORLD processes and in this one; the verdict of each."""
    ranks = run_ranks(cases)
    verdicts = {}
    for name, case in cases.items():
        whole = slice(None)
        single = {mode: outcome(case, whole, bn_eval=mode) for mode in (False, True)}
        reseeded = outcome(case, whole, bn_eval=True, seed=1)
        seeded_alike = excess(reseeded["loss"], single[True]["loss"], LOSS_ATOL)[1]
        train, evaluated = (compare(single[mode], [r[name][mode] for r in ranks]) for mode in (False, True))
        verdicts[name] = Verdict(name, decide(train, evaluated, seeded_alike), train[0], evaluated[0])
    return verdicts


def main(argv: list[str]) -> int:
    """The command: compose the overrides as a run would, check the loss (overrides of loss.* only) or the method."""
    from ssl_train.verify_dist_config import subject_of  # the config half: Hydra, data, build

    subject = subject_of(argv)
    name = subject.name
    case = Case(subject.module, subject.inputs, subject.kwargs, subject.call, subject.rows, subject.rebuild)
    print(f"[verify_dist] {subject.described}")
    verdict = verify({name: case})[name]
    print(f"[verify_dist] max difference {verdict.train_diff:.2e} (loss, gradients, buffers); with BatchNorm in eval mode {verdict.eval_diff:.2e}")
    print(f"[verify_dist] {name}: {verdict.verdict}" + (f" ({HINTS[verdict.verdict]})" if verdict.verdict in HINTS else ""))
    return 0 if verdict.verdict == EQUAL else 1


if __name__ == "__main__":
    import sys

    from ssl_train.cli import report_user_errors

    sys.exit(report_user_errors(lambda: main(sys.argv[1:])))
