"""SigLIP: the loss against a transcription of the paper's Algorithm 1 and open_clip's SigLipLoss, 2 ranks = 1 process,
learnt scale and bias, and one training step of method=clip loss=siglip."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from ssl_train.losses import SigLIPLoss
from tests.optional import require


def reference_siglip(image: torch.Tensor, text: torch.Tensor, t_prime: float, b: float) -> torch.Tensor:
    """Algorithm 1 of Zhai et al. 2023, one pair at a time: -1/n sum_ij log sigmoid(z_ij (exp(t') x_i.y_j + b))."""
    n = len(image)
    x = [image[i] / image[i].norm() for i in range(n)]
    y = [text[j] / text[j].norm() for j in range(n)]
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            logit = math.exp(t_prime) * float(x[i] @ y[j]) + b
            total += -math.log(1 / (1 + math.exp(-z * logit)))
    return torch.tensor(total / n)


def test_siglip_equals_the_papers_algorithm_at_init_and_at_other_values() -> None:
    g = torch.Generator().manual_seed(0)
    image, text = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    loss = SigLIPLoss()
    assert loss.logit_scale.item() == pytest.approx(math.log(10)) and loss.logit_bias.item() == -10.0
    torch.testing.assert_close(loss(image, text), reference_siglip(image, text, math.log(10), -10.0), atol=1e-5, rtol=1e-5)
    other = SigLIPLoss(init_logit_scale=3.0, init_logit_bias=0.5)
    torch.testing.assert_close(other(image, text), reference_siglip(image, text, math.log(3.0), 0.5), atol=1e-5, rtol=1e-5)


def test_siglip_equals_open_clip_sigliploss() -> None:
    require("open_clip")
    import open_clip.loss as open_clip_loss

    g = torch.Generator().manual_seed(1)
    image, text = torch.randn(12, 16, generator=g), torch.randn(12, 16, generator=g)
    normalize = torch.nn.functional.normalize
    reference = open_clip_loss.SigLipLoss()(normalize(image, dim=1), normalize(text, dim=1), logit_scale=torch.tensor(10.0), logit_bias=torch.tensor(-10.0))
    torch.testing.assert_close(SigLIPLoss()(image, text), reference, atol=1e-5, rtol=1e-5)


def test_siglip_learns_scale_and_bias_and_clamps_the_scale() -> None:
    loss = SigLIPLoss()
    loss(torch.randn(8, 4), torch.randn(8, 4)).backward()
    assert loss.logit_scale.grad.abs() > 0 and loss.logit_bias.grad.abs() > 0
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1000))
    loss.clamp_()
    assert loss.logit_scale.exp().item() == pytest.approx(100.0)
    z = torch.randn(8, 4)
    assert loss(z, z) < loss(z, torch.randn(8, 4))  # matched pairs score lower
    assert not SigLIPLoss(learn_temperature=False).logit_bias.requires_grad
    with pytest.raises(ValueError, match="init_logit_scale"):
        SigLIPLoss(init_logit_scale=200.0)
    with pytest.raises(ValueError, match="equal shape"):
        SigLIPLoss()(torch.randn(8, 4), torch.randn(6, 4))


@pytest.mark.slow
@pytest.mark.ddp
def test_two_ranks_equal_one_process() -> None:
    """2 gloo processes with half the pairs each = 1 process with all of them: loss, input and scale/bias gradients."""
    from ssl_train.verify_dist import EQUAL, Case, verify  # the project's 2-process harness (spawned gloo ranks)

    g = torch.Generator().manual_seed(2)
    pairs = [torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)]
    verdicts = verify({"siglip": Case(SigLIPLoss(init_logit_scale=5.0, init_logit_bias=-2.0), pairs)})
    assert verdicts["siglip"].verdict == EQUAL, verdicts["siglip"].line()


def test_method_clip_with_siglip_trains_a_step_from_its_config(tmp_path: Path) -> None:
    from ssl_train.build import build
    from tests.fixtures import compose_config

    overrides = ["method=clip", "loss=siglip", "text_encoder.width=32", "text_encoder.heads=2", "text_encoder.depth=1"]
    built = build(compose_config(overrides, tmp_path))
    method, datamodule = built.method, built.datamodule
    assert type(method.loss).__name__ == "SigLIPLoss"
    images, tokens = next(iter(datamodule.train_dataloader()))[0]
    out = method([images, tokens], torch.zeros(len(images), dtype=torch.long))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and method.loss.logit_bias.grad is not None
    assert method.text_projection.weight.grad.abs().sum() > 0
    method.on_optimizer_step(1, 10)
    assert out["logs"]["logit_scale"].item() == pytest.approx(10.0)
