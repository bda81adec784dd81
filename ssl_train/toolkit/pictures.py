"""Pictures of embeddings and views: a 2-D map coloured by label (PNG + TensorBoard) and a grid of augmented views."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torchvision.io import write_png
from torchvision.utils import make_grid

PALETTE = torch.tensor(
    [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ],
    dtype=torch.uint8,
)


def embedding_map(features: torch.Tensor, method: str = "auto", seed: int = 0) -> tuple[torch.Tensor, str]:
    """2-D coordinates of `features` and the method used: `pca`; `umap` (umap-learn); `tsne` (scikit-learn);
    `auto`: UMAP when umap-learn is installed, else PCA."""
    x = features.float().numpy()
    if method in ("auto", "umap"):
        try:
            import umap

            return torch.from_numpy(umap.UMAP(random_state=seed).fit_transform(x)).float(), "umap"
        except ImportError:
            if method == "umap":
                raise
    if method == "tsne":
        from sklearn.manifold import TSNE

        return torch.from_numpy(TSNE(2, random_state=seed, init="pca").fit_transform(x)).float(), "tsne"
    centred = features.float() - features.float().mean(0)
    if min(centred.shape) < 2:  # one sample (or one feature): no plane to project on; the points sit at the origin
        return torch.zeros(len(centred), 2), "pca"
    _, _, v = torch.pca_lowrank(centred, q=2, center=False)
    return centred @ v[:, :2], "pca"


def render_scatter(coords: torch.Tensor, labels: torch.Tensor | None = None, size: int = 512, dot: int = 2) -> torch.Tensor:
    """A uint8 (3, size, size) scatter plot of 2-D points on white, coloured by label (no plotting library needed)."""
    image = torch.full((3, size, size), 255, dtype=torch.uint8)
    lo, hi = coords.min(0).values, coords.max(0).values
    xy = ((coords - lo) / (hi - lo).clamp_min(1e-12) * (size - 2 * dot - 1) + dot).round().long()
    colours = PALETTE[(labels if labels is not None else torch.zeros(len(coords), dtype=torch.long)).clamp_min(0) % len(PALETTE)]
    for dx in range(-dot, dot + 1):
        for dy in range(-dot, dot + 1):
            image[:, size - 1 - (xy[:, 1] + dy), xy[:, 0] + dx] = colours.T
    return image


def save_map(features: torch.Tensor, labels: torch.Tensor | None, png_path: Path, tensorboard_dir: Path | None = None, method: str = "auto") -> str:
    """Write the embedding map as PNG (and to TensorBoard: the image and the projector); returns the method used."""
    coords, used = embedding_map(features, method)
    picture = render_scatter(coords, labels)
    write_png(picture, str(png_path))
    if tensorboard_dir is not None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(tensorboard_dir)) as writer:
            writer.add_image(f"embedding_map/{used}", picture)
            writer.add_embedding(features, metadata=labels.tolist() if labels is not None else None, tag="embeddings")
    return used


def view_grid(
    views: Callable[[torch.Tensor], Sequence[torch.Tensor]], images: Sequence[torch.Tensor], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """A uint8 grid: one row per image, the original then each of its augmented views (de-normalised, resized to the first)."""
    rows = []
    mean_t, std_t = torch.tensor(list(mean)).view(-1, 1, 1), torch.tensor(list(std)).view(-1, 1, 1)
    for image in images:
        made = [(v * std_t + mean_t).clamp(0, 1) for v in views(image)]
        size = made[0].shape[-1]
        original = torch.nn.functional.interpolate(image[None].float() / 255, size=(size, size), mode="bilinear", antialias=True)[0]
        made = [torch.nn.functional.interpolate(v[None], size=(size, size), mode="nearest")[0] for v in made]
        rows += [original] + made
    grid = make_grid(torch.stack(rows), nrow=len(rows) // len(images), padding=2, pad_value=1.0)
    if grid.shape[0] == 1:
        grid = grid.repeat(3, 1, 1)
    return (grid * 255).round().to(torch.uint8)


def heat_colours(values: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [0, 1] from (H, W) values scaled to [0, 1]: black -> red -> yellow -> white ("hot")."""
    v = (values - values.min()) / (values.max() - values.min()).clamp_min(1e-12)
    return torch.stack([(3 * v).clamp(0, 1), (3 * v - 1).clamp(0, 1), (3 * v - 2).clamp(0, 1)])


def attention_grid(images: torch.Tensor, attention: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A uint8 grid: one row per image, the image then the class token's attention averaged over heads and each head's,
    upsampled to the image (nearest: one block per patch)."""
    mean_t, std_t = torch.tensor(list(mean)).view(-1, 1, 1), torch.tensor(list(std)).view(-1, 1, 1)
    size = images.shape[-1]
    rows = []
    for image, heads in zip(images, attention, strict=True):
        shown = (image.cpu() * std_t + mean_t).clamp(0, 1)
        maps = torch.cat([heads.mean(0, keepdim=True), heads]).cpu()
        upsampled = torch.nn.functional.interpolate(maps[:, None], size=(size, size), mode="nearest")[:, 0]
        rows += [shown.expand(3, -1, -1)] + [heat_colours(m) for m in upsampled]
    grid = make_grid(torch.stack(rows), nrow=len(rows) // len(images), padding=2, pad_value=1.0)
    return (grid * 255).round().to(torch.uint8)
