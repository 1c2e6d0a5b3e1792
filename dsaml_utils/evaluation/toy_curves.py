"""Toy annotation curves and the distortions that tell CCC, PCC and RMSE apart (notebook 06).

A prediction can go wrong in ways that each metric sees differently: an offset (right shape, wrong level),
a gain (right shape and level, too flat or too steep), a lag (the shape late by a few steps, as a listener
who reacts late), noise, or no shape at all (flat at the target's mean). `distort` makes each one from a
target curve (`toy_target`, one dimension on the 0.5 s label grid).
"""

from __future__ import annotations

import numpy as np

DISTORTIONS = ("offset", "gain", "lag", "noise", "flat")
"""The distortions `distort` knows, in the order notebook 06 shows them."""

DEFAULT_AMOUNTS = {"offset": 0.3, "gain": 0.5, "lag": 6, "noise": 0.15, "flat": 0.0}
"""`toy_predictions`' amount per distortion: +0.3, x0.5, 6 steps (3 s) late, noise sd 0.15, (flat: unused)."""


def toy_target(steps: int = 120, seed: int = 0) -> np.ndarray:
    """A smooth annotation-like curve of `steps` values in about [-0.6, 0.6] (two slow sines, random phases)."""
    if steps < 2:
        raise ValueError(f"need at least 2 steps, got {steps}")
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, size=2)
    i = np.arange(steps)
    return 0.4 * np.sin(2 * np.pi * i / 40 + phase[0]) + 0.15 * np.sin(2 * np.pi * i / 11 + phase[1])


def distort(target: np.ndarray, kind: str, amount: float = 0.0, seed: int = 0) -> np.ndarray:
    """The target under one distortion of `DISTORTIONS` (offset +amount, gain xamount around the mean,
    lag: amount steps late, the first held at the start value; noise: Gaussian sd amount; flat: the mean)."""
    t = np.asarray(target, dtype=np.float64)
    if t.ndim != 1 or len(t) == 0:
        raise ValueError(f"expected a non-empty 1-D curve, got shape {t.shape}")
    if kind == "offset":
        return t + amount
    if kind == "gain":
        return t.mean() + amount * (t - t.mean())
    if kind == "lag":
        k = int(amount)
        if k != amount or not 0 <= k < len(t):
            raise ValueError(f"lag must be a whole number of steps in [0, {len(t)}), got {amount}")
        return np.concatenate([np.full(k, t[0]), t[: len(t) - k]])
    if kind == "noise":
        return t + np.random.default_rng(seed).normal(0.0, amount, size=len(t))
    if kind == "flat":
        return np.full_like(t, t.mean())
    raise ValueError(f"unknown distortion {kind!r}; choose one of {', '.join(DISTORTIONS)}")


def toy_predictions(target: np.ndarray, amounts: dict[str, float] | None = None,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """{distortion: the target under it} for every distortion, amounts from DEFAULT_AMOUNTS unless given."""
    amounts = {**DEFAULT_AMOUNTS, **(amounts or {})}
    unknown = sorted(set(amounts) - set(DISTORTIONS))
    if unknown:
        raise ValueError(f"unknown distortion(s) {unknown}; choose from {', '.join(DISTORTIONS)}")
    return {kind: distort(target, kind, amounts[kind], seed=seed) for kind in DISTORTIONS}
