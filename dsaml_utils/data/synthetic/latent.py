"""The hidden emotion of a song: sections that return, smooth drift within a section, and its label grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsaml_utils.data.synthetic.config import (
    CONTROL_RATE,
    CROSSFADE,
    LABEL_START,
    SECTION_SECONDS,
)
from dsaml_utils.data.types import HOP_SECONDS


@dataclass
class Section:
    """One section of a song's form, with its emotion."""

    start: float
    end: float
    letter: str
    variant: int  # 0 first time, 1 for A', ...
    arousal: float
    valence: float


def plan_sections(rng: np.random.Generator, duration: float) -> list[Section]:
    """A form such as A B A' C A with an emotion per section."""
    n = max(2, int(round(duration / rng.uniform(*SECTION_SECONDS))))
    weights = rng.uniform(0.7, 1.3, n)
    bounds = np.concatenate([[0.0], np.cumsum(weights) / weights.sum() * duration])
    letters = ["A"]
    for i in range(1, n):
        seen = sorted(set(letters) - {letters[-1]})
        if seen and rng.random() < 0.5:
            letters.append("A" if "A" in seen and rng.random() < 0.6 else seen[rng.integers(len(seen))])
        else:
            letters.append(chr(ord("A") + len(set(letters))))
    if n >= 3 and len(set(letters)) == n:
        letters[-1] = "A"  # make sure something returns
    centre = rng.uniform(-0.45, 0.45, 2)
    emotion = {ltr: centre + rng.normal(0.0, 0.38, 2) for ltr in sorted(set(letters))}
    sections, count = [], {}
    for i, ltr in enumerate(letters):
        variant = count.get(ltr, 0)
        count[ltr] = variant + 1
        a, v = np.clip(emotion[ltr] + (rng.normal(0.0, 0.1, 2) if variant else 0.0), -0.85, 0.85)
        sections.append(Section(float(bounds[i]), float(bounds[i + 1]), ltr, variant, float(a), float(v)))
    return sections


def latent_emotion(rng: np.random.Generator, sections: list[Section], n: int) -> np.ndarray:
    """[n, 2] (arousal, valence) on the control grid: drift and wobble inside sections, CROSSFADE between."""
    t = np.arange(n) / CONTROL_RATE
    lat = np.zeros((n, 2))
    for s in sections:
        m = (t >= s.start) & (t < s.end)
        tau = (t[m] - s.start) / max(s.end - s.start, 1e-6)  # 0..1 inside the section
        for d, base in enumerate((s.arousal, s.valence)):
            slope = rng.normal(0.0, 0.15)
            period = rng.uniform(4.0, 10.0)
            wobble = 0.05 * np.sin(2 * np.pi * (t[m] - s.start) / period + rng.uniform(0, 2 * np.pi))
            lat[m, d] = base + slope * (tau - 0.5) + wobble
    k = int(CROSSFADE * CONTROL_RATE)  # moving average smooths the boundaries
    padded = np.pad(lat, ((k // 2, k - 1 - k // 2), (0, 0)), mode="edge")
    kernel = np.ones(k) / k
    lat = np.stack([np.convolve(padded[:, d], kernel, mode="valid") for d in range(2)], axis=1)
    return np.clip(lat, -0.95, 0.95)


def label_times(duration: float) -> np.ndarray:
    """DEAM label times of a song: 15.0, 15.5, ... while t + 0.5 <= duration."""
    n = int(np.floor((duration - LABEL_START) / HOP_SECONDS + 1e-9))
    return LABEL_START + HOP_SECONDS * np.arange(max(n, 0))


def to_labels(x: np.ndarray, times: np.ndarray) -> np.ndarray:
    """A control-grid signal [n, ...] averaged over each label's [t, t + 0.5)."""
    k = int(CONTROL_RATE * HOP_SECONDS)
    starts = np.round(times * CONTROL_RATE).astype(int)
    idx = starts[:, None] + np.arange(k)[None, :]
    return x[np.minimum(idx, len(x) - 1)].mean(axis=1)
