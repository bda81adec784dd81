"""Render the embedded spoken-digit set with a real speech synthesiser (Debian's espeak-ng), 8 kHz, 1 s per utterance.

Run: apt-get install espeak-ng sox && python scripts/make_spoken_digits.py [--per-digit 100] [--out ssl_train/data/embedded/spoken_digits.npz]

The words "zero" .. "nine" are spoken by 8 English accents x 25 voice variants, at random speeds (120-220 words/min)
and pitches (25-85), trimmed of silence and centred in 8000 samples. The test split holds voice variants never heard
in training, so the probe measures digits, not voices. Each utterance is stored FLAC-compressed (soundfile) in one
.npz: `train_flac` / `test_flac` (the FLAC files back to back, uint8), `*_offsets` (where each starts; one more than
there are files), `*_labels`, `sample_rate`.
The speech is synthetic; espeak-ng is GPL-3.0, its output audio carries no licence restriction (see the LICENSE file
beside the data).
"""

from __future__ import annotations

import argparse
import io
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from ssl_train.data.audio import fit_length

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc")
VARIANTS = (
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "m8",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
    "croak",
    "grandpa",
    "grandma",
    "steph",
    "zac",
    "travis",
    "shelby",
    "victor",
    "norbert",
)
TEST_VARIANTS = ("m4", "f3", "klatt2", "grandma", "travis")  # held out: test voices are never heard in training
SAMPLE_RATE, LENGTH = 8000, 8000


def render(word: str, voice: str, speed: int, pitch: int, workdir: Path) -> np.ndarray:
    """One utterance as int16 samples at 8 kHz, silence trimmed, centred (or centre-cropped) in LENGTH samples."""
    raw, resampled = workdir / "raw.wav", workdir / "8k.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(raw), word], check=True)
    subprocess.run(["sox", "-V1", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(resampled)], check=True)
    audio, _ = soundfile.read(resampled, dtype="int16")
    loud = np.flatnonzero(np.abs(audio.astype(np.int32)) > 300)
    audio = audio[loud[0] : loud[-1] + 1] if len(loud) else audio
    return fit_length(audio, LENGTH)


def flac_bytes(audio: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-digit", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "ssl_train" / "data" / "embedded" / "spoken_digits.npz")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    splits: dict[str, tuple[list[np.ndarray], list[int]]] = {"train": ([], []), "test": ([], [])}
    with tempfile.TemporaryDirectory() as tmp:
        for label, word in enumerate(WORDS):
            for _ in range(args.per_digit):
                variant = VARIANTS[rng.integers(len(VARIANTS))]
                voice = f"{ACCENTS[rng.integers(len(ACCENTS))]}+{variant}"
                audio = render(word, voice, int(rng.integers(120, 221)), int(rng.integers(25, 86)), Path(tmp))
                split = "test" if variant in TEST_VARIANTS else "train"
                splits[split][0].append(flac_bytes(audio))
                splits[split][1].append(label)
    arrays: dict[str, np.ndarray] = {"sample_rate": np.array(SAMPLE_RATE)}
    for split, (encoded, labels) in splits.items():
        offsets = np.cumsum([0] + [len(e) for e in encoded])
        arrays[f"{split}_flac"] = np.concatenate(encoded)
        arrays[f"{split}_offsets"] = offsets.astype(np.int64)
        arrays[f"{split}_labels"] = np.array(labels, dtype=np.uint8)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(args.out, **arrays)
    sizes = {s: len(v[1]) for s, v in splits.items()}
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB): {sizes}")


if __name__ == "__main__":
    main()
