"""Audio: the embedded spoken digits, a folder of files with corrupt ones skipped and counted, CPC on raw waveforms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssl_train.build import build
from ssl_train.data.audio import AudioFolder, SpokenDigits, decode, fit_length
from ssl_train.errors import DataNotFoundError, UserError
from tests.fixtures import compose_config, make_audio_folder


def test_spoken_digits_are_one_second_of_8khz_speech_with_unseen_test_voices() -> None:
    splits = SpokenDigits(train_limit=40, test_limit=20).load()
    x, label = splits.train[0]
    assert splits.modality == "waveform" and x.shape == (8000,) and splits.input_spec.features == 1 and splits.num_classes == 10
    assert float(x.abs().max()) <= 1.0 and float(x.abs().max()) > 0.05  # speech, not silence
    assert 0 <= label < 10 and len(splits.test) == 20


def test_audio_folder_skips_and_counts_corrupt_files_and_resamples(tmp_path: Path) -> None:
    root = make_audio_folder(tmp_path / "tones", corrupt=2)
    splits = AudioFolder(str(root), sample_rate=8000, length=2000).load()
    assert len(splits.train) == 9 and splits.train.skipped == 2 and splits.test.skipped == 0
    assert splits.train[0][0].shape == (2000,)
    resampled = decode(root / "test" / "tone_0" / "0.wav", 4000, 1000)
    assert resampled.shape == (1000,)
    assert fit_length(np.ones(5, dtype=np.float32), 9).tolist() == [0, 0, 1, 1, 1, 1, 1, 0, 0]


def test_audio_folder_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError, match="one sub-folder of audio files per class"):
        AudioFolder(str(tmp_path)).load()
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "test" / "b").mkdir(parents=True)
    with pytest.raises(UserError, match="classes not in"):
        AudioFolder(str(tmp_path)).load()
    (tmp_path / "test" / "b").rmdir()
    (tmp_path / "train" / "a" / "x.wav").write_bytes(b"junk")
    with pytest.raises(UserError, match=r"no readable .* \(1 unreadable\)"):
        AudioFolder(str(tmp_path)).load()


@pytest.mark.parametrize("frontend", ["conv", "logmel"])
def test_cpc_trains_on_raw_waveforms(frontend: str, tmp_path: Path) -> None:
    cfg = compose_config(["method=cpc", "data=spoken_digits", f"backbone.frontend={frontend}", "data.batch_size=8"], tmp_path)
    built = build(cfg)
    batch = torch.stack([built.datamodule.splits.train[i][0] for i in range(8)])
    out = built.method(built.module.batched_views(batch), torch.zeros(8, dtype=torch.long))
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["features"].shape == (8, built.backbone.out_dim)
    steps = built.backbone.encode_steps(batch).shape[1]
    assert steps == (50 if frontend == "conv" else 101)  # 8000 samples / 160 ; STFT frames at hop 80
