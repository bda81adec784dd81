"""Sequences and waveforms: CPC's loss against a per-step loop, the views, the encoders, the sources, the modality check."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_train.build import build
from ssl_train.data.datasets import InputSpec
from ssl_train.data.sequence_views import BatchedSequenceView, SequenceViewRecipe, SequenceViews, StandardizeSequence
from ssl_train.data.sequences import SequenceArrays, SequentialFashionMNIST
from ssl_train.encoders.sequence import RecurrentEncoder, mel_filterbank
from ssl_train.errors import UserError
from ssl_train.heads import StepPredictions
from ssl_train.launch import chosen_options
from ssl_train.losses import CPCLoss
from ssl_train.methods import CPCMethod
from tests.fixtures import CONFIG_DIR, compose_config, make_sequence_arrays


def cpc_loss_loop(z: torch.Tensor, predictions: torch.Tensor, temperature: float) -> float:
    """The CPC objective written out: for each k, each (b, t) with t + k < T, -log of exp(score of z[b, t+k]) over the
    sum of exp(scores) of every z[b', t'+k] with t' + k < T; averaged over (b, t), then over k."""
    batch, length, steps = z.shape[0], z.shape[1], predictions.shape[2]
    per_step = []
    for k in range(1, steps + 1):
        candidates = [(b, t + k) for b in range(batch) for t in range(length - k)]
        total = 0.0
        for b in range(batch):
            for t in range(length - k):
                scores = [float(predictions[b, t, k - 1] @ z[bb, tt]) / temperature for bb, tt in candidates]
                positive = float(predictions[b, t, k - 1] @ z[b, t + k]) / temperature
                total += -positive + math.log(sum(math.exp(s) for s in scores))
        per_step.append(total / len(candidates))
    return sum(per_step) / steps


def cpc_accuracy_loop(z: torch.Tensor, predictions: torch.Tensor) -> float:
    """The paper's accuracy written out: for each k, the share of (b, t) with t + k < T whose prediction scores z[b, t+k]
    highest among every z[b', t'+k] with t' + k < T; averaged over k."""
    batch, length, steps = z.shape[0], z.shape[1], predictions.shape[2]
    per_step = []
    for k in range(1, steps + 1):
        candidates = [(b, t + k) for b in range(batch) for t in range(length - k)]
        hits = 0
        for b in range(batch):
            for t in range(length - k):
                scores = [float(predictions[b, t, k - 1] @ z[bb, tt]) for bb, tt in candidates]
                hits += candidates[max(range(len(scores)), key=scores.__getitem__)] == (b, t + k)
        per_step.append(hits / len(candidates))
    return sum(per_step) / steps


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_cpc_loss_matches_the_per_step_loop(temperature: float) -> None:
    g = torch.Generator().manual_seed(0)
    z, predictions = torch.randn(3, 6, 4, generator=g).double(), torch.randn(3, 6, 3, 4, generator=g).double()
    assert CPCLoss(temperature)(z, predictions).item() == pytest.approx(cpc_loss_loop(z, predictions, temperature), abs=1e-6)


def test_cpc_loss_is_low_when_predictions_point_at_their_targets_and_refuses_short_sequences() -> None:
    z = torch.nn.functional.normalize(torch.randn(4, 8, 16), dim=-1) * 5
    aligned = torch.stack([torch.roll(z, -k, dims=1) for k in (1, 2)], dim=2)  # predictions[:, t, k-1] = z[:, t+k]
    loss, accuracy = CPCLoss().loss_and_accuracy(z, aligned)
    random_loss = CPCLoss()(z, torch.randn(4, 8, 2, 16))
    assert accuracy.item() == 1.0 and loss.item() < 0.1 < random_loss.item()
    with pytest.raises(ValueError, match="cannot score 8 steps ahead"):
        CPCLoss()(z, torch.randn(4, 8, 8, 16))


def test_cpc_method_uses_the_causal_context_and_its_gradient_reaches_the_encoder() -> None:
    torch.manual_seed(0)
    encoder = RecurrentEncoder(in_channels=5, step_dim=8, context_dim=12)
    method = CPCMethod(encoder, StepPredictions(12, 8, steps=2), CPCLoss())
    x = torch.randn(6, 10, 5)
    out = method([x])
    out["loss"].backward()
    assert out["features"].shape == (6, 12)
    with torch.no_grad():
        z = encoder.encode_steps(x)
        predictions = method.projector(encoder.context(z))
    assert float(out["logs"]["cpc_accuracy"]) == pytest.approx(cpc_accuracy_loop(z, predictions), abs=1e-6)
    assert float(out["loss"]) == pytest.approx(cpc_loss_loop(z, predictions, 1.0), abs=1e-4)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.frontend.parameters())
    # causal: changing the last step leaves every earlier context unchanged
    changed = x.clone()
    changed[:, -1] += 1
    with torch.no_grad():
        c, c_changed = encoder.context(encoder.encode_steps(x)), encoder.context(encoder.encode_steps(changed))
    assert torch.allclose(c[:, :-1], c_changed[:, :-1]) and not torch.allclose(c[:, -1], c_changed[:, -1])
    with pytest.raises(ValueError, match="head=cpc_predictions"):
        CPCMethod(encoder, torch.nn.Linear(12, 8), CPCLoss())


def test_conv_frontend_downsamples_waveforms_by_the_product_of_its_strides() -> None:
    encoder = RecurrentEncoder(in_channels=1, modality="waveform", step_dim=16, context_dim=8)
    z = encoder.encode_steps(torch.randn(2, 1600))
    assert encoder.frontend.stride == 160 and z.shape == (2, 10, 16) and encoder(torch.randn(2, 1600)).shape == (2, 8)
    with pytest.raises(ValueError, match="frontend=steps"):
        RecurrentEncoder(in_channels=3, modality="sequence", frontend="conv")


def test_mel_filterbank_covers_the_spectrum_with_unit_peaks() -> None:
    bank = mel_filterbank(20, 256, 8000)
    assert bank.shape == (20, 129) and torch.all(bank >= 0)
    # neighbouring triangles share their edges: between the first and the last centre they sum to exactly 1
    inner = slice(int(bank[0].argmax()) + 1, int(bank[-1].argmax()))
    assert torch.allclose(bank[:, inner].sum(dim=0), torch.ones(inner.stop - inner.start), atol=1e-5)
    assert (bank.argmax(dim=1).diff() > 0).all()  # centres increase with the mel index


def test_sequence_views_draw_per_sample_and_standardise() -> None:
    torch.manual_seed(0)
    batch = torch.rand(64, 20, 3) * 4 + 2
    mean, std = batch.mean(dim=(0, 1)).tolist(), batch.std(dim=(0, 1)).tolist()
    identity = BatchedSequenceView(SequenceViewRecipe(crop_scale=(1.0, 1.0), noise_std=0.0, time_masks=0), mean, std)
    assert torch.allclose(identity(batch), StandardizeSequence(mean, std)(batch), atol=1e-5)  # no op: the evaluation transform
    view = BatchedSequenceView(SequenceViewRecipe(crop_scale=(0.5, 0.5), noise_std=0.0, time_masks=0), mean, std)
    out = view(batch)
    assert out.shape == batch.shape and not torch.allclose(out[0], out[1])
    # a half-length window resampled to full length: its first and last steps come from inside the sample
    ramp = torch.arange(20.0)[None, :, None].expand(8, 20, 1)
    stretched = BatchedSequenceView(SequenceViewRecipe(crop_scale=(0.5, 0.5), noise_std=0.0, time_masks=0), [0.0], [1.0])(ramp)
    span = stretched[:, -1, 0] - stretched[:, 0, 0]
    assert torch.allclose(span, torch.full((8,), 9.5), atol=1e-4) and stretched[:, 0, 0].std() > 0  # random start per sample
    masked = BatchedSequenceView(SequenceViewRecipe(crop_scale=(1.0, 1.0), noise_std=0.0, time_masks=2, time_mask_fraction=0.3), [0.0], [1.0])
    zeros = (masked(torch.ones(256, 20, 1)) == 0).float().mean().item()
    assert 0.1 < zeros < 0.3  # two spans of up to 30 %: about 2 x 15 % minus overlaps
    waveform = SequenceViews(size=100, mean=[0.0], std=[1.0], num_global=2)
    views = waveform.batched()(torch.randn(4, 100))
    assert len(views) == 2 and views[0].shape == (4, 100)


def test_sequential_fashion_mnist_reads_rows_as_time_steps() -> None:
    splits = SequentialFashionMNIST(train_limit=50, test_limit=20).load()
    x, _ = splits.train[0]
    assert splits.modality == "sequence" and x.shape == (28, 28) and splits.input_spec == InputSpec(length=28, features=28)
    assert 0 <= float(x.min()) and float(x.max()) <= 1 and splits.num_classes == 10


def test_sequence_arrays_read_npz_and_folders_and_say_what_is_wrong(tmp_path: Path) -> None:
    path = make_sequence_arrays(tmp_path / "s.npz")
    splits = SequenceArrays(str(path)).load()
    assert splits.modality == "sequence" and len(splits.train) == 24 and splits.input_spec.features == 3
    folder = tmp_path / "folder"
    folder.mkdir()
    with np.load(path) as arrays:
        for key in SequenceArrays.KEYS:
            np.save(folder / f"{key}.npy", arrays[key][..., 0] if key.endswith("_x") else arrays[key])
    assert SequenceArrays(str(folder)).load().modality == "waveform"
    np.savez(tmp_path / "nolabels.npz", train_x=np.zeros((4, 5, 2)), test_x=np.zeros((2, 5, 2)))
    with pytest.raises(UserError, match="lacks train_y, test_y"):
        SequenceArrays(str(tmp_path / "nolabels.npz")).load()
    np.savez(tmp_path / "empty.npz", train_x=np.zeros((4, 0, 2)), train_y=np.zeros(4, int), test_x=np.zeros((2, 0, 2)), test_y=np.zeros(2, int))
    with pytest.raises(UserError, match="empty"):
        SequenceArrays(str(tmp_path / "empty.npz")).load()
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="not a readable .npz"):
        SequenceArrays(str(tmp_path / "broken.npz")).load()
    with pytest.raises(UserError, match="no such file or folder"):
        SequenceArrays(str(tmp_path / "missing.npz")).load()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method=cpc"],
            "method=cpc takes sequence/waveform data, but data=default holds images; data options for sequence/waveform data: "
            "seq_fashion_mnist, sequence_arrays",
        ),
        (
            ["data=seq_fashion_mnist", "backbone=recurrent"],
            "augment=byol_asymmetric takes image data, but data=seq_fashion_mnist holds sequences; augment options for sequence data: audio, sequence",
        ),
        (
            ["data=seq_fashion_mnist"],
            "backbone=small_resnet takes image data, but data=seq_fashion_mnist holds sequences; backbone options for sequence data: recurrent",
        ),
        (["method=simclr", "head=cpc_predictions"], "head=cpc_predictions predicts future time steps for method=cpc"),
    ],
)
def test_impossible_combinations_stop_with_one_line_naming_what_fits(overrides: list[str], message: str, tmp_path: Path) -> None:
    from hydra import initialize_config_dir  # group choices come from Hydra's runtime config, as under the CLI
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_config(overrides, tmp_path)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        from hydra import compose

        HydraConfig.instance().set_config(compose("train", overrides=overrides, return_hydra_config=True))
        with pytest.raises(UserError) as caught, chosen_options(HydraConfig.get().runtime.choices):  # as ssl_train.__main__ hands them on
            build(cfg)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_siamese_methods_train_the_recurrent_encoder_on_sequences(tmp_path: Path) -> None:
    built = build(compose_config(["method=simclr", "data=seq_fashion_mnist", "augment=sequence", "backbone=recurrent", "data.batch_size=16"], tmp_path))
    batch = torch.stack([built.datamodule.splits.train[i][0] for i in range(16)])
    out = built.method(built.module.batched_views(batch), torch.zeros(16, dtype=torch.long))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["features"].shape == (16, built.backbone.out_dim)
