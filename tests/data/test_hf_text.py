"""A Hugging Face model from a local folder (tokenizer=hf, backbone=hf_text): ids, pooling, weights, runs, errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ssl_train.data.tokenizers import PAD, HFTokenizer, hf_tokenizer
from ssl_train.errors import DataNotFoundError, UserError
from tests.fixtures import compose_config, make_hf_model
from tests.optional import require

require("transformers")
import transformers  # noqa: E402


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_hf_model(tmp_path_factory.mktemp("hf") / "tiny_bert")


def test_hf_tokenizer_shifts_the_models_ids_by_three_and_pads_with_zero(hf_dir: Path) -> None:
    reference = transformers.AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    tokenizer = hf_tokenizer(path=str(hf_dir), max_length=12)
    ids = tokenizer("the animal is a person")
    expected = reference("the animal is a person")["input_ids"]  # [CLS] ... [SEP], the model's own framing
    assert ids[: len(expected)].tolist() == [i + 3 for i in expected]
    assert (ids[len(expected) :] == PAD).all() and ids.shape == (12,) and tokenizer.vocab_size == len(reference) + 3
    assert tokenizer.decode(ids) == "the animal is a person"
    long = tokenizer.encode_batch(["the " * 40])
    assert long.shape == (1, 12) and long[0, -1].item() == reference.sep_token_id + 3  # truncated, [SEP] kept
    import pickle

    assert torch.equal(pickle.loads(pickle.dumps(tokenizer))("a plant"), tokenizer("a plant"))  # travels to DataLoader workers


def test_hf_encoder_equals_the_transformers_model_it_loads(hf_dir: Path) -> None:
    from ssl_train.encoders.text import HFTextEncoder

    tokenizer = HFTokenizer(hf_dir, max_length=16)
    texts = ["the animal is a person", "move"]
    encoder = HFTextEncoder(tokenizer.vocab_size, path=str(hf_dir)).eval()
    model = transformers.AutoModel.from_pretrained(str(hf_dir), local_files_only=True).eval()  # the saved weights
    reference = transformers.AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**reference).last_hidden_state
        mask = reference["attention_mask"][..., None].float()
        expected_mean = (hidden * mask).sum(1) / mask.sum(1)
        torch.testing.assert_close(encoder(tokenizer.encode_batch(texts)), expected_mean, rtol=1e-5, atol=1e-5)  # more padding changes nothing
        cls = HFTextEncoder(tokenizer.vocab_size, path=str(hf_dir), pooling="cls").eval()
        torch.testing.assert_close(cls(tokenizer.encode_batch(texts)), hidden[:, 0], rtol=1e-5, atol=1e-5)
        fresh = HFTextEncoder(tokenizer.vocab_size, path=str(hf_dir), pretrained=False)  # the config's architecture, random init
    tokens = tokenizer.encode_batch(texts)
    assert fresh.training and not torch.equal(fresh(tokens), fresh(tokens))  # train mode (from_pretrained gives eval): dropout is SimCSE's noise
    assert fresh.portable_module.state_dict().keys() == model.state_dict().keys()  # transformers' key names
    assert not torch.equal(fresh.portable_module.embeddings.word_embeddings.weight, model.embeddings.word_embeddings.weight)


def test_hf_encoder_refuses_another_tokenizers_ids_and_missing_folders(hf_dir: Path, tmp_path: Path) -> None:
    from ssl_train.encoders.text import HFTextEncoder

    own_ids = r"this model reads the ids of its own tokenizer \(\d+ tokens \+ 3 specials = \d+ ids\)"
    with pytest.raises(UserError, match=own_ids + r", but the data's tokenizer has 259 ids: set tokenizer=hf"):
        HFTextEncoder(256 + 3, path=str(hf_dir))  # the byte tokenizer's vocabulary (256 bytes + 3 specials)
    with pytest.raises(DataNotFoundError, match=r"^tokenizer.path=.*nope: no such folder .*nothing is fetched from the hub"):
        hf_tokenizer(path=str(tmp_path / "nope"))
    with pytest.raises(UserError, match=r"^tokenizer.path: give the local folder of a Hugging Face model .*: tokenizer=hf tokenizer.path="):
        hf_tokenizer(path=None)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"^tokenizer.path=.*empty: not a Hugging Face tokenizer folder"):
        hf_tokenizer(path=str(tmp_path / "empty"))


def test_simcse_trains_a_local_hf_model_and_probes_it(hf_dir: Path, tmp_path: Path) -> None:
    from ssl_train.run import run

    cfg = compose_config(
        [
            "method=simcse",
            "backbone=hf_text",
            "tokenizer=hf",
            f"tokenizer.path={hf_dir}",
            "tokenizer.max_length=24",
            "data.source.train_limit=64",
            "data.source.test_limit=32",
        ],
        tmp_path,
    )
    assert cfg.backbone.path == str(hf_dir)  # follows tokenizer.path
    metrics = run(cfg)
    assert metrics["backbone"] == "HFTextEncoder" and metrics["steps"] == 2
    initial = transformers.AutoModel.from_pretrained(str(hf_dir), local_files_only=True)
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    trained = state["method.backbone.model.embeddings.word_embeddings.weight"]
    assert not torch.equal(trained, initial.embeddings.word_embeddings.weight)  # the pretrained weights were trained from
    assert "linear_top1" in metrics and "random_init_linear_top1" in metrics  # the initial (here: pretrained) model is the baseline


def test_clip_takes_a_local_hf_model_as_its_text_tower(hf_dir: Path, tmp_path: Path) -> None:
    from ssl_train.build import build

    cfg = compose_config(["method=clip", "text_encoder=hf_text", "tokenizer=hf", f"tokenizer.path={hf_dir}", "tokenizer.max_length=24"], tmp_path)
    method = build(cfg).method
    tokens = HFTokenizer(hf_dir, max_length=24).encode_batch(["a photo of a sneaker", "a shirt"])
    assert type(method.text_encoder).__name__ == "HFTextEncoder" and method.encode_text(tokens).shape == (2, cfg.head.out_dim)
