"""Spectral features: the per-slice log-mel the model reads, ImageBind's Kaldi fbank, and a disk cache.

Everything here is plain torch (torchaudio does not work on this machine). ``log_mel`` reproduces the
authors' ``torchaudio.transforms.MelSpectrogram`` call; ``kaldi_fbank`` reproduces
``torchaudio.compliance.kaldi.fbank`` for the options ImageBind uses; ``FeatureCache`` stores computed
arrays keyed by the audio file's content and every setting, so a second run recomputes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
import zipfile
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from dsaml_utils.audio import audio_digest, load_audio, slice_audio
from dsaml_utils.data import MEAN, MusicDataset, Song
from dsaml_utils.errors import DataError

FEATURE_VERSION = 1
"""Bumped whenever the feature code changes what it computes, so old cache entries stop matching."""


# ---------------------------------------------------------------------------------------------------
# Per-slice log-mel (the model's local input)


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


# ---------------------------------------------------------------------------------------------------
# Kaldi fbank and ImageBind's audio preprocessing (the global encoder's input)

_EPS = float(torch.finfo(torch.float32).eps)  # Kaldi's floor before the log


def _kaldi_mel(f):
    return 1127.0 * np.log1p(np.asarray(f, dtype=np.float64) / 700.0)


def kaldi_mel_banks(num_bins: int, padded_window: int, sample_rate: float, low_freq: float = 20.0,
                    high_freq: float = 0.0) -> torch.Tensor:
    """[num_bins, padded_window // 2 + 1] Kaldi mel filters (mel = 1127 ln(1 + f/700)); Nyquist column 0."""
    nyquist = 0.5 * sample_rate
    high = high_freq + nyquist if high_freq <= 0.0 else high_freq
    if not (0.0 <= low_freq < nyquist and 0.0 < high <= nyquist and low_freq < high):
        raise ValueError(f"bad mel range: low_freq {low_freq}, high_freq {high_freq}, nyquist {nyquist}")
    lo, hi = _kaldi_mel(low_freq), _kaldi_mel(high)
    delta = (hi - lo) / (num_bins + 1)  # bins are evenly spaced in mel, edges shared with neighbours
    b = np.arange(num_bins)[:, None]
    left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    fft_mel = _kaldi_mel(sample_rate / padded_window * np.arange(padded_window // 2))[None, :]
    w = np.maximum(0.0, np.minimum((fft_mel - left) / (centre - left), (right - fft_mel) / (right - centre)))
    return torch.from_numpy(np.pad(w, ((0, 0), (0, 1)))).float()


def kaldi_mel_centers(num_bins: int, sample_rate: float, low_freq: float = 20.0,
                      high_freq: float = 0.0) -> np.ndarray:
    """Centre frequency (Hz) of each Kaldi mel bin."""
    high = high_freq + 0.5 * sample_rate if high_freq <= 0.0 else high_freq
    lo, hi = _kaldi_mel(low_freq), _kaldi_mel(high)
    centre = lo + (np.arange(num_bins) + 1) * (hi - lo) / (num_bins + 1)
    return 700.0 * (np.exp(centre / 1127.0) - 1.0)


def _kaldi_window(kind: str, n: int) -> torch.Tensor:
    if kind == "hanning":
        return torch.hann_window(n, periodic=False)
    if kind == "povey":
        return torch.hann_window(n, periodic=False).pow(0.85)
    if kind == "hamming":
        return torch.hamming_window(n, periodic=False, alpha=0.54, beta=0.46)
    if kind == "rectangular":
        return torch.ones(n)
    raise ValueError(f"unknown window_type {kind!r} (hanning, povey, hamming, rectangular)")


def kaldi_fbank(wave16k, num_mel_bins: int = 128, frame_length_ms: float = 25.0,
                frame_shift_ms: float = 10.0, sample_rate: float = 16000.0, low_freq: float = 20.0,
                high_freq: float = 0.0, preemphasis: float = 0.97, remove_dc_offset: bool = True,
                window_type: str = "hanning", round_to_power_of_two: bool = True) -> torch.Tensor:
    """Log mel filterbank [frames, num_mel_bins] equal to torchaudio.compliance.kaldi.fbank.

    Reproduced with the same defaults as torchaudio: frame length/shift (samples = int(rate * ms *
    0.001)), snip_edges=True (frames = 1 + (N - length) // shift, only whole frames), per-frame DC
    removal, preemphasis x[j] - c * x[j-1] with x[-1] := x[0], window_type, zero-padding the frame to a
    power of two for the FFT, power spectrum (use_power=True), Kaldi mel banks over [low_freq, high_freq]
    (high_freq <= 0 is an offset from Nyquist), log(max(energy, float32 eps)) (use_log_fbank=True).
    Fixed to ImageBind's choices: dither=0, use_energy=False (so energy_floor, raw_energy and htk_compat,
    which only place the energy column, have no effect), no VTLN warp, subtract_mean=False,
    min_duration=0, mono input. ImageBind passes window_type="hanning" (this function's default;
    Kaldi's own default is "povey").
    """
    x = torch.as_tensor(wave16k, dtype=torch.float32).reshape(-1)
    shift = int(sample_rate * frame_shift_ms * 0.001)
    length = int(sample_rate * frame_length_ms * 0.001)
    padded = 2 ** (length - 1).bit_length() if round_to_power_of_two else length
    if length < 2 or shift < 1 or padded % 2:
        raise ValueError(f"bad frame settings: length {length}, shift {shift}, padded {padded}")
    if len(x) < length:
        raise ValueError(f"waveform of {len(x)} samples is shorter than one {length}-sample frame")
    frames = x.unfold(0, length, shift)  # [m, length], m = 1 + (N - length) // shift
    if remove_dc_offset:
        frames = frames - frames.mean(dim=1, keepdim=True)
    if preemphasis != 0.0:
        previous = torch.cat([frames[:, :1], frames[:, :-1]], dim=1)
        frames = frames - preemphasis * previous
    frames = frames * _kaldi_window(window_type, length)
    power = torch.fft.rfft(frames, n=padded).abs().square()  # rfft zero-pads to `padded`
    banks = kaldi_mel_banks(num_mel_bins, padded, sample_rate, low_freq, high_freq)
    return (power @ banks.T).clamp_min(_EPS).log()


def constant_clip_bounds(n_samples: int, sr: int, clip_seconds: float = 2.0,
                         n_clips: int = 3) -> list[tuple[int, int]]:
    """Sample ranges of `n_clips` clips spread as pytorchvideo's ConstantClipsPerVideoSampler does.

    Clip k starts at k * max(duration - clip_seconds, 0) / n_clips seconds (exact fractions, then
    int(seconds * sr) as ImageBind slices); ranges past the end are cut to the waveform.
    """
    duration = Fraction(n_samples, sr)
    clip = Fraction(clip_seconds)
    step = max(duration - clip, Fraction(0)) / n_clips
    bounds = []
    for k in range(n_clips):
        start = step * k
        bounds.append((int(start * sr), min(int((start + clip) * sr), n_samples)))
    return bounds


def imagebind_clips(wave16k, clip_seconds: float = 2.0, n_clips: int = 3, target_frames: int = 204,
                    mean: float = -4.268, std: float = 9.138, num_mel_bins: int = 128) -> torch.Tensor:
    """ImageBind's audio input: [n_clips, 1, num_mel_bins, target_frames] normalised fbanks of a 16 kHz wave.

    Per clip: subtract the clip's mean, kaldi_fbank, transpose to [mel, time], zero-pad or cut to
    target_frames (padding is 0 before normalisation, as ImageBind does), then (x - mean) / std.
    One deviation: a clip shorter than one 25 ms frame is zero-padded to a frame, where torchaudio fails.
    """
    x = torch.as_tensor(wave16k, dtype=torch.float32).reshape(-1)
    frame = int(16000 * 25.0 * 0.001)
    out = []
    for a, b in constant_clip_bounds(len(x), 16000, clip_seconds, n_clips):
        clip = x[a:b]
        clip = clip - clip.mean() if len(clip) else clip
        if len(clip) < frame:
            clip = torch.nn.functional.pad(clip, (0, frame - len(clip)))
        fb = kaldi_fbank(clip, num_mel_bins=num_mel_bins).T  # [mel, frames]
        gap = target_frames - fb.shape[1]
        fb = torch.nn.functional.pad(fb, (0, gap)) if gap > 0 else fb[:, :target_frames]
        out.append((fb - mean) / std)
    return torch.stack(out).unsqueeze(1)


# ---------------------------------------------------------------------------------------------------
# Disk cache and per-song features


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    raise TypeError(f"cache key value of type {type(obj).__name__} is not JSON-serialisable")


class FeatureCache:
    """Arrays on disk at root/<kind>/<hash of key>.npz, written atomically and reused across runs."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.hits = 0  # entries read back from disk
        self.misses = 0  # entries computed (and written)

    @staticmethod
    def key_text(key: dict) -> str:
        """The canonical JSON text of a key (sorted, compact); its sha256 names the file."""
        return json.dumps(key, sort_keys=True, separators=(",", ":"), default=_jsonable)

    def path_for(self, kind: str, key: dict) -> Path:
        """Where the entry for (kind, key) lives."""
        if not kind or not kind.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"cache kind must be a simple name, got {kind!r}")
        digest = hashlib.sha256(self.key_text(key).encode()).hexdigest()[:40]
        return self.root / kind / f"{digest}.npz"

    def get_or_compute(self, kind: str, key: dict, compute: Callable[[], np.ndarray | dict]):
        """The cached value for (kind, key), or compute(), store it and return it (same type)."""
        path, text = self.path_for(kind, key), self.key_text(key)
        value = self._read(path, text)
        if value is not None:
            self.hits += 1
            return value
        value = compute()
        self._write(path, text, value)
        self.misses += 1
        return value

    def _read(self, path: Path, text: str):
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["__key__"]) != text:  # a hash collision or a foreign file: treat as absent
                    return None
                if "__array__" in z.files:
                    return z["__array__"]
                return {k: z[k] for k in z.files if k != "__key__"}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # unreadable (e.g. a crash mid-write by another tool): recompute and overwrite

    def _write(self, path: Path, text: str, value) -> None:
        if isinstance(value, np.ndarray):
            payload = {"__array__": value}
        elif isinstance(value, dict) and all(isinstance(v, np.ndarray) for v in value.values()):
            if any(k.startswith("__") for k in value):
                raise ValueError("cached dict keys must not start with '__'")
            payload = dict(value)
        else:
            raise TypeError(f"compute() must return an ndarray or a dict of ndarrays, got {type(value).__name__}")
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, __key__=np.array(text), **payload)
            os.replace(tmp, path)  # atomic: readers see the old entry or the whole new one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def song_features(song: Song, cfg: MelConfig, cache: FeatureCache, listener_times=None,
                  wave_sr: int | None = None) -> dict[str, np.ndarray]:
    """Cached features of one song at its label times: "mel" [T, n_frames, n_mels], "times" [T] and,
    when wave_sr is given, "wave" [T, round(slice_seconds * wave_sr)] raw slices at that rate.

    Times are the MEAN curve's unless listener_times is given; slice i covers [t_i, t_i + slice_seconds).
    """
    if song.audio_path is None:
        raise DataError(f"song {song.song_id}: no audio file")
    if listener_times is None:
        if MEAN not in song.curves:
            raise DataError(f"song {song.song_id}: no '{MEAN}' curve to take label times from")
        listener_times = song.curves[MEAN].times
    times = np.asarray(listener_times, dtype=np.float64)
    base = {"audio": audio_digest(song.audio_path), "times": times, "slice_seconds": cfg.slice_seconds,
            "version": FEATURE_VERSION}

    def mel() -> np.ndarray:
        wave, sr = load_audio(song.audio_path, cfg.sample_rate)
        return log_mel(slice_audio(wave, sr, times, cfg.slice_seconds), cfg).numpy()

    out = {"times": times, "mel": cache.get_or_compute("mel", {**base, "cfg": cfg}, mel)}
    if wave_sr is not None:
        def raw() -> np.ndarray:
            wave, sr = load_audio(song.audio_path, wave_sr)
            return slice_audio(wave, sr, times, cfg.slice_seconds)

        out["wave"] = cache.get_or_compute("wave", {**base, "sr": int(wave_sr)}, raw)
    return out


def dataset_features(ds: MusicDataset, song_ids: list[str], cfg: MelConfig, cache: FeatureCache,
                     wave_sr: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """song_features for each song; a song whose audio fails is noted in ds.problems and skipped."""
    out = {}
    for sid in tqdm(song_ids, desc="features", unit="song"):
        try:
            out[sid] = song_features(ds.songs[sid], cfg, cache, wave_sr=wave_sr)
        except DataError as exc:
            ds.problems.append(f"features skipped for song {sid}: {exc}")
    return out
