"""backbone.grad_checkpointing: timm's activation checkpointing in TimmEncoder, in forward() and in tokens() (masked
modelling): the same outputs and gradients, with far fewer activations kept for backward (the blocks' are recomputed)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

pytest.importorskip("timm")
from ssl_train.encoders.timm_encoder import TimmEncoder


def _vit(checkpointing: bool) -> TimmEncoder:
    torch.manual_seed(0)
    return TimmEncoder("vit_tiny_patch16_224", in_channels=1, image_size=28, patch_size=4, model_kwargs={"depth": 2}, grad_checkpointing=checkpointing)


def _run(encoder: TimmEncoder, call: Callable[[TimmEncoder, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Output, the first block's weight gradient, and how many tensors the forward saved for backward."""
    saved = []
    images = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(1) or t, lambda t: t):
        out = call(encoder, images)
    out.square().sum().backward()
    return out.detach(), encoder.model.blocks[0].attn.qkv.weight.grad.clone(), len(saved)


@pytest.mark.parametrize("entry", ["forward", "tokens"])
def test_checkpointing_recomputes_blocks_with_the_same_result(entry: str) -> None:
    call = (lambda e, x: e(x)) if entry == "forward" else (lambda e, x: e.tokens(x))
    plain_out, plain_grad, plain_saved = _run(_vit(False), call)
    out, grad, saved = _run(_vit(True), call)
    torch.testing.assert_close(out, plain_out)
    torch.testing.assert_close(grad, plain_grad, atol=1e-6, rtol=1e-5)
    assert saved * 3 < plain_saved  # the blocks' activations were not kept
