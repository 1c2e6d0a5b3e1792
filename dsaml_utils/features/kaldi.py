"""ImageBind's audio input: Kaldi-compatible log-mel filterbanks of 2 s clips."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

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


CLIP_SPACINGS = ("pinned", "pytorchvideo-0.1.5")
"""Where ImageBind's clips go: "pinned" = the pytorchvideo commit ImageBind pins, start k * (d - clip) / (n - 1)
(first at 0, last ending at d); "pytorchvideo-0.1.5" = the PyPI release the DSAML authors pin, k * (d - clip) / n."""


def constant_clip_bounds(n_samples: int, sr: int, clip_seconds: float = 2.0, n_clips: int = 3,
                         clip_spacing: str = "pinned") -> list[tuple[int, int]]:
    """Sample ranges [a, b) of the `n_clips` clips that ImageBind cuts from a waveform of n_samples at sr.

    Rule of pytorchvideo's ConstantClipsPerVideoSampler as ImageBind's load_and_transform_audio_data calls it
    (facebookresearch/ImageBind imagebind/data.py; pytorchvideo/data/clip_sampling.py at the pinned commits
    28fe037 and 6cdc929): the duration is the float n_samples / sr; the last possible start
    Fraction(max(duration - clip, 0)) is split into n_clips - 1 steps ("pinned"; max(n_clips - 1, 1)) or
    n_clips steps ("pytorchvideo-0.1.5"); clip k covers [k * step, k * step + clip) s, and ImageBind slices
    samples int(start * sr) to int(end * sr) (truncation), cut to the waveform. A wave shorter than a clip
    gives the whole wave n_clips times.
    """
    if clip_spacing not in CLIP_SPACINGS:
        raise ValueError(f"unknown clip_spacing {clip_spacing!r}; choose one of {', '.join(CLIP_SPACINGS)}")
    clip = Fraction(clip_seconds)
    duration = n_samples / sr  # a float, as ImageBind passes waveform.size(1) / sample_rate
    last_start = Fraction(max(duration - float(clip), 0))  # float subtraction, then exact (sampler's rule)
    steps = max(n_clips - 1, 1) if clip_spacing == "pinned" else n_clips
    bounds = []
    for k in range(n_clips):
        start = last_start / steps * k
        bounds.append((int(start * sr), min(int((start + clip) * sr), n_samples)))
    return bounds


def imagebind_clips(wave16k, clip_seconds: float = 2.0, n_clips: int = 3, target_frames: int = 204,
                    mean: float = -4.268, std: float = 9.138, num_mel_bins: int = 128,
                    clip_spacing: str = "pinned", sample_rate: int = 16000) -> torch.Tensor:
    """ImageBind's audio input: [n_clips, 1, num_mel_bins, target_frames] normalised fbanks of a 16 kHz wave.

    Per clip (constant_clip_bounds, `clip_spacing` as there): subtract the clip's mean, kaldi_fbank,
    transpose to [mel, time], zero-pad or cut to target_frames (padding is 0 before normalisation, as
    ImageBind does), then (x - mean) / std. The wave is the one channel ImageBind's fbank reads (channel 0;
    see features.audio.load_audio_imagebind). `sample_rate`: the wave's rate, which the clip bounds and the
    fbank take as theirs (protocol "authors": 44100, as Littleor/Personalized-DMER models/image_bind.py passes
    sample_rate=44100 to load_and_transform_audio_data; a 2 s clip is then 198 frames of 1102 samples at a
    441-sample shift, the same count as at 16 kHz, padded to 204, and the mel bins reach 22.05 kHz).
    Deviations: a clip shorter than one 25 ms frame is zero-padded to a frame, where torchaudio fails; and
    each clip's own mean is subtracted. ImageBind subtracts it in place, over all channels, from a view of the
    whole waveform, so where clips overlap (pinned: a file under n_clips * clip_seconds) a later clip has a step
    of the earlier clip's mean; without overlap a constant offset cancels in the fbank's per-frame DC removal.
    """
    x = torch.as_tensor(wave16k, dtype=torch.float32).reshape(-1)
    frame = int(sample_rate * 25.0 * 0.001)
    out = []
    for a, b in constant_clip_bounds(len(x), sample_rate, clip_seconds, n_clips, clip_spacing):
        clip = x[a:b]
        clip = clip - clip.mean() if len(clip) else clip
        if len(clip) < frame:
            clip = torch.nn.functional.pad(clip, (0, frame - len(clip)))
        fb = kaldi_fbank(clip, num_mel_bins=num_mel_bins, sample_rate=sample_rate).T  # [mel, frames]
        gap = target_frames - fb.shape[1]
        fb = torch.nn.functional.pad(fb, (0, gap)) if gap > 0 else fb[:, :target_frames]
        out.append((fb - mean) / std)
    return torch.stack(out).unsqueeze(1)
