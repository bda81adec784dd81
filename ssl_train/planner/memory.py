"""The largest batch that fits here: forward/backward of the run's method on batches of real views doubling upward (bounded
in size and time); on a GPU until the device runs out, on the CPU extrapolated from the memory each image holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ssl_train.planner.estimate import MiB, step_memory, system_available
from ssl_train.verify_dist_config import training_batch

MAX_DOUBLINGS, MAX_STEP_S, HEADROOM = 6, 4.0, 0.9  # up to 64x the smallest batch tried; stop once a step takes 4 s; keep 10 % free


@dataclass(frozen=True)
class BatchFit:
    """The largest per-device batch that fits, and how it was found."""

    largest: int
    measured_up_to: int
    bytes_per_image: float
    available: int
    extrapolated: bool

    def describe(self) -> str:
        """How the figure was found, in a few words."""
        how = "extrapolated" if self.extrapolated else "measured"
        return f"{how}; tried up to {self.measured_up_to}: {self.bytes_per_image / MiB:.2f} MiB per image, {self.available / 2**30:.1f} GiB available"


def available_memory(device: torch.device) -> int:
    """Bytes a run could still take: free device memory on a GPU, the system's available memory on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    return system_available()


def largest_batch(built: Any, per_device: int, device: torch.device) -> BatchFit | None:
    """Search batch sizes: the method's step on real views, doubling from a quarter of the configured per-device batch; None when it cannot run."""
    try:
        views, labels = training_batch(built.datamodule)
    except Exception:  # graph data and the like: no batch of rows to grow
        return None
    method = built.method.to(device).train()
    available = available_memory(device)
    batch, measured = max(2, per_device // 4), 0
    sizes: list[tuple[int, int]] = []
    for _ in range(MAX_DOUBLINGS + 1):
        if sizes and len(sizes) >= 2:
            slope = max(1.0, (sizes[-1][1] - sizes[0][1]) / max(1, sizes[-1][0] - sizes[0][0]))
            if device.type != "cuda" and sizes[-1][1] + slope * (batch - sizes[-1][0]) > available * HEADROOM / 2:
                break  # on the CPU never go near the edge: the kernel would kill the planner
        try:
            used, seconds = step_memory(method, views, labels, batch, device)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            return BatchFit(measured, measured, sizes[-1][1] / max(1, measured) if sizes else 0.0, available, extrapolated=False)
        sizes.append((batch, used))
        measured = batch
        if seconds > MAX_STEP_S:
            break
        batch *= 2
    if len(sizes) >= 2:
        per_image = max(1.0, (sizes[-1][1] - sizes[0][1]) / (sizes[-1][0] - sizes[0][0]))
    else:
        per_image = max(1.0, sizes[-1][1] / sizes[-1][0])
    fixed = max(0.0, sizes[-1][1] - per_image * sizes[-1][0])
    largest = max(measured, int((available * HEADROOM - fixed) / per_image))
    return BatchFit(largest, measured, per_image, available, extrapolated=largest > measured)
