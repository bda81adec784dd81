"""DINOv3's Gram teacher (Siméoni et al. 2025; facebookresearch/dinov3 ssl_meta_arch.py / train.py, `gram:` config): a
frozen earlier copy of the EMA teacher's backbone whose patch-similarity matrices the student's are pulled towards."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ssl_train.methods.ema import ema_update


class GramAnchor(nn.Module):
    """The Gram anchoring term and its teacher's schedule, off (no copy, no work) at `weight` 0.

    The Gram teacher is the EMA teacher's backbone copied after `start` optimizer steps (dinov3's `it_load_ema_teacher`;
    0: at construction, the student's initial weights), then re-copied after every step count that is a multiple of
    `refresh_every` past `start` (dinov3's `rep_update` with `update_frequency`; 0: never), at most `max_updates` times
    (None: no limit). It gets no gradients and always runs in eval mode (no drop-path), as there. Before the first copy
    the term is 0. The term: `weight` x loss(student patch features, Gram teacher's patch features of the same images),
    both the backbone's normed patch tokens before any head (the reference's `patch_pre_head`, the student's masked).
    """

    # buffers (register_buffer below): in the state_dict, so a resumed run keeps its Gram teacher's schedule
    loaded: torch.Tensor
    updates: torch.Tensor

    def __init__(self, teacher_backbone: nn.Module, loss: nn.Module | None, weight: float, start: int, refresh_every: int, max_updates: int | None) -> None:
        super().__init__()
        if weight < 0 or start < 0 or refresh_every < 0 or (max_updates is not None and max_updates < 0):
            raise ValueError(
                f"method.gram_weight, gram_start, gram_refresh_every must be >= 0 and gram_max_updates >= 0 or null, "
                f"got {weight}, {start}, {refresh_every}, {max_updates}"
            )
        if weight > 0 and loss is None:
            raise ValueError("method.gram_weight > 0 needs method.gram_loss (a GramLoss)")
        self.weight, self.start, self.refresh_every, self.max_updates = weight, start, refresh_every, max_updates
        self.loss = loss
        self.backbone: Any = copy.deepcopy(teacher_backbone).requires_grad_(False).eval() if weight > 0 else None
        kept = weight > 0  # off: nothing in the state_dict, so checkpoints written without Gram anchoring load as before
        self.register_buffer("loaded", torch.tensor(weight > 0 and start == 0), persistent=kept)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long), persistent=kept)

    def train(self, mode: bool = True) -> GramAnchor:
        super().train(mode)
        if self.backbone is not None:
            self.backbone.eval()
        return self

    def due(self, step: int) -> bool:
        """Whether the Gram teacher is (re)loaded after optimizer step count `step`."""
        if self.backbone is None:
            return False
        if step == self.start:
            return True
        refresh = step > self.start and self.refresh_every > 0 and step % self.refresh_every == 0
        return refresh and (self.max_updates is None or int(self.updates) < self.max_updates)

    @torch.no_grad()
    def follow(self, step: int, teacher_backbone: nn.Module) -> None:
        """After optimizer step count `step`: copy the EMA teacher's backbone in when the schedule says so."""
        if not self.due(step):
            return
        ema_update(self.backbone, teacher_backbone, 0.0)  # dinov3's update_gram(m=0): a plain copy
        if step != self.start:
            self.updates.add_(1)
        self.loaded.fill_(True)

    def add_to(self, loss: torch.Tensor, student_patches: torch.Tensor, images: torch.Tensor, logs: dict) -> torch.Tensor:
        """loss + weight x GramLoss(student patches (B, P, D), the Gram teacher's on `images`); logged as `gram`."""
        if self.backbone is None or self.loss is None or not bool(self.loaded):
            return loss
        with torch.no_grad():
            tokens = self.backbone.tokens(images)
            teacher_patches = tokens[:, self.backbone.model.num_prefix_tokens :]
        gram = self.loss(student_patches, teacher_patches)
        logs["gram"] = gram.detach()  # a tensor: no sync per step
        return loss + self.weight * gram
