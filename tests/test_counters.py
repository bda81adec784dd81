"""HostCounters: integer counters kept in checkpoints and read on the host (no device sync per step)."""

from __future__ import annotations

import pytest
import torch

from ssl_train.counters import HostCounters
from ssl_train.losses.dino import DINOLoss
from ssl_train.methods.queue import FeatureQueue


def test_a_counter_is_a_buffer_and_a_host_int_and_loading_reads_it_back() -> None:
    saved = HostCounters()
    saved.register_counter("step", 3)
    saved.set_counter("step", 7)
    assert saved.counter("step") == 7 and int(saved.state_dict()["step"]) == 7
    fresh = HostCounters()
    fresh.register_counter("step")
    fresh.load_state_dict(saved.state_dict())
    assert fresh.counter("step") == 7


def test_a_resumed_dino_loss_continues_its_teacher_temperature_warm_up() -> None:
    loss = DINOLoss(out_dim=8, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10)
    loss.set_step(5)
    resumed = DINOLoss(out_dim=8, teacher_temp=0.07, warmup_teacher_temp=0.04, warmup_teacher_temp_steps=10)
    assert resumed.current_teacher_temp == pytest.approx(0.04)
    resumed.load_state_dict(loss.state_dict())
    assert resumed.current_teacher_temp == pytest.approx(0.055)


def test_a_queue_loaded_inside_a_parent_module_keeps_its_pointer_and_fill_level() -> None:
    """Loading goes through the parent's load_state_dict (as a checkpoint does): each queue reads its counters back."""
    parent = torch.nn.ModuleList([FeatureQueue(size=4, dim=2), FeatureQueue(size=4, dim=2)])
    parent[0].push(torch.ones(3, 2))
    resumed = torch.nn.ModuleList([FeatureQueue(size=4, dim=2), FeatureQueue(size=4, dim=2)])
    resumed.load_state_dict(parent.state_dict())
    assert resumed[0].counter("pointer") == 3 and resumed[0].counter("filled") == 3 and not resumed[0].full
    assert len(resumed[0].get()) == 3 and resumed[1].counter("filled") == 0
    resumed[0].push(torch.zeros(2, 2))
    assert resumed[0].full and resumed[0].counter("pointer") == 1
