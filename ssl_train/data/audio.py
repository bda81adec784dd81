"""Audio sources read from local files: the embedded spoken digits (synthetic speech) and a folder of WAV/FLAC files.

Waveforms are mono float32 in [-1, 1], all `length` samples long (centre-cropped or zero-padded), at one sample rate;
they load into memory once (soundfile decodes them; torchaudio cannot be installed beside our torch pin).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import soundfile

from ssl_train.constraints import Limit, PositiveInt
from ssl_train.data.datasets import Splits, limited
from ssl_train.data.sequences import sequence_splits
from ssl_train.errors import DataNotFoundError, UserError

log = logging.getLogger(__name__)
SPOKEN_DIGITS_FILE = Path(__file__).with_name("embedded") / "spoken_digits.npz"
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def fit_length(audio: np.ndarray, length: int) -> np.ndarray:
    """Centre-crop or zero-pad a 1-D waveform to `length` samples."""
    if len(audio) >= length:
        start = (len(audio) - length) // 2
        return audio[start : start + length]
    out = np.zeros(length, dtype=audio.dtype)
    start = (length - len(audio)) // 2
    out[start : start + len(audio)] = audio
    return out


def decode(source: str | Path | io.BytesIO, sample_rate: int, length: int) -> np.ndarray:
    """One file as mono float32 of `length` samples at `sample_rate`; channels are averaged, another rate is resampled
    linearly (resample offline for quality)."""
    audio, rate = soundfile.read(source, dtype="float32", always_2d=True)
    audio = audio.mean(axis=1)
    if len(audio) == 0:
        raise ValueError("no samples")
    if rate != sample_rate:
        positions = np.linspace(0, len(audio) - 1, max(1, round(len(audio) * sample_rate / rate)))
        audio = np.interp(positions, np.arange(len(audio)), audio).astype(np.float32)
    return fit_length(audio, length)


class SpokenDigits:
    """The embedded spoken digits: "zero" .. "nine" by a speech synthesiser (espeak-ng: 8 accents x 25 voices, random
    speed and pitch), 8 kHz, 1 s; 786 train / 214 test utterances, the test voices never heard in training.
    Synthetic speech, made by scripts/make_spoken_digits.py; see ssl_train/data/embedded/LICENSE."""

    modalities = ("waveform",)

    def __init__(self, train_limit: Limit = None, test_limit: Limit = None) -> None:
        self.train_limit, self.test_limit = train_limit, test_limit

    def load(self) -> Splits:
        if not SPOKEN_DIGITS_FILE.is_file():
            raise DataNotFoundError(f"the embedded audio {SPOKEN_DIGITS_FILE} is missing: reinstall ssl_train or run scripts/make_spoken_digits.py")
        with np.load(SPOKEN_DIGITS_FILE) as arrays:
            rate = int(arrays["sample_rate"])
            parts = {}
            for split in ("train", "test"):
                blob, offsets = arrays[f"{split}_flac"], arrays[f"{split}_offsets"]
                waves = [decode(io.BytesIO(blob[a:b].tobytes()), rate, rate) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
                parts[split] = (np.stack(waves), arrays[f"{split}_labels"].astype(np.int64))
        train = limited(*parts["train"], self.train_limit, seed=0)
        test = limited(*parts["test"], self.test_limit, seed=1)
        return sequence_splits(*train, *test, "data=spoken_digits")


class AudioFolder:
    """`<root>/<train_dir>/<class>/*.wav|flac|ogg` and `<root>/<test_dir>/<class>/...`: labels from the sub-folders.

    Every file becomes `length` samples at `sample_rate` (mono). A file that does not decode or holds no samples is
    skipped with a warning and counted (`skipped` -> metrics.json); a folder with no readable file stops with one line.
    """

    modalities = ("waveform",)

    def __init__(
        self,
        root: str,
        train_dir: str = "train",
        test_dir: str = "test",
        sample_rate: PositiveInt = 8000,
        length: PositiveInt = 8000,
        train_limit: Limit = None,
        test_limit: Limit = None,
    ) -> None:
        self.root, self.train_dir, self.test_dir = Path(root).expanduser(), train_dir, test_dir
        self.sample_rate, self.length, self.train_limit, self.test_limit = sample_rate, length, train_limit, test_limit

    def _read_split(self, folder: Path, classes: list[str], limit: int | None, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
        files = [
            (path, label) for label, name in enumerate(classes) for path in sorted(p for p in (folder / name).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        ]
        chosen, _ = limited(np.arange(len(files)), np.arange(len(files)), limit, seed)  # a fixed-seed subset, read alone
        waves, labels, skipped = [], [], 0
        for index in sorted(chosen.tolist()):
            path, label = files[index]
            try:
                waves.append(decode(path, self.sample_rate, self.length))
                labels.append(label)
            except (RuntimeError, ValueError, soundfile.LibsndfileError) as error:
                skipped += 1
                log.warning("skipping unreadable audio file %s (%s)", path, error)
        if not waves:
            raise UserError(f"data.source.root: no readable {'/'.join(AUDIO_SUFFIXES)} file under {folder} ({skipped} unreadable)")
        return np.stack(waves), np.array(labels), skipped

    def load(self) -> Splits:
        train_folder, test_folder = self.root / self.train_dir, self.root / self.test_dir
        for folder in (train_folder, test_folder):
            if not folder.is_dir():
                raise DataNotFoundError(f"data.source.root: expected {folder} with one sub-folder of audio files per class")
        classes = sorted(p.name for p in train_folder.iterdir() if p.is_dir())
        if not classes:
            raise UserError(f"data.source.root: {train_folder} has no class sub-folders (labels come from their names)")
        unknown = sorted(p.name for p in test_folder.iterdir() if p.is_dir() and p.name not in classes)
        if unknown:
            raise UserError(f"data.source.root: {test_folder} has classes not in {train_folder}: {', '.join(unknown)}")
        train_x, train_y, skipped_train = self._read_split(train_folder, classes, self.train_limit, seed=0)
        test_x, test_y, skipped_test = self._read_split(test_folder, classes, self.test_limit, seed=1)
        return sequence_splits(train_x, train_y, test_x, test_y, f"data.source.root={self.root}", skipped=(skipped_train, skipped_test))
