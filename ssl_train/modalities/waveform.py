"""Waveforms: float (T,) samples, standardised; the raw-input baseline probes the samples themselves."""

from __future__ import annotations

from ssl_train.modalities.sequence import SequenceModality


class WaveformModality(SequenceModality):
    """float (T,) waveforms (one feature per step); batches (B, T); the same standardisation as sequences."""

    name, holds, raw_input_name = "waveform", "waveforms", "raw waveform"


WAVEFORM = WaveformModality()
