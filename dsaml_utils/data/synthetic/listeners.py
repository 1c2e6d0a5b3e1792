"""Simulated annotators: who they are, how they move the slider, and which songs each one rates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dsaml_utils.data.synthetic.config import (
    CONTROL_RATE,
    ListenerModel,
    SynthConfig,
    stream,
)


@dataclass
class Listener:
    """One simulated annotator; per-dimension parameters are (arousal, valence) pairs."""

    listener_id: str
    role: str  # "train", "test" or "lazy"
    offset: tuple[float, float]
    gain: tuple[float, float]
    lag: tuple[float, float]  # s
    tau: tuple[float, float]  # s
    squash: float
    noise: tuple[float, float]
    invert_valence: bool


def _worker_id(rng: np.random.Generator) -> str:
    """An MTurk-looking worker id."""
    chars = np.array(list("ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"))
    return "A" + "".join(rng.choice(chars, 13))


def make_listeners(cfg: SynthConfig) -> list[Listener]:
    """Draw all listeners: training, lazy and test groups, each with its inverted-valence minority."""
    lm = cfg.listener_model
    rng = stream(cfg, 1)
    out, used = [], set()
    for role, count in (("train", cfg.listeners), ("lazy", cfg.lazy_listeners), ("test", cfg.test_listeners)):
        k = int(round(lm.invert_fraction * count))
        if lm.invert_fraction > 0 and count >= 2:
            k = max(k, 1)  # every group of two or more has someone who hears valence the other way
        inverted = set(rng.permutation(count)[:k].tolist())
        for i in range(count):
            wid = _worker_id(rng)
            while wid in used:
                wid = _worker_id(rng)
            used.add(wid)
            pair = lambda draw: tuple(float(x) for x in draw(2))  # noqa: E731
            out.append(Listener(
                listener_id=wid, role=role,
                offset=pair(lambda k: rng.normal(0, lm.offset_sd, k)),
                gain=pair(lambda k: np.exp(rng.normal(0, lm.gain_log_sd, k))),
                lag=pair(lambda k: lm.lag_max * rng.beta(*lm.lag_beta, k)),
                tau=pair(lambda k: rng.uniform(*lm.tau_range, k)),
                squash=float(rng.uniform(*lm.squash_range)),
                noise=pair(lambda k: rng.uniform(*lm.noise_range, k)),
                invert_valence=role != "lazy" and i in inverted,
            ))
    return out


def annotate(lat: np.ndarray, lst: Listener, lm: ListenerModel, rng: np.random.Generator) -> np.ndarray:
    """One listener's slider trace [n, 2] on the control grid for a song's latent [n, 2]."""
    n = len(lat)
    if lst.role == "lazy":
        # Nudges the slider once in the first seconds, then leaves it (tiny jitter only).
        level = np.clip(np.asarray(lst.offset) + rng.normal(0, 0.1, 2), -0.8, 0.8)
        ramp = np.clip(np.arange(n) / (5 * CONTROL_RATE), 0, 1)[:, None]
        return np.clip(level * ramp + rng.normal(0, 0.002, (n, 2)), -1, 1)
    from scipy.signal import lfilter  # imported here: scipy.signal takes most of a second to import

    x = lat.copy()
    if lst.invert_valence:
        x[:, 1] = -x[:, 1]
    x = np.asarray(lst.offset) + rng.normal(0, lm.song_offset_sd, 2) + np.asarray(lst.gain) * x
    x = np.tanh(lst.squash * x) / lst.squash  # slope 1 at 0, saturates at 1 / squash
    y = np.zeros_like(x)
    for d in range(2):
        lag = int(round(lst.lag[d] * CONTROL_RATE))
        shifted = np.concatenate([np.zeros(lag), x[: n - lag, d]])  # slider at 0 until they react
        alpha = 1 - np.exp(-1 / (lst.tau[d] * CONTROL_RATE))
        smooth = lfilter([alpha], [1, alpha - 1], shifted)
        rho = np.exp(-1 / (lm.noise_memory * CONTROL_RATE))
        ar = lfilter([1.0], [1, -rho], rng.standard_normal(n)) * np.sqrt(1 - rho**2)
        y[:, d] = smooth + lst.noise[d] * ar
    return np.clip(y, -1, 1)


def assign(rng: np.random.Generator, song_ids: list[int], pool: list[int], k: int) -> dict[int, list[int]]:
    """Give every song k raters from `pool`, always choosing the least-used (ties at random)."""
    counts = {p: 0 for p in pool}
    out = {}
    for sid in song_ids:
        order = [pool[i] for i in rng.permutation(len(pool))]
        chosen = sorted(order, key=lambda p: counts[p])[:k]  # stable sort keeps the random tie order
        for p in chosen:
            counts[p] += 1
        out[sid] = sorted(chosen)
    return out
