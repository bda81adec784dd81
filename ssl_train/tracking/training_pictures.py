"""Pictures while a run trains: the augmented views actually fed to the model (once) and an embedding map of the test
split every N epochs, as PNGs in the run directory and as images in every tracker."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch.utils.data import Subset
from torchvision.io import encode_png
from torchvision.utils import make_grid

from ssl_train.constraints import PositiveInt
from ssl_train.eval.linear_probe import extract_features
from ssl_train.run_dir import replace_atomically
from ssl_train.toolkit.pictures import embedding_map, render_scatter
from ssl_train.tracking.report import MAP_PATTERN, VIEWS_FILE
from ssl_train.tracking.trackers import log_image


def batch_view_grid(views: Sequence[torch.Tensor], mean: Sequence[float], std: Sequence[float], samples: int = 8) -> torch.Tensor:
    """A uint8 (3, H, W) grid of a training batch's views: one row per sample, one column per view (de-normalised; smaller
    multi-crop views scaled up to the first view's size)."""
    first = views[0]
    size = first.shape[-2:]
    channels = first.shape[1]
    mean_t = torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1)
    n = min(samples, first.shape[0])
    columns = []
    for view in views:
        shown = view[:n].detach().float().cpu()
        if shown.shape[-2:] != size:
            shown = F.interpolate(shown, size=tuple(size), mode="nearest")
        columns.append((shown * std_t[:, :channels] + mean_t[:, :channels]).clamp(0, 1))
    tiles = torch.stack(columns, dim=1).flatten(0, 1)  # sample-major: row i holds sample i's views
    grid = make_grid(tiles, nrow=len(views), padding=2, pad_value=1.0)
    if grid.shape[0] == 1:
        grid = grid.repeat(3, 1, 1)
    return (grid * 255).round().to(torch.uint8)


def png_bytes(image: torch.Tensor) -> bytes:
    """A uint8 (C, H, W) image as PNG file bytes, for run_dir to write without following a symbolic link."""
    return encode_png(image.cpu()).numpy().tobytes()


class TrainingPictures(pl.Callback):
    """Once, at the first training batch: `views.png`, the grid of the views the model is fed (images only). Every
    `every_n_epochs` and after the last epoch: `embedding_map-epochNNN.png`, a 2-D map (`map_method`: pca; umap when
    umap-learn is installed and map_method=auto or umap; tsne) of up to `max_points` test-split features coloured by label.
    Both go to `out_dir` and, as images, to every tracker that shows images."""

    def __init__(
        self, out_dir: str, every_n_epochs: PositiveInt = 5, map_method: str = "auto", max_points: PositiveInt = 2000, grid_samples: PositiveInt = 8
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"callbacks.pictures.every_n_epochs must be >= 1, got {every_n_epochs}")
        if map_method not in ("auto", "pca", "umap", "tsne"):
            raise ValueError(f"callbacks.pictures.map_method must be auto, pca, umap or tsne, got {map_method!r}")
        self.out_dir, self.every_n_epochs, self.map_method = Path(out_dir), every_n_epochs, map_method
        self.max_points, self.grid_samples = max_points, grid_samples
        self._views_done = False

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._views_done or not trainer.is_global_zero:
            return
        self._views_done = True
        views = batch[0] if isinstance(batch, (tuple, list)) else None
        images = [v for v in views if isinstance(v, torch.Tensor) and v.ndim == 4 and v.shape[1] in (1, 3)] if isinstance(views, (list, tuple)) else []
        splits = getattr(getattr(trainer, "datamodule", None), "splits", None)
        if not images or splits is None or (self.out_dir / VIEWS_FILE).exists():  # images only; a resumed run keeps its first grid
            return
        grid = batch_view_grid(images, splits.mean, splits.std, self.grid_samples)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        replace_atomically(self.out_dir / VIEWS_FILE, png_bytes(grid))
        log_image(trainer.loggers, "pictures/views", grid, trainer.global_step)

    @torch.no_grad()
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        last = epoch + 1 == trainer.max_epochs
        if not trainer.is_global_zero or ((epoch + 1) % self.every_n_epochs and not last):
            return
        datamodule: Any = getattr(trainer, "datamodule", None)
        if not hasattr(datamodule, "evaluation_datasets"):
            return
        with torch.random.fork_rng():  # pictures must not change the training run's random stream
            test = datamodule.evaluation_datasets()[1]
            test = Subset(test, range(min(len(test), self.max_points)))
            method: Any = pl_module.method  # an SSLModule's method
            features, labels = extract_features(method.backbone, test, datamodule.eval_batch_size, pl_module.device)
            coords, _ = embedding_map(features, self.map_method)
        picture = render_scatter(coords, labels if bool((labels >= 0).any()) else None)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        replace_atomically(self.out_dir / MAP_PATTERN.format(epoch=epoch + 1), png_bytes(picture))  # a resumed epoch's map is replaced
        log_image(trainer.loggers, "pictures/embedding_map", picture, trainer.global_step)
