"""MAE's decoder and I-JEPA's predictor get layer-normalised encoder tokens (the references' encoder `self.norm`),
whatever the ViT's global_pool (timm's per-token norm is a no-op with global_pool avg)."""

from __future__ import annotations

import pytest
import torch

from ssl_train.encoders.timm_encoder import TimmEncoder
from ssl_train.losses import LatentPredictionLoss, MaskedPixelLoss
from ssl_train.methods.ijepa import IJEPAMethod
from ssl_train.methods.mae import MAEMethod
from ssl_train.methods.patches import final_token_norm

pytest.importorskip("timm")


def _vit(global_pool: str) -> TimmEncoder:
    return TimmEncoder("vit_tiny_patch16_224", in_channels=1, image_size=28, patch_size=4, global_pool=global_pool, model_kwargs={"depth": 1})


def _assert_layer_normalised(tokens: torch.Tensor) -> None:
    """Per-token mean 0 and (biased) variance 1: a LayerNorm's output with its affine at init."""
    torch.testing.assert_close(tokens.mean(-1), torch.zeros(tokens.shape[:-1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(tokens.var(-1, unbiased=False), torch.ones(tokens.shape[:-1]), atol=1e-3, rtol=0)


@pytest.mark.parametrize("global_pool", ["avg", "token"])
def test_mae_decoder_and_ijepa_predictor_get_normalised_tokens(global_pool: str) -> None:
    torch.manual_seed(0)
    images = [3 * torch.randn(4, 1, 28, 28) + 1]
    seen: dict[str, torch.Tensor] = {}
    mae = MAEMethod(_vit(global_pool), torch.nn.Identity(), MaskedPixelLoss(), 28, 1, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    mae.decoder.register_forward_pre_hook(lambda m, args: seen.__setitem__("mae", args[0]))
    ijepa = IJEPAMethod(_vit(global_pool), torch.nn.Identity(), LatentPredictionLoss(), 28, 1, predictor_dim=32, predictor_depth=1, predictor_heads=2)
    ijepa.predictor.register_forward_pre_hook(lambda m, args: seen.__setitem__("ijepa", args[0]))
    for method in (mae, ijepa):
        method(images)["loss"].backward()
    raw = mae.backbone.tokens(images[0])
    if global_pool == "avg":  # timm's own per-token norm is a no-op here: without ours the decoder would get raw tokens
        assert raw.var(-1, unbiased=False).sub(1).abs().max() > 0.1
    _assert_layer_normalised(seen["mae"])
    _assert_layer_normalised(seen["ijepa"])
    norms = [m.encoder_norm for m in (mae, ijepa)]
    assert all(isinstance(n, torch.nn.LayerNorm if global_pool == "avg" else torch.nn.Identity) for n in norms)  # exactly one final norm
    if global_pool == "avg":
        assert mae.encoder_norm.weight.grad is not None and ijepa.encoder_norm.weight.grad is not None  # trained
        assert isinstance(ijepa.target["encoder_norm"], torch.nn.LayerNorm)  # the target encoder has its EMA copy
        for method in (mae, ijepa):  # timm's pooled norm, which no loss reaches, is frozen: every trained parameter got a gradient (as DDP needs)
            assert not method.backbone.model.fc_norm.weight.requires_grad
            assert [n for n, p in method.named_parameters() if p.requires_grad and p.grad is None] == []


def test_checkpoints_from_before_the_norm_still_load() -> None:
    """A state dict without the encoder_norm keys (MAE and I-JEPA checkpoints written before it existed) loads strictly,
    with the norm at its initial values; a stored norm is loaded as stored."""
    torch.manual_seed(0)
    norm = final_token_norm(_vit("avg"))
    holder = torch.nn.ModuleDict({"encoder_norm": norm})
    with torch.no_grad():
        norm.weight.fill_(3.0)
    holder.load_state_dict({}, strict=True)
    assert isinstance(norm, torch.nn.LayerNorm) and torch.equal(norm.weight, torch.full_like(norm.weight, 3.0))  # kept: nothing stored
    stored = {"encoder_norm.weight": torch.full_like(norm.weight, 2.0), "encoder_norm.bias": torch.zeros_like(norm.bias)}
    holder.load_state_dict(stored, strict=True)
    assert torch.equal(norm.weight, stored["encoder_norm.weight"])
