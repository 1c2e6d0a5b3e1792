"""The model's local input: one log-mel spectrogram per 0.5 s slice, as the authors compute it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch


@dataclass
class MelConfig:
    """Log-mel settings for one 0.5 s slice; defaults are the authors' (torchaudio MelSpectrogram)."""

    sample_rate: int = 44100  # audio is resampled to this rate (Hz) before slicing
    n_mels: int = 128  # mel bands: HTK mel scale 2595*log10(1 + f/700), triangular, not area-normalised
    win_ms: float = 60.0  # hann window length = FFT length, in ms (2646 samples at 44.1 kHz)
    hop_ms: float = 10.0  # STFT hop in ms (441 samples at 44.1 kHz)
    f_min: float = 0.0  # lowest mel edge (Hz)
    f_max: float | None = None  # highest mel edge (Hz); None = Nyquist
    log_offset: float = 1e-6  # features are log(mel power + log_offset)
    center: bool = True  # reflect-pad half a window each side: a 0.5 s slice gives 1 + 22050 // 441 = 51 frames
    slice_seconds: float = 0.5  # one labelled slice (the 2 Hz label period)

    @property
    def win_length(self) -> int:
        """Window (and FFT) length in samples, truncated as the authors' int() does."""
        return int(self.sample_rate * self.win_ms / 1000)

    @property
    def hop_length(self) -> int:
        """STFT hop in samples."""
        return int(self.sample_rate * self.hop_ms / 1000)

    @property
    def slice_samples(self) -> int:
        """Samples in one slice."""
        return int(round(self.slice_seconds * self.sample_rate))

    @property
    def n_frames(self) -> int:
        """STFT frames per slice (51 with the defaults)."""
        s, w, h = self.slice_samples, self.win_length, self.hop_length
        # a centred STFT pads n_fft // 2 on each side (n_fft = win_length), which is w - 1 in all when w is odd
        return 1 + (s + 2 * (w // 2) - w) // h if self.center else 1 + (s - w) // h


def hz_to_mel(f):
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m):
    """Inverse of the HTK mel scale."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@lru_cache(maxsize=16)
def mel_filterbank(n_freqs: int, sample_rate: int, n_mels: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """[n_freqs, n_mels] triangular HTK mel filters over FFT bins 0 .. Nyquist (torchaudio's layout)."""
    f_max = sample_rate / 2 if f_max is None else f_max
    bin_hz = np.linspace(0.0, sample_rate // 2, n_freqs)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lo, mid, hi = edges[:-2], edges[1:-1], edges[2:]
    # Each filter rises linearly from its left edge to its centre and falls to its right edge (in Hz).
    rise = (bin_hz[:, None] - lo) / (mid - lo)
    fall = (hi - bin_hz[:, None]) / (hi - mid)
    return torch.from_numpy(np.maximum(0.0, np.minimum(rise, fall))).float()


def mel_centers(cfg: MelConfig) -> np.ndarray:
    """Centre frequency (Hz) of each mel band of `cfg`."""
    f_max = cfg.sample_rate / 2 if cfg.f_max is None else cfg.f_max
    return mel_to_hz(np.linspace(hz_to_mel(cfg.f_min), hz_to_mel(f_max), cfg.n_mels + 2))[1:-1]


def log_mel(slices, cfg: MelConfig | None = None, chunk: int = 128) -> torch.Tensor:
    """Log-mel of each slice: [T, S] waveform slices -> [T, n_frames, n_mels] float32."""
    cfg = cfg or MelConfig()
    x = torch.as_tensor(slices, dtype=torch.float32)
    if x.ndim != 2:
        raise ValueError(f"log_mel expects [T, S] slices, got shape {tuple(x.shape)}")
    n_fft = cfg.win_length
    fb = mel_filterbank(n_fft // 2 + 1, cfg.sample_rate, cfg.n_mels, cfg.f_min, cfg.f_max)
    window = torch.hann_window(n_fft, periodic=True)
    out = []
    # Batched STFT; chunks only bound memory for full-length songs (one complex spectrogram per chunk).
    for i in range(0, x.shape[0], chunk):
        spec = torch.stft(x[i:i + chunk], n_fft=n_fft, hop_length=cfg.hop_length, window=window,
                          center=cfg.center, pad_mode="reflect", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # [t, freq, frames]
        out.append(torch.log(power.transpose(1, 2) @ fb + cfg.log_offset))
    if not out:
        return torch.zeros(0, cfg.n_frames, cfg.n_mels)
    return torch.cat(out)
