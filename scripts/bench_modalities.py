"""Throughput beyond images: view pipelines for audio and sequences (batched vs per sample), text views and the text
encoders (sentences/s), training steps of CPC, SimCSE, SimCLR on text and CLIP, and DGI / GRACE epochs per second on
WordNet's noun graph (82k nodes) and the Fashion-MNIST kNN graph.

Run: python scripts/bench_modalities.py [--steps 10] [--skip-wordnet] [--only text]

Every figure is the median of `--rounds` timed rounds after a warm-up, on this machine's CPU (or the GPU when there is
one), built from the real configs (`python -m ssl_train method=... data=...` compose the same objects).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from ssl_train.build import build
from ssl_train.composed import compose_run_config


def timed(work: Callable[[], object], rounds: int) -> float:
    """Median seconds of `rounds` calls of work() after one warm-up call."""
    work()
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        work()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def built_from(overrides: list[str]):  # ssl_train.build.Built
    return build(compose_run_config([*overrides, "logger=csv", "callbacks.preemption=null"], "/tmp/bench_modalities"))


def view_rows(rounds: int) -> list[str]:
    rows = []
    for name, overrides in (
        ("audio (spoken digits, 8000 samples)", ["method=simclr", "data=spoken_digits", "augment=audio", "backbone=recurrent"]),
        ("sequence (seq. Fashion-MNIST, 28 x 28)", ["method=simclr", "data=seq_fashion_mnist", "augment=sequence", "backbone=recurrent"]),
    ):
        built = built_from(overrides)
        train, views = built.datamodule.splits.train, built.datamodule.views()
        batch = torch.stack([train[i][0] for i in range(256)])
        batched = views.batched()
        per_batch = timed(lambda: batched(batch), rounds)  # noqa: B023
        per_sample = timed(lambda: [views(sample) for sample in batch], rounds)  # noqa: B023
        rows.append(f"| {name} | 2 views | {256 / per_batch:,.0f} | {256 / per_sample:,.0f} | {per_sample / per_batch:.1f}x |")
    return rows


def training_rows(configs: list[tuple[str, list[str]]], steps: int, rounds: int) -> list[str]:
    rows = []
    for name, overrides in configs:
        built = built_from(overrides)
        method, module = built.method.train(), built.module
        optimizer = torch.optim.Adam(method.parameters(), lr=1e-4)
        loader = built.datamodule.train_dataloader()
        batch, labels = next(iter(loader))
        steps_per_epoch = len(loader)

        def step(batch=batch, labels=labels, method=method, module=module, optimizer=optimizer) -> None:
            for _ in range(steps):
                optimizer.zero_grad(set_to_none=True)
                views = module.batched_views(batch) if module.batched_views is not None else batch  # text, pairs: views made in the loader
                method(views, labels)["loss"].backward()
                optimizer.step()

        seconds = timed(step, rounds) / steps
        samples = len(labels)
        rows.append(f"| {name} | {samples} | {steps_per_epoch} | {1 / seconds:.2f} | {samples / seconds:,.0f} | {1 / (seconds * steps_per_epoch):.3f} |")
    return rows


def text_rows(rounds: int) -> list[str]:
    """Sentences/s of the text encoders on WordNet glosses (batch 256), inference and a training step, and of the EDA views."""
    from ssl_train.data.text import WordNetGlosses
    from ssl_train.data.text_views import TextViews
    from ssl_train.data.tokenizers import bpe_tokenizer, byte_tokenizer
    from ssl_train.encoders.text import CharCNNEncoder, TransformerTextEncoder

    texts = [WordNetGlosses().load().train[i][0] for i in range(256)]
    byte = byte_tokenizer(max_length=128)
    bpe = bpe_tokenizer(WordNetGlosses().load().train.texts, vocab_size=4000, max_length=64)
    rows = []
    for name, tokenizer, make in (
        ("transformer_small, bytes (128), downsample 4 (default)", byte, lambda t: TransformerTextEncoder(t.vocab_size)),
        ("transformer_small, bytes (128), downsample 1", byte, lambda t: TransformerTextEncoder(t.vocab_size, downsample=1)),
        ("transformer_small, BPE 4k (64)", bpe, lambda t: TransformerTextEncoder(t.vocab_size)),
        ("char_cnn, bytes (128)", byte, lambda t: CharCNNEncoder(t.vocab_size)),
    ):
        encoder = make(tokenizer)
        tokens = tokenizer.encode_batch(texts)
        optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-4)

        def infer(encoder=encoder, tokens=tokens) -> None:
            with torch.no_grad():
                encoder.eval()(tokens)

        def train(encoder=encoder, tokens=tokens, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            encoder.train()(tokens).sum().backward()
            optimizer.step()

        rows.append(f"| {name} | {256 / timed(infer, rounds):,.0f} | {256 / timed(train, rounds):,.0f} |")
    eda = TextViews(byte, recipe={"synonym_fraction": 0.1, "insert_fraction": 0.1, "swap_fraction": 0.1, "delete_prob": 0.1})
    rows.append(f"| EDA views (2 per text, tokenised; loader side) | {256 / timed(lambda: [eda(t) for t in texts], rounds):,.0f} | - |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-wordnet", action="store_true", help="leave out the WordNet rows (no wordnet-base installed)")
    parser.add_argument("--only", choices=["text"], default=None, help="only the text rows")
    args = parser.parse_args()
    torch.manual_seed(0)
    print("| text encoder / views (WordNet glosses, batch 256) | inference sentences/s | training sentences/s |")
    print("|---|---|---|")
    for row in text_rows(args.rounds):
        print(row, flush=True)
    text_configs = [
        ("SimCSE, WordNet glosses (transformer_small)", ["method=simcse"]),
        ("SimCLR + EDA, WordNet glosses (transformer_small)", ["method=simclr", "data=wordnet_glosses", "augment=text_eda"]),
        ("CLIP, Fashion-MNIST + captions (small_resnet + transformer_small)", ["method=clip"]),
    ]
    if args.only == "text":
        print()
        print("| training | batch (samples / nodes) | steps per epoch | steps/s | samples/s | epochs/s |")
        print("|---|---|---|---|---|---|")
        for row in training_rows(text_configs, args.steps, args.rounds):
            print(row, flush=True)
        return
    print()
    print("| views | per batch | batched samples/s | per-sample samples/s | batched speed-up |")
    print("|---|---|---|---|---|")
    for row in view_rows(args.rounds):
        print(row, flush=True)
    configs = [
        *text_configs,
        ("CPC, seq. Fashion-MNIST", ["method=cpc", "data=seq_fashion_mnist"]),
        ("CPC, spoken digits (conv front-end)", ["method=cpc", "data=spoken_digits"]),
        ("DGI, Fashion-MNIST kNN graph (12k nodes)", ["method=dgi", "data=fmnist_knn_graph"]),
        ("GRACE, Fashion-MNIST kNN graph (12k nodes)", ["method=grace", "data=fmnist_knn_graph"]),
    ]
    if not args.skip_wordnet:
        configs += [("DGI, WordNet nouns (82k nodes)", ["method=dgi", "data=wordnet_graph"])]
    print()
    print("| training | batch (samples / nodes) | steps per epoch | steps/s | samples/s | epochs/s |")
    print("|---|---|---|---|---|---|")
    for row in training_rows(configs, args.steps, args.rounds):
        print(row, flush=True)


if __name__ == "__main__":
    main()
