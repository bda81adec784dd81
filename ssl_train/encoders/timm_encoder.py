"""Any timm model as an encoder (random init, nothing downloaded): ViTs at CPU sizes (patch 4 on 28-32 px), ConvNeXt, ...

Kept apart from resnet.py, which must stay torch + torchvision only (it travels as modeling.py with exports).
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from ssl_train.constraints import BelowOne, Limit, PositiveInt
from ssl_train.errors import UserError

VIT_ONLY_KWARGS = ("img_size", "patch_size", "dynamic_img_size")
# timm.create_model arguments that read or fetch weights (a pickle, the hub): refused in model_kwargs
LOADING_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir", "pretrained_strict")


def _timm() -> Any:
    try:
        import timm
    except ImportError:
        raise UserError("backbone=timm / vit_*: needs the timm package (pip install -e '.[vit]')") from None
    return timm


def close_timm_names(name: str, limit: int = 5) -> list[str]:
    """timm model names closest to a misspelled one (substring matches first, then edit distance)."""
    names = _timm().list_models()
    containing = [n for n in names if name.lower() in n][:limit]
    return containing or difflib.get_close_matches(name.lower(), names, n=limit, cutoff=0.5)


SMALL_IMAGE_OUTPUT_STRIDES = (16, 8)  # tried in turn when a CNN's default stride 32 leaves nothing of a small image


def _fits(model: nn.Module, in_channels: int, image_size: int) -> str | None:
    """None when one dry forward at the data's size works, else the first line of the error (a CNN that downsamples
    the image to nothing)."""
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, in_channels, image_size, image_size))
    except RuntimeError as error:
        return str(error).splitlines()[0]
    finally:
        model.train(was_training)
    return None


def _build_cnn(timm: Any, name: str, kwargs: dict[str, Any], in_channels: int, image_size: int) -> nn.Module:
    """A timm CNN that can encode `image_size` px images: as asked, or, when its stride-32 downsampling leaves nothing
    (ConvNeXt on 28 px), with its last stages dilated instead of strided (timm's `output_stride` 16, then 8; the weights
    are the same, the feature map stays >= 1 x 1), logged in one line. An `output_stride` the user set is kept as is."""
    model = timm.create_model(name, **kwargs)
    error = _fits(model, in_channels, image_size)
    if error is None:
        return model
    if "output_stride" not in kwargs:
        for output_stride in SMALL_IMAGE_OUTPUT_STRIDES:
            try:
                dilated = timm.create_model(name, **kwargs, output_stride=output_stride)
            except TypeError:  # the model has no output_stride (e.g. MobileNetV3)
                break
            if _fits(dilated, in_channels, image_size) is None:
                rank_zero_info(
                    f"[ssl_train] backbone.name={name!r}: stride 32 leaves nothing of {image_size} px images; built with "
                    f"output_stride={output_stride} (last stages dilated, not strided; set backbone.model_kwargs.output_stride to choose)"
                )
                return dilated
    raise UserError(
        f"backbone.name={name!r} cannot encode {image_size} px images (it downsamples them to nothing: {error}); "
        "use larger images (e.g. data=cifar10, 32 px) or a model with less downsampling (backbone.name=resnet10t)"
    )


class TimmEncoder(nn.Module):
    """A timm model by `name` without its classifier (`num_classes=0`): forward(images) -> (N, num_features) pooled
    features. Vision transformers are built for the data's image size with `patch_size` (4 for 28-32 px) and
    `dynamic_img_size`, so position embeddings are interpolated when evaluated at another size; they also expose
    their tokens (`tokens(images, keep)`), which masked modelling (MAE) needs. `drop_path_rate`: stochastic depth.
    `freeze_patch_embed`: keep the patch projection at its random init (MoCo v3's stop-grad-conv1, for stability).
    `grad_checkpointing`: timm's activation checkpointing (set_grad_checkpointing), also in `tokens`: less memory, one
    more forward of the blocks in backward.
    The wrapped model's state dict keeps timm's own key names (`timm.create_model(name, ...).load_state_dict` takes
    an export as is)."""

    modalities = ("image",)
    needs_image_size = True  # build_encoder passes the data's image size

    def __init__(
        self,
        name: str,
        in_channels: PositiveInt = 3,
        image_size: PositiveInt = 224,
        patch_size: Limit = None,
        drop_path_rate: BelowOne = 0.0,
        global_pool: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        freeze_patch_embed: bool = False,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        timm = _timm()
        if not timm.is_model(name):
            close = close_timm_names(name)
            raise UserError(
                f"backbone.name={name!r} is not a timm model"
                + (f"; close matches: {', '.join(close)}" if close else "")
                + " (python -c 'import timm; print(timm.list_models(\"*vit*\"))' lists them)"
            )
        loading = sorted(set(model_kwargs or {}) & set(LOADING_KWARGS))
        if loading:
            raise UserError(
                f"backbone.model_kwargs.{loading[0]}: timm arguments that load or fetch weights are not taken "
                "(nothing is downloaded, and files are read as data only): start from weights with backbone.weights=PATH"
            )
        kwargs: dict[str, Any] = {"pretrained": False, "num_classes": 0, "in_chans": in_channels, "drop_path_rate": drop_path_rate, **(model_kwargs or {})}
        if global_pool is not None:
            kwargs["global_pool"] = global_pool
        vit_kwargs = {"img_size": image_size, "dynamic_img_size": True, **({"patch_size": patch_size} if patch_size else {})}
        if patch_size and image_size % patch_size:
            raise UserError(f"backbone.patch_size={patch_size} does not divide the image size {image_size}: pick a divisor (4 for 28 or 32 px)")
        try:
            model = timm.create_model(name, **kwargs, **vit_kwargs)
        except TypeError as error:  # not a transformer: convnets take any image size and have no patches
            if not any(k in str(error) for k in VIT_ONLY_KWARGS):
                raise
            if patch_size:
                raise UserError(f"backbone.patch_size={patch_size}: timm model {name!r} has no patches (a CNN); set backbone.patch_size=null") from None
            model = _build_cnn(timm, name, kwargs, in_channels, image_size)
        self.model, self.name = model, name
        self.out_dim = int(model.num_features)
        self.is_vit = all(hasattr(model, a) for a in ("patch_embed", "blocks", "_pos_embed", "num_prefix_tokens"))
        self.patch_size = int(model.patch_embed.patch_size[0]) if self.is_vit else None
        self.prefers_channels_last = not self.is_vit
        if freeze_patch_embed:
            if not self.is_vit:
                raise UserError(f"backbone.freeze_patch_embed=true: timm model {name!r} has no patch embedding (a CNN); set it to false")
            model.patch_embed.requires_grad_(False)
        if grad_checkpointing:  # activation checkpointing: blocks' activations recomputed in backward, not kept (memory for compute)
            model.set_grad_checkpointing(True)

    @property
    def portable_module(self) -> nn.Module:
        """The timm model itself: exports carry timm's key names (ssl_train.portable)."""
        return self.model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def tokens(
        self, images: torch.Tensor, keep: torch.Tensor | None = None, masked: torch.Tensor | None = None, mask_token: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, prefix + K, D) output tokens of a ViT (prefix: the class/register tokens) run on the patches `keep` (N, K)
        indexes (position embeddings added before dropping the others: MAE), or on all patches; with `masked` (N, L),
        1 = masked, the embeddings of masked patches are replaced by `mask_token` (D,) before positions are added (SimMIM)."""
        if not self.is_vit:
            raise UserError(f"backbone {self.name!r} is not a vision transformer: it has no tokens to mask (use a vit_* backbone)")
        vit = self.model
        x = vit.patch_embed(images)
        if masked is not None:
            if mask_token is None:
                raise ValueError("tokens: `masked` needs a `mask_token`")
            weight = masked.reshape(x.shape[:-1])[..., None].to(x.dtype)  # x: (N, H, W, D) with dynamic_img_size, else (N, L, D)
            x = x * (1 - weight) + mask_token * weight
        x = vit._pos_embed(x)
        if keep is not None:
            prefix, patches = x[:, : vit.num_prefix_tokens], x[:, vit.num_prefix_tokens :]
            x = torch.cat([prefix, torch.gather(patches, 1, keep[..., None].expand(-1, -1, x.shape[-1]))], dim=1)
        x = vit.norm_pre(x)
        x = _timm().models.checkpoint_seq(vit.blocks, x) if vit.grad_checkpointing and torch.is_grad_enabled() else vit.blocks(x)
        return vit.norm(x)

    @torch.no_grad()
    def cls_attention(self, images: torch.Tensor) -> torch.Tensor:
        """(N, heads, grid, grid): how much the class token attends to each patch in the last block (softmax of q k^T /
        sqrt(d), the map DINO's visualize_attention shows), computed explicitly since timm's fused attention hides it."""
        if not self.is_vit or not self.model.num_prefix_tokens:
            raise UserError(f"backbone {self.name!r} has no class token to show attention of (a ViT with a class token is needed)")
        vit = self.model
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        for block in vit.blocks[:-1]:
            x = block(x)
        attention = vit.blocks[-1].attn
        n, length, _ = x.shape
        qkv = attention.qkv(vit.blocks[-1].norm1(x)).reshape(n, length, 3, attention.num_heads, attention.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attention.q_norm(qkv[0]), attention.k_norm(qkv[1])
        weights = (q[:, :, :1] * attention.scale @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, 0, vit.num_prefix_tokens :]
        grid = int(round(weights.shape[-1] ** 0.5))
        return weights.reshape(n, attention.num_heads, grid, grid)

    def stages(self, images: torch.Tensor) -> list[torch.Tensor]:
        """[the last feature map (N, C, h, w)] of a CNN (SimMIM on CNNs reads it); pool(stages(x)[-1]) == forward(x)."""
        if self.is_vit:
            raise UserError(f"backbone {self.name!r} is a vision transformer: it has tokens, not feature maps")
        return [self.model.forward_features(images)]

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The pooled features of output tokens (a ViT: class token or average, per global_pool) or of a CNN's last
        feature map, as forward() returns them."""
        return self.model.forward_head(tokens, pre_logits=True)

    def num_patches(self, image_size: int) -> int:
        return (image_size // self.patch_size) ** 2 if self.patch_size else 0
