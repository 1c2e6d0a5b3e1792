"""Band-limited resampling equal to torchaudio.functional.resample's default method (Hann-windowed sinc).

The rule (torchaudio/functional/functional.py, ``resample`` / ``_get_sinc_resample_kernel`` /
``_apply_sinc_resample_kernel``; the same in torchaudio 0.13.0, which ImageBind's requirements pinned
until 2024 and which calls the method "sinc_interpolation", and in 2.x, "sinc_interp_hann"): output
sample n of a signal x at rate f_in, resampled to f_out, is

    y[n] = sum_i x[i] * (c / f_in) * sinc(c * (i / f_in - n / f_out)) * cos(pi * u / (2 * w))^2,

with u = c * (i / f_in - n / f_out) clamped to [-w, w], cut-off c = rolloff * min(f_in, f_out), w =
lowpass_filter_width zero crossings, sinc(u) = sin(pi u) / (pi u) and x = 0 outside the signal. It is
evaluated as a polyphase filter on the gcd-reduced rates (f_in', f_out'): every block of f_out' outputs
reuses the same f_out' kernels, each 2 * ceil(w * f_in' / c') + f_in' taps long, shifted by f_in' inputs.
The output holds ceil(N * f_out / f_in) samples. Equal rates return the input unchanged.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_MAX_TABLE = 1 << 24  # kernel entries computed at once (rates with a large reduced ratio go in blocks)


def _reduced(orig_sr: int, new_sr: int, lowpass_filter_width: int, rolloff: float) -> tuple[int, int, float, int]:
    """gcd-reduced rates, the cut-off in their units and the kernel half-width, as torchaudio computes them."""
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    cutoff = min(orig, new) * rolloff  # the same float expressions as torchaudio, so `width` matches exactly
    return orig, new, cutoff, math.ceil(lowpass_filter_width * orig / cutoff)


def sinc_kernels(orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99,
                 phases: slice = slice(None)) -> tuple[np.ndarray, int]:
    """float64 kernels [n_phases, 2 * width + orig'] of the given output phases, and the half-width `width`.

    Phase j (0 <= j < new') is output sample q * new' + j; tap k reads input sample q * orig' + k - width.
    """
    orig, new, cutoff, width = _reduced(orig_sr, new_sr, lowpass_filter_width, rolloff)
    j = np.arange(new)[phases].astype(np.float64)
    k = np.arange(-width, width + orig, dtype=np.float64)
    u = cutoff * (k[None, :] / orig - j[:, None] / new)  # distance to the output instant, in cut-off periods
    u = np.clip(u, -lowpass_filter_width, lowpass_filter_width)
    hann = np.cos(np.pi * u / (2 * lowpass_filter_width)) ** 2
    return (cutoff / orig) * np.sinc(u) * hann, width


def resampled_length(n_samples: int, orig_sr: int, new_sr: int) -> int:
    """Samples torchaudio's resampler returns for n_samples: ceil(n_samples * new_sr / orig_sr)."""
    return -(-n_samples * new_sr // orig_sr) if orig_sr != new_sr else n_samples


def sinc_resample(wave, orig_sr: int, new_sr: int, lowpass_filter_width: int = 6, rolloff: float = 0.99):
    """Resample `wave` [..., time] (numpy or torch) from orig_sr to new_sr Hz as torchaudio's default does.

    Returns the input's kind (ndarray or tensor) in float32. Kernels are computed in float64 and applied in
    float32: the result equals torchaudio's on a float64 waveform to ~1e-6 (unit-variance noise). Given a
    float32 waveform, as ImageBind passes it, torchaudio evaluates its kernels in float32, which moves its
    own output by up to ~6e-5 for 44.1 or 22.05 kHz -> 16 kHz (~2e-7 for 48 kHz); that is the agreement
    with Meta's numbers (checked against torchaudio 0.13.0's code).
    """
    if int(orig_sr) != orig_sr or int(new_sr) != new_sr or orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_sr} -> {new_sr}")
    if lowpass_filter_width <= 0:
        raise ValueError(f"lowpass_filter_width must be positive, got {lowpass_filter_width}")
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    is_numpy = not isinstance(wave, torch.Tensor)
    x = torch.as_tensor(np.asarray(wave, dtype=np.float32) if is_numpy else wave, dtype=torch.float32)
    if orig_sr == new_sr:
        return x.numpy() if is_numpy else x
    orig, new, _, width = _reduced(orig_sr, new_sr, lowpass_filter_width, rolloff)
    shape, n = x.shape[:-1], x.shape[-1]
    taps = 2 * width + orig
    # Zero-pad so that every block q = 0 .. n // orig' has its taps [q * orig' - width, q * orig' + width + orig').
    padded = torch.nn.functional.pad(x.reshape(math.prod(shape), 1, n), (width, width + orig))
    rows = max(1, _MAX_TABLE // taps)
    blocks = []
    for start in range(0, new, rows):
        kernels, _ = sinc_kernels(orig_sr, new_sr, lowpass_filter_width, rolloff, slice(start, start + rows))
        weight = torch.from_numpy(kernels).float()[:, None, :]  # [phases, 1, taps]
        blocks.append(torch.nn.functional.conv1d(padded, weight, stride=orig))  # [B, phases, n // orig' + 1]
    out = torch.cat(blocks, dim=1).transpose(1, 2).reshape(padded.shape[0], -1)  # phase-interleaved
    out = out[:, :resampled_length(n, orig, new)].reshape(*shape, -1).contiguous()
    return out.numpy() if is_numpy else out
