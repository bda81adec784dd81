"""Integer counters (optimizer steps, queue pointers) that checkpoints keep and the training step reads without a sync."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class HostCounters(nn.Module):
    """A module whose integer counters are buffers (so checkpoints keep them and a resumed run continues its schedules)
    and also Python ints (so every read is free: `int(buffer)` on a GPU makes the host wait for all queued kernels).

    `register_counter(name)` adds the buffer `name`; `counter(name)` reads the host copy, `set_counter(name, value)`
    writes both. Loading a state_dict reads each counter back once. The counters advance the same way on every rank,
    so the host copies agree wherever the buffers do.
    """

    def __init__(self) -> None:
        super().__init__()
        self._host_counters: dict[str, int] = {}

    def register_counter(self, name: str, value: int = 0) -> None:
        self.register_buffer(name, torch.tensor(value, dtype=torch.long))
        self._host_counters[name] = value

    def counter(self, name: str) -> int:
        return self._host_counters[name]

    def set_counter(self, name: str, value: int) -> None:
        getattr(self, name).fill_(value)
        self._host_counters[name] = value

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        for name in self._host_counters:  # once per load, not per step
            self._host_counters[name] = int(getattr(self, name))
