"""CLIP: the loss against open_clip's, the temperature clip, image-caption sources, pair views, zero-shot and retrieval."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
from torchvision.io import write_png

from ssl_train.data.caption_views import ImageCaptionViews
from ssl_train.data.captions import CLASS_PHRASES, CaptionedFashionMNIST, CaptionFolder, CaptionTable
from ssl_train.data.datasets import FASHION_MNIST_CLASSES
from ssl_train.data.tokenizers import ByteTokenizer
from ssl_train.errors import UserError
from ssl_train.eval.zero_shot import RetrievalEvaluator, ZeroShotClassifier, paired_recall_at_k
from ssl_train.losses import CLIPLoss
from tests.optional import require


def test_clip_loss_equals_open_clip_cliploss_on_the_same_inputs() -> None:
    require("open_clip")
    import open_clip.loss as open_clip_loss

    torch.manual_seed(0)
    image, text = torch.randn(12, 16), torch.randn(12, 16)
    ours = CLIPLoss(init_temperature=0.07)
    reference = open_clip_loss.ClipLoss()(
        torch.nn.functional.normalize(image, dim=1), torch.nn.functional.normalize(text, dim=1), logit_scale=torch.tensor(1 / 0.07)
    )
    assert torch.allclose(ours(image, text), reference, atol=1e-5)


def test_clip_temperature_is_learnt_and_clipped_at_100() -> None:
    loss = CLIPLoss(init_temperature=0.07)
    assert loss.logit_scale.exp().item() == pytest.approx(1 / 0.07)
    value = loss(torch.randn(8, 4), torch.randn(8, 4))
    value.backward()
    assert loss.logit_scale.grad is not None and loss.logit_scale.grad.abs() > 0
    with torch.no_grad():
        loss.logit_scale.fill_(math.log(1000))
    loss.clamp_()
    assert loss.logit_scale.exp().item() == pytest.approx(100.0)
    assert not CLIPLoss(learn_temperature=False).logit_scale.requires_grad
    with pytest.raises(ValueError, match="init_temperature"):
        CLIPLoss(init_temperature=0.001, max_logit_scale=100)


def test_embedded_pairs_carry_synthetic_captions_naming_the_class() -> None:
    splits = CaptionedFashionMNIST(captions_per_image=3, train_limit=200, test_limit=50).load()
    assert splits.modality == "image_text" and splits.class_names == FASHION_MNIST_CLASSES and splits.input_spec.channels == 1
    for i in range(50):
        (image, captions), label = splits.train[i]
        assert image.shape == (1, 28, 28) and image.dtype == torch.uint8 and len(captions) == 3
        assert all(any(phrase in c for phrase in CLASS_PHRASES[FASHION_MNIST_CLASSES[label]]) for c in captions)
    assert splits.tokenizer.vocab_size == ByteTokenizer.vocab_size


def _write_images(folder: Path, names: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        write_png(torch.full((3, 8, 8), 20 * i, dtype=torch.uint8), str(folder / f"{name}.png"))


def test_caption_folder_pairs_images_with_their_txt_and_counts_the_rest(tmp_path: Path) -> None:
    _write_images(tmp_path / "cats", ["a", "b", "c"])
    _write_images(tmp_path / "dogs", ["d", "e", "f"])
    for name, folder in (("a", "cats"), ("b", "cats"), ("d", "dogs"), ("e", "dogs"), ("f", "dogs")):
        (tmp_path / folder / f"{name}.txt").write_text(f"a photo of {name}\nanother caption of {name}\n")
    (tmp_path / "dogs" / "f.txt").write_bytes(b"\xff\xfe not utf-8")
    splits = CaptionFolder(str(tmp_path), image_size=8, test_fraction=0.25).load()
    pairs = [splits.train[i] for i in range(len(splits.train))] + [splits.test[i] for i in range(len(splits.test))]
    assert len(pairs) == 4 and splits.class_names == ("cats", "dogs")  # c: no caption file, f: caption not UTF-8
    for (image, captions), label in pairs:
        assert image.shape == (3, 8, 8) and captions[1].startswith("another caption") and label == (captions[0][-1] in "def")
    with pytest.raises(UserError, match="does not exist"):
        CaptionFolder(str(tmp_path / "missing")).load()


def test_caption_table_groups_captions_by_image_and_skips_missing_files(tmp_path: Path) -> None:
    _write_images(tmp_path / "img", ["x", "y", "z"])
    table = tmp_path / "pairs.csv"
    table.write_text(
        "image,caption,label\nimg/x.png,a red square,red\nimg/x.png,a crimson block,red\nimg/y.png,a blue one,blue\n"
        "img/gone.png,lost,blue\nimg/z.png,,blue\nimg/z.png,a green tile,green\n"
    )
    splits = CaptionTable(str(table), label_column="label", image_size=8, test_fraction=0.3).load()
    pairs = {tuple(c): label for (_, c), label in [splits.train[i] for i in range(len(splits.train))] + [splits.test[i] for i in range(len(splits.test))]}
    assert pairs == {("a red square", "a crimson block"): 2, ("a blue one",): 0, ("a green tile",): 1}  # labels in sorted order
    assert splits.class_names == ("blue", "green", "red")


def test_image_caption_views_make_one_image_view_and_one_random_caption() -> None:
    random.seed(0)
    views = ImageCaptionViews(ByteTokenizer(32), size=28, mean=(0.5,), std=(0.25,))
    image = torch.randint(0, 255, (1, 28, 28), dtype=torch.uint8)
    drawn = {ByteTokenizer(32).decode(views((image, ("first", "second")))[1]) for _ in range(20)}
    assert drawn == {"first", "second"}
    view, tokens = views((image, ("only",)))
    assert view.shape == (1, 28, 28) and view.dtype == torch.float32 and tokens.shape == (32,)
    assert views.recipe.crop_scale == (0.9, 1.0) and views.recipe.jitter_prob == 0.0


def test_zero_shot_picks_the_class_whose_prompts_match_and_reports_chance() -> None:
    names = ["cat", "dog", "car"]
    axes = {n: torch.eye(3)[i] for i, n in enumerate(names)}

    def embed_texts(texts: list[str]) -> torch.Tensor:  # a text's embedding: the axis of the class it names
        return torch.stack([axes[next(n for n in names if n in t)] for t in texts])

    images = torch.nn.functional.normalize(torch.tensor([[1.0, 0.1, 0], [0.2, 1.0, 0], [0, 0.1, 1.0], [0, 1.0, 0.2]]), dim=1)
    result = ZeroShotClassifier(["a photo of a {}.", "a {}"]).evaluate_two_tower(images, images, torch.tensor([0, 1, 2, 2]), embed_texts, names)
    assert result == {"top1": 0.75, "top5": 1.0, "chance": pytest.approx(1 / 3)}
    with pytest.raises(ValueError, match="one '\\{\\}'"):
        ZeroShotClassifier(["no placeholder"])


def test_paired_recall_at_k_ranks_the_true_pair_and_lets_identical_captions_tie() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.0], [0.8, 0.5, 0.5], [0.3, 0.9, 0.1]])  # query 1 ties with 2; query 2's match ranks 3rd
    assert paired_recall_at_k(scores, (1, 2, 3)) == {1: pytest.approx(1 / 3), 2: pytest.approx(2 / 3), 3: 1.0}
    out = RetrievalEvaluator((1, 2)).evaluate_two_tower(torch.eye(2), torch.eye(2), torch.zeros(2), None, [])
    assert out == {"image_to_text_r1": 1.0, "image_to_text_r2": 1.0, "text_to_image_r1": 1.0, "text_to_image_r2": 1.0}


def _build(overrides: list[str], tmp_path: Path):
    from ssl_train.build import build
    from tests.fixtures import compose_config

    return build(compose_config(overrides, tmp_path))


def test_clip_builds_two_towers_trains_a_step_and_is_evaluated_zero_shot(tmp_path: Path) -> None:
    from ssl_train.eval.zero_shot import ZeroShotClassifier, evaluate_two_tower

    built = _build(["method=clip", "text_encoder.width=32", "text_encoder.heads=2", "text_encoder.depth=1"], tmp_path)
    method, datamodule = built.method, built.datamodule
    assert type(method).__name__ == "CLIPMethod" and method.text_encoder.vocab_size == ByteTokenizer.vocab_size
    images, tokens = next(iter(datamodule.train_dataloader()))[0]
    assert images.shape == (32, 1, 28, 28) and tokens.shape == (32, 128) and tokens.dtype == torch.long
    out = method([images, tokens], torch.zeros(32, dtype=torch.long))
    out["loss"].backward()
    assert method.loss.logit_scale.grad is not None and method.text_projection.weight.grad.abs().sum() > 0
    metrics = evaluate_two_tower(
        method, datamodule.test_pairs(), datamodule.splits.tokenizer, datamodule.splits.class_names, {"zero_shot": ZeroShotClassifier()}
    )
    assert metrics["zero_shot_chance"] == pytest.approx(0.1) and method.training
    # the same top-1 computed here, one prompt and one image at a time: a class is the renormalised mean of its 3 prompts'
    # normalised text embeddings, an image takes the class of highest cosine
    tokenizer, names = datamodule.splits.tokenizer, datamodule.splits.class_names
    method.eval()
    with torch.no_grad():
        classes = []
        for name in names:
            prompts = [
                torch.nn.functional.normalize(method.encode_text(tokenizer.encode_batch([template.format(name.lower())]))[0], dim=0)
                for template in ("a photo of a {}.", "a picture of a {}.", "an image of a {}.")
            ]
            classes.append(torch.nn.functional.normalize(torch.stack(prompts).mean(0), dim=0))
        pairs = datamodule.test_pairs()
        hits = [
            int(torch.argmax(classes_x @ torch.nn.functional.normalize(method.encode_image(image[None])[0], dim=0))) == int(label)
            for classes_x in [torch.stack(classes)]
            for (image, _), label in (pairs[i] for i in range(len(pairs)))
        ]
    method.train()
    assert len(hits) == 64 and metrics["zero_shot_top1"] == pytest.approx(sum(hits) / len(hits))
    assert metrics["zero_shot_top1"] <= metrics["zero_shot_top5"]
    probe_x, _ = datamodule.evaluation_datasets()[1][0]
    assert probe_x.shape == (1, 28, 28) and probe_x.dtype == torch.float32  # the image probes read the image of a pair


def test_zero_shot_on_a_model_without_a_text_tower_is_refused_in_one_line(tmp_path: Path) -> None:
    from ssl_train.eval.zero_shot import ZeroShotClassifier, evaluate_two_tower

    built = _build([], tmp_path)
    with pytest.raises(UserError, match="need an image-text model"):
        evaluate_two_tower(built.method, [], None, [], {"zero_shot": ZeroShotClassifier()})
