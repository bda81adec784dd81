"""Evaluations of image-text models (CLIP): zero-shot classification from class-name prompts and image<->text retrieval.

Both read the model's `encode_image` / `encode_text` (L2-normalised embeddings) on the test pairs, embedded once:
each test image with its first caption. A model without a text tower (SimCLR, ...) is refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ssl_train.constraints import PositiveInts
from ssl_train.errors import UserError
from ssl_train.protocols import TwoTowerEvaluator

DEFAULT_TEMPLATES = ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")


class ZeroShotClassifier:
    """Zero-shot top-1/top-5 (Radford et al. 2021, sec. 3.1.4): each class is the mean of the normalised text embeddings
    of its prompts (`templates` filled with the class name, lower-cased: prompt ensembling), renormalised; an image is
    assigned the class whose embedding is closest. Chance is 1 / classes."""

    def __init__(self, templates: Sequence[str] = DEFAULT_TEMPLATES) -> None:
        if not templates or any("{}" not in t for t in templates):
            raise ValueError(f"eval.zero_shot.templates must be a non-empty list of prompts with one '{{}}' for the class name, got {list(templates)}")
        self.templates = tuple(templates)

    def evaluate_two_tower(
        self,
        image_embeddings: torch.Tensor,
        caption_embeddings: torch.Tensor,
        labels: torch.Tensor,
        embed_texts: Callable[[Sequence[str]], torch.Tensor],
        class_names: Sequence[str],
    ) -> dict[str, float]:
        classes = []
        for name in class_names:
            prompts = embed_texts([t.format(name.lower()) for t in self.templates])
            classes.append(nn.functional.normalize(prompts.mean(0), dim=0))
        scores = image_embeddings @ torch.stack(classes).T
        top = scores.topk(min(5, len(class_names)), dim=1).indices
        return {
            "top1": float((top[:, 0] == labels).float().mean()),
            "top5": float((top == labels[:, None]).any(1).float().mean()),
            "chance": 1.0 / len(class_names),
        }


def paired_recall_at_k(scores: torch.Tensor, ks: Sequence[int]) -> dict[int, float]:
    """Paired recall@k for queries (rows) whose one match is the same-index column (its pair); a candidate that ties
    the match's score (an identical caption) does not push it down. Not ssl_train.toolkit.label_recall_at_k (any
    neighbour with the query's label counts)."""
    correct = scores.diagonal()[:, None]
    rank = (scores > correct).sum(1)
    return {k: float((rank < k).float().mean()) for k in ks}


class RetrievalEvaluator:
    """Image->text and text->image recall@k over the test pairs (each image and its first caption), as CLIP reports on
    Flickr30k/COCO (there with 5 captions per image; here one)."""

    def __init__(self, ks: PositiveInts = (1, 5, 10)) -> None:
        if not ks or any(int(k) < 1 for k in ks):
            raise ValueError(f"eval.retrieval.ks must be positive integers, got {list(ks)}")
        self.ks = tuple(int(k) for k in ks)

    def evaluate_two_tower(
        self,
        image_embeddings: torch.Tensor,
        caption_embeddings: torch.Tensor,
        labels: torch.Tensor,
        embed_texts: Callable[[Sequence[str]], torch.Tensor],
        class_names: Sequence[str],
    ) -> dict[str, float]:
        scores = image_embeddings @ caption_embeddings.T
        out = {f"image_to_text_r{k}": v for k, v in paired_recall_at_k(scores, self.ks).items()}
        out.update({f"text_to_image_r{k}": v for k, v in paired_recall_at_k(scores.T, self.ks).items()})
        return out


def two_tower_evaluators(evaluators: dict[str, Any]) -> dict[str, Any]:
    return {name: e for name, e in evaluators.items() if isinstance(e, TwoTowerEvaluator)}


@torch.no_grad()
def evaluate_two_tower(
    model: nn.Module,
    test_pairs: Dataset,
    tokenizer: Any,
    class_names: Sequence[str],
    evaluators: dict[str, Any],
    device: str | torch.device = "cpu",
    batch_size: int = 512,
) -> dict[str, float]:
    """{'<name>_<metric>': value} of each image-text evaluator on `test_pairs` ((image, token ids), label) for `model`
    (its encode_image / encode_text, in eval mode; its training mode is restored)."""
    if not evaluators:
        return {}
    if not (callable(getattr(model, "encode_image", None)) and callable(getattr(model, "encode_text", None))):
        raise UserError(f"eval={','.join(evaluators)}: {'/'.join(evaluators)} need an image-text model (method=clip); this run's method has no text tower")
    towers: Any = model  # its encode_image / encode_text, checked above
    was_training = model.training
    model.eval().to(device)
    images, captions, labels = [], [], []
    for (image, tokens), label in DataLoader(test_pairs, batch_size=batch_size):
        images.append(towers.encode_image(image.to(device)).cpu())
        captions.append(towers.encode_text(tokens.to(device)).cpu())
        labels.append(label)

    def embed_texts(texts: Sequence[str]) -> torch.Tensor:
        return towers.encode_text(tokenizer.encode_batch(list(texts)).to(device)).cpu()

    image_x, caption_x, y = torch.cat(images), torch.cat(captions), torch.cat(labels)
    results = {f"{name}_{k}": v for name, e in evaluators.items() for k, v in e.evaluate_two_tower(image_x, caption_x, y, embed_texts, class_names).items()}
    model.train(was_training)
    return results
