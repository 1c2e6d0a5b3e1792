"""Audio files to float32 mono waveforms, and waveforms to the 0.5 s slices that labels describe.

Decoding is libsndfile (via soundfile: WAV, FLAC, OGG and MP3). ``load_audio`` mixes channels to mono and
resamples with soxr; ``load_audio_imagebind`` reads a file as ImageBind does (channel 0, torchaudio's
windowed-sinc resampler, ``features.resample``). The time convention
(label i covers ``[times[i], times[i] + 0.5)``) is written down once, in ``dsaml_utils.data``'s
docstring; ``slice_audio`` is the function that implements it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from dsaml_utils.errors import DataError
from dsaml_utils.features.resample import sinc_resample


def _decode(path: str | Path) -> tuple[np.ndarray, int]:
    """Decode an audio file to float32 samples [n, channels] in [-1, 1] and its sample rate."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: audio file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: audio file is empty (0 bytes)")
    try:
        wave, native_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, ValueError) as exc:
        # For an undecodable file libsndfile says it "does not exist"; we know it does, so drop that.
        detail = "" if "does not exist" in str(exc) else f": {exc}"
        raise DataError(f"{path}: cannot decode audio (corrupt or unsupported format){detail}") from exc
    if wave.shape[0] == 0:
        raise DataError(f"{path}: audio file holds no samples")
    return wave, int(native_sr)


def load_audio(path: str | Path, sr: int | None = None) -> tuple[np.ndarray, int]:
    """Decode an audio file to a float32 mono waveform in [-1, 1], resampled to `sr` when given."""
    wave, native_sr = _decode(path)
    wave = wave.mean(axis=1) if wave.shape[1] > 1 else wave[:, 0]  # mix channels to mono
    if not np.isfinite(wave).all():
        raise DataError(f"{path}: decoded audio contains NaN or infinite samples")
    if sr is not None and sr != native_sr:
        wave = soxr.resample(wave, native_sr, sr, quality="HQ")
        native_sr = sr
    return np.ascontiguousarray(wave, dtype=np.float32), int(native_sr)


def load_audio_imagebind(path: str | Path, sr: int = 16000) -> tuple[np.ndarray, int]:
    """Decode an audio file as ImageBind reads it: channel 0 (not a mix), resampled to `sr` by windowed sinc.

    Meta's data.load_and_transform_audio_data (facebookresearch/ImageBind imagebind/data.py) reads the file
    with torchaudio.load, resamples every channel with torchaudio.functional.resample (default method) when
    the rate differs, and its Kaldi fbank (torchaudio.compliance.kaldi, channel=-1 -> max(channel, 0)) then
    reads channel 0 only; resampling is per channel, so resampling channel 0 alone gives the same samples.
    Decoding here is libsndfile (same PCM scaling as torchaudio.load for WAV/FLAC; MP3 decoders may differ).
    """
    wave, native_sr = _decode(path)
    if not np.isfinite(wave).all():
        raise DataError(f"{path}: decoded audio contains NaN or infinite samples")
    first = np.ascontiguousarray(wave[:, 0])
    if sr != native_sr:
        first = sinc_resample(first, native_sr, sr)
    return np.ascontiguousarray(first, dtype=np.float32), int(sr)


def slice_audio(wave: np.ndarray, sr: int, times, hop: float = 0.5) -> np.ndarray:
    """Cut slice i = [times[i], times[i] + hop) out of `wave`: a [T, round(hop * sr)] float32 array.

    Rounding: slice i starts at sample ``round(times[i] * sr)`` (numpy rounding, half to even; exact for
    the 0.5 s grid at 44.1 or 16 kHz) and holds ``round(hop * sr)`` samples. Samples before 0 or past the
    end of the waveform are zeros.
    """
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1:
        raise ValueError(f"slice_audio expects a mono 1-D waveform, got shape {wave.shape}")
    length = int(round(hop * sr))
    starts = np.round(np.asarray(times, dtype=np.float64) * sr).astype(np.int64)
    if len(starts) == 0:
        return np.zeros((0, length), dtype=np.float32)
    # Zero-pad both ends just enough that every window lies inside, then gather the windows.
    left = max(0, -int(starts.min()))
    right = max(0, int(starts.max()) + length - len(wave))
    padded = np.pad(wave, (left, right))
    windows = np.lib.stride_tricks.sliding_window_view(padded, length)
    return np.ascontiguousarray(windows[starts + left])
