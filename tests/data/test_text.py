"""Text: tokenizers, text sources (skipped rows counted), EDA views, text encoders, the bag-of-n-grams baseline, SimCSE."""

from __future__ import annotations

import pickle
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ssl_train.data.text import LEXNAMES, TextFiles, WordNetGlosses, synonym_table
from ssl_train.data.text_records import read_rows
from ssl_train.data.text_views import STOP_WORDS, TextEdits, TextViewRecipe, TextViews
from ssl_train.data.tokenizers import BOS, EOS, PAD, BPETokenizer, ByteTokenizer, bpe_tokenizer
from ssl_train.encoders.text import CharCNNEncoder, NGramBagEncoder, TransformerTextEncoder
from ssl_train.errors import DataNotFoundError, UserError
from ssl_train.eval.baselines import RawInput
from ssl_train.launch import chosen_options
from ssl_train.losses import InfoNCELoss
from ssl_train.modalities.text import bag_of_ngrams
from tests.optional import require

CORPUS = ["the cat sat on the mat", "a dog chased the cat", "the bird sang in the tree", "dogs and cats are animals"] * 5


def test_byte_tokenizer_frames_utf8_bytes_and_round_trips() -> None:
    tokenizer = ByteTokenizer(max_length=8)
    ids = tokenizer("hé")
    assert ids.tolist() == [BOS, ord("h") + 3, 0xC3 + 3, 0xA9 + 3, EOS, PAD, PAD, PAD]
    assert tokenizer.decode(ids) == "hé"
    long = tokenizer("abcdefghij")
    assert long.tolist() == [BOS, *[ord(c) + 3 for c in "abcdef"], EOS]  # cut to max_length with BOS/EOS kept
    assert tokenizer.encode_batch(["a", "bc"]).shape == (2, 8)
    with pytest.raises(UserError, match="max_length must be an integer >= 3"):
        ByteTokenizer(max_length=2)


def test_bpe_learns_merges_keeps_special_ids_and_survives_save_and_pickle(tmp_path: Path) -> None:
    require("tokenizers")
    tokenizer = bpe_tokenizer(CORPUS, vocab_size=320, max_length=16, min_frequency=1)
    ids = tokenizer("the cat sat")
    assert ids[0] == BOS and EOS in ids.tolist() and ids.tolist().index(EOS) < len("the cat sat") + 1  # merges: fewer tokens than bytes
    assert tokenizer.decode(ids).strip() == "the cat sat"
    tokenizer.save(tmp_path / "tokenizer.json")
    reloaded = BPETokenizer.from_file(tmp_path, max_length=16)
    assert torch.equal(reloaded("a dog sang"), tokenizer("a dog sang"))
    assert torch.equal(pickle.loads(pickle.dumps(tokenizer))("the bird"), tokenizer("the bird"))  # goes to loader workers
    with pytest.raises(UserError, match="no tokenizer.json"):
        BPETokenizer.from_file(tmp_path / "nowhere")


def test_text_files_skip_and_count_bad_rows_and_map_labels(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train = tmp_path / "train.csv"
    train.write_bytes(b"text,label\nthe cat sat,animal\n\xff\xfe broken,animal\n,animal\na red car,vehicle\nno label here,\nthe dog ran,animal\n")
    texts, labels, skips = read_rows(train, "text", "label")
    assert texts == ["the cat sat", "a red car", "the dog ran"] and labels == ["animal", "vehicle", "animal"]
    assert skips.reasons == Counter({"not UTF-8": 1, "no 'text'": 1, "no 'label'": 1})  # an empty value is a missing one
    test = tmp_path / "test.jsonl"
    test.write_text('{"text": "a blue bus", "label": "vehicle"}\nnot json\n{"text": "a fish", "label": "plant"}\n\n{"label": "animal"}\n')
    splits = TextFiles(str(train), str(test)).load()
    assert splits.modality == "text" and splits.class_names == ("animal", "vehicle") and splits.num_classes == 2
    assert [splits.test[i] for i in range(len(splits.test))] == [("a blue bus", 1)]  # 'plant' is not a train label: skipped
    assert splits.train.skipped == 3 and splits.test.skipped == 4  # not JSON, empty line, no 'text', unseen label
    assert splits.input_spec.vocab_size == ByteTokenizer.vocab_size and torch.equal(splits.tokenizer("a"), ByteTokenizer()("a"))
    assert "skipped 3 row(s)" in caplog.text
    tsv = tmp_path / "lines.txt"
    tsv.write_text("pos\tgreat film\nneg\tdull plot\nno tab here\npos\tloved it\nneg\tboring\n")
    held_out = TextFiles(str(tsv), test_fraction=0.25).load()
    assert len(held_out.train) == 3 and len(held_out.test) == 1 and held_out.train.skipped == 1
    with pytest.raises(UserError, match="no column 'words'"):
        TextFiles(str(train), text_column="words").load()
    extra = tmp_path / "extra.txt"
    extra.write_text("an unlabeled line\nanother one\n")
    limited = TextFiles(str(train), str(test), unlabeled=str(extra), train_limit=2).load()  # pretraining = the limited train + extra
    assert len(limited.pretrain_set) == 4 and [limited.pretrain_set[i] for i in (2, 3)] == [("an unlabeled line", -1), ("another one", -1)]


def test_embedded_wordnet_glosses_hold_45_lexicographer_files() -> None:
    splits = WordNetGlosses().load()
    assert (len(splits.train), len(splits.test)) == (8388, 1686) and splits.num_classes == len(LEXNAMES) == 45
    assert set(splits.train.labels.tolist()) == set(range(45))
    text, label = splits.train[0]
    assert isinstance(text, str) and len(text) > 10 and splits.class_names[label] in LEXNAMES
    assert len(WordNetGlosses(train_limit=100, test_limit=10).load().train) == 100


def test_wordnet_unlabeled_glosses_join_pretraining_but_never_the_test_ones(tmp_path: Path) -> None:
    embedded = WordNetGlosses(train_limit=20, test_limit=5).load()
    test_gloss, train_gloss = embedded.test[0][0], embedded.train[0][0]
    for i, part in enumerate(("noun", "verb", "adj", "adv")):
        glosses = [test_gloss, train_gloss, f"a new {part} gloss", f"a new {part} gloss"] if part == "noun" else [f"a new {part} gloss"]
        (tmp_path / f"data.{part}").write_text("  1 licence header\n" + "".join(f"{j:08d} {i + 3:02d} n 01 word 0 000 | {g}\n" for j, g in enumerate(glosses)))
    splits = WordNetGlosses(train_limit=20, test_limit=5, unlabeled=str(tmp_path)).load()
    assert len(splits.train) == 20 and len(splits.test) == 5  # the probe's splits are the embedded ones, unchanged
    pretrain = [splits.pretrain_set[i] for i in range(len(splits.pretrain_set))]
    assert pretrain[:20] == [splits.train[i] for i in range(20)]
    assert sorted(t for t, y in pretrain[20:]) == sorted(f"a new {p} gloss" for p in ("noun", "verb", "adj", "adv"))  # once each
    assert all(y == -1 for _, y in pretrain[20:]) and test_gloss not in {t for t, _ in pretrain}
    with pytest.raises(DataNotFoundError, match="data.source.unlabeled: .*apt-get install wordnet-base"):
        WordNetGlosses(unlabeled=str(tmp_path / "none")).load()


def test_synonym_table_joins_the_lemmas_of_every_synset_a_word_is_in() -> None:
    table = synonym_table([["car", "auto", "automobile"], ["car", "railcar"], ["take a breath", "breathe"]])
    assert table["car"] == ["auto", "automobile", "railcar"] and table["auto"] == ["automobile", "car"]
    assert table["breathe"] == ["take a breath"] and "take a breath" not in table  # multi-word lemmas are replacements only


SYNONYMS = {"quick": ["fast", "speedy"], "fox": ["reynard"], "jumps": ["leaps"], "the": ["thee"]}
SENTENCE = "the quick brown fox jumps over the lazy dog"


@pytest.mark.parametrize("seed", range(5))
def test_eda_edits_do_what_the_reference_does(seed: int) -> None:
    random.seed(seed)
    words = SENTENCE.split()
    replaced = TextEdits(TextViewRecipe(synonym_fraction=0.3), SYNONYMS).replace_synonyms(words)
    changed = [(a, b) for a, b in zip(words, replaced, strict=True) if a != b]
    assert len(changed) == 2 and all(b in SYNONYMS[a] for a, b in changed)  # n = max(1, int(0.3 * 9)); never a stop word ('the')
    inserted = TextEdits(TextViewRecipe(insert_fraction=0.25), SYNONYMS).insert_synonyms(words)
    assert len(inserted) == 11 and Counter(inserted) - Counter(words) <= Counter({s: 2 for s in ["fast", "speedy", "reynard", "leaps"]})
    swapped = TextEdits(TextViewRecipe(swap_fraction=0.2), SYNONYMS).swap(words)
    assert sorted(swapped) == sorted(words)
    deleted = TextEdits(TextViewRecipe(delete_prob=0.99), SYNONYMS).delete(words)
    assert len(deleted) == 1 and deleted[0] in words  # one word always stays
    cropped = TextEdits(TextViewRecipe(crop_scale=(0.5, 0.5)), SYNONYMS).crop(words)
    assert " ".join(cropped) in SENTENCE and len(cropped) == round(9 * 0.5)
    assert "the" in STOP_WORDS


def test_text_views_apply_one_edit_per_view_and_tokenise() -> None:
    random.seed(0)
    views = TextViews(ByteTokenizer(64), num_global=2, recipe={"swap_fraction": 0.2, "delete_prob": 0.3}, synonyms=None)
    texts = [views.texts(SENTENCE) for _ in range(50)]
    for view in (t for pair in texts for t in pair):
        same_words = sorted(view.split()) == sorted(SENTENCE.split())
        assert same_words or set(view.split()) <= set(SENTENCE.split())  # a swap, or a deletion: never both changed order and words
    assert any(len(v.split()) < 9 for pair in texts for v in pair) and any(v != SENTENCE and len(v.split()) == 9 for pair in texts for v in pair)
    tokens = views(SENTENCE)
    assert len(tokens) == 2 and tokens[0].shape == (64,) and tokens[0].dtype == torch.long
    identity = TextViews(ByteTokenizer(64), recipe={}, synonyms=None)
    assert identity.texts(SENTENCE) == [SENTENCE, SENTENCE]  # SimCSE: the noise is the encoder's dropout
    with pytest.raises(ValueError, match="synonyms is null"):
        TextViews(ByteTokenizer(64), recipe={"synonym_fraction": 0.1}, synonyms=None)
    with pytest.raises(ValueError, match="unknown view setting"):
        TextViews(ByteTokenizer(64), recipe={"shuffle": 0.1}, synonyms=None)


@pytest.mark.parametrize(
    "make",
    [
        lambda: TransformerTextEncoder(ByteTokenizer.vocab_size, width=32, depth=1, heads=2),
        lambda: TransformerTextEncoder(ByteTokenizer.vocab_size, width=32, depth=1, heads=2, downsample=1, pooling="cls"),
        lambda: TransformerTextEncoder(300, width=32, depth=1, heads=2),
        lambda: CharCNNEncoder(ByteTokenizer.vocab_size, embed_dim=16, channels=8),
        lambda: NGramBagEncoder(ByteTokenizer.vocab_size, dim=16, buckets=512),
    ],
)
def test_text_encoders_ignore_padding(make) -> None:
    torch.manual_seed(0)
    encoder = make().eval()
    short = ByteTokenizer(32).encode_batch(["a short text", "another one, longer than that"])
    padded = F.pad(short, (0, 32))  # the same texts with 32 more padding tokens
    with torch.no_grad():
        assert torch.allclose(encoder(short), encoder(padded), atol=1e-5)
        assert encoder(short).shape == (2, encoder.out_dim)
        assert not torch.allclose(encoder(short)[0], encoder(short)[1])


def test_byte_transformer_merges_four_bytes_per_position_by_default() -> None:
    assert TransformerTextEncoder(ByteTokenizer.vocab_size).downsample == 4 and TransformerTextEncoder(4000).downsample == 1
    encoder = TransformerTextEncoder(ByteTokenizer.vocab_size, width=32, depth=1, heads=2)
    features, padding = encoder.token_features(ByteTokenizer(30).encode_batch(["abcdef"]))
    assert features.shape == (1, 8, 32) and padding[0].tolist() == [False, False] + [True] * 6  # 8 bytes (BOS..EOS) -> 2 positions
    with pytest.raises(ValueError, match="max_positions"):
        TransformerTextEncoder(300, width=32, depth=1, heads=2, max_positions=8)(torch.ones(1, 9, dtype=torch.long))


def test_ngram_bag_encoder_averages_the_rows_of_its_ngrams_and_drops_ngrams_in_training() -> None:
    torch.manual_seed(0)
    encoder = NGramBagEncoder(ByteTokenizer.vocab_size, dim=8, buckets=1 << 20, orders=(1, 2)).eval()
    ids = [1, 5, 6, 2]
    tokens = torch.tensor([ids + [0, 0]])
    grams = [(a,) for a in ids] + list(zip(ids, ids[1:], strict=False))  # 4 unigrams + 3 bigrams, none with padding
    rows = []
    for gram in grams:  # the hash written out: code = sum(token * 1_000_003^k), bucket = (code * 2_654_435_761 + n) % buckets
        code = 0
        for token in gram:
            code = code * 1_000_003 + token
        rows.append(encoder.table.weight[(code * 2_654_435_761 + len(gram)) % (1 << 20)])
    with torch.no_grad():
        expected = F.layer_norm(torch.stack(rows).mean(0), (8,), encoder.norm.weight, encoder.norm.bias)
        torch.testing.assert_close(encoder(tokens)[0], expected)
        encoder.train()
        assert not torch.allclose(encoder(tokens), encoder(tokens))  # n-gram dropout: two views of one text differ


def test_bag_of_ngrams_counts_what_a_loop_counts() -> None:
    tokens = torch.tensor([[1, 5, 6, 5, 6, 2, 0, 0], [1, 7, 2, 0, 0, 0, 0, 0]])
    features = bag_of_ngrams(tokens, dim=1 << 20)
    for row, ids in enumerate(([1, 5, 6, 5, 6, 2], [1, 7, 2])):
        expected = sum(len(ids) - n + 1 for n in (1, 2, 3) if len(ids) >= n)
        assert features[row].expm1().sum().round() == expected  # every n-gram of the non-padding tokens, none across padding
        assert features[row].expm1().max().round() == max(Counter(zip(ids, ids[1:], strict=False)).values() or [1])  # (5, 6) twice
    assert torch.equal(RawInput("text")(tokens), bag_of_ngrams(tokens))  # the raw-input baseline of texts


def test_simcse_loss_is_the_reference_cross_entropy_over_cosine_similarities() -> None:
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 32), torch.randn(16, 32)
    temp = 0.05
    # princeton-nlp/SimCSE simcse/models.py cl_forward: cos_sim = Similarity(temp)(z1.unsqueeze(1), z2.unsqueeze(0)); CE(cos_sim, arange)
    cos_sim = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1) / temp
    reference = F.cross_entropy(cos_sim, torch.arange(16))
    assert torch.allclose(InfoNCELoss(temperature=temp)(z1, z2), reference, atol=1e-5)


def test_simcse_head_is_the_reference_pooler_mlp_at_the_encoder_width(tmp_path: Path) -> None:
    from hydra.utils import instantiate

    from tests.fixtures import compose_config

    cfg = compose_config(["method=simcse", "backbone=ngram_bag"], tmp_path)
    head = instantiate(cfg.head)(in_dim=48)
    # princeton-nlp/SimCSE MLPLayer: dense = Linear(hidden_size, hidden_size); activation = Tanh
    assert [type(m) for m in head] == [torch.nn.Linear, torch.nn.Tanh] and head[0].weight.shape == (48, 48) and head.out_dim == 48


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data=wordnet_glosses"],
            "augment=byol_asymmetric takes image data, but data=wordnet_glosses holds texts; augment options for text data: text_crop, text_eda, text_identity",
        ),
        (
            ["method=simcse", "backbone=small_resnet"],
            "backbone=small_resnet takes image data, but data=wordnet_glosses holds texts; "
            "backbone options for text data: char_cnn, hf_text, ngram_bag, transformer_small",
        ),
        (
            ["method=clip", "data=default"],
            "method=clip takes image_text data, but data=default holds images; data options for image_text data: "
            "caption_folder, caption_table, fmnist_captions",
        ),
    ],
)
def test_text_and_pair_mismatches_stop_with_one_line_naming_what_fits(overrides: list[str], message: str, tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from ssl_train.build import build
    from tests.fixtures import CONFIG_DIR, compose_config

    cfg = compose_config(overrides, tmp_path)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        HydraConfig.instance().set_config(compose("train", overrides=overrides, return_hydra_config=True))
        with pytest.raises(UserError) as caught, chosen_options(HydraConfig.get().runtime.choices):  # as ssl_train.__main__ hands them on
            build(cfg)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_clip_without_a_text_tower_is_refused_in_one_line(tmp_path: Path) -> None:
    from omegaconf import open_dict

    from ssl_train.build import build
    from tests.fixtures import compose_config

    cfg = compose_config(["method=clip"], tmp_path)
    with open_dict(cfg):
        cfg.text_encoder = None
    with pytest.raises(UserError, match="needs a text tower: text_encoder=transformer_small, char_cnn or hf_text"):
        build(cfg)
