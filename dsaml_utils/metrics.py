"""Agreement metrics between predicted and annotated valence/arousal curves, and the DSAML training loss.

Every metric is computed per song sequence (one curve of T values), then averaged over songs (PDMER:
over every (listener, song) query pair), as in the paper. Curves are [T, 2] arrays of (arousal, valence).

Conventions for sequences that make a metric undefined (a sequence whose variance is <= VAR_EPS counts
as constant), identical in the numpy and the torch versions:
- PCC and Kendall's tau are 0 when either sequence is constant (no linear / rank association).
- CCC = 2 cov / (var_p + var_t + (mean_p - mean_t)^2) is defined unless both sequences are constant and
  equal; then it is 1 (perfect agreement).
- R^2 = 1 - SS_res / SS_tot is 1 for a constant target predicted exactly and 0 otherwise (as scikit-learn).
Variances and covariances are population ones (divide by T).

Aggregation: `aggregate_songs` gives, per metric, the mean over songs and a 95% interval for that mean,
t-based by default (mean +- t_{0.975, n-1} * sd / sqrt(n), sd with ddof 1) or a percentile bootstrap over
songs with a fixed seed. `aggregate_seeds` gives mean +- std (ddof 1) over training seeds. Both return
NaN bounds / std when fewer than two values are given (an interval from one value does not exist).
A bounded metric's interval stays within the metric's range (`BOUNDS`: PCC, CCC and Kendall's tau in [-1, 1],
RMSE >= 0, R^2 <= 1): the t interval is clipped to it (the bootstrap's means are inside it already). The
mean of values in a range lies in it, so clipping drops only impossible values and keeps the coverage;
a few songs near +-1 can otherwise give e.g. [-1.59, 1.77]. Fisher's z was not used: it estimates one
common correlation, and tanh(mean z) is not the mean of per-song values that differ from song to song,
so its interval could even miss the reported mean.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np
import torch

VAR_EPS = 1e-12
"""A sequence whose (population) variance is at most this counts as constant."""

DIMENSIONS = ("arousal", "valence")
"""Column order of every [T, 2] curve and [B, T, 2] prediction."""

METRICS = ("ccc", "pcc", "rmse", "kendall_tau", "r2")
"""The per-song metrics that `score_song` reports for each dimension."""

BOUNDS = {"ccc": (-1.0, 1.0), "pcc": (-1.0, 1.0), "kendall_tau": (-1.0, 1.0), "rmse": (0.0, math.inf),
          "r2": (-math.inf, 1.0)}
"""The range of each metric's values, which its interval is kept within."""


# --------------------------------------------------------------------------------------------------
# numpy, one sequence


def _check_pair(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 1 or len(p) == 0:
        raise ValueError(f"expected two non-empty 1-D sequences of equal length, got {p.shape} and {t.shape}")
    if not (np.isfinite(p).all() and np.isfinite(t).all()):
        raise ValueError("sequences contain NaN or infinite values")
    return p, t


def ccc(pred: np.ndarray, target: np.ndarray) -> float:
    """Lin's concordance correlation coefficient of two sequences."""
    p, t = _check_pair(pred, target)
    vp, vt = p.var(), t.var()
    cov = np.mean((p - p.mean()) * (t - t.mean()))
    den = vp + vt + (p.mean() - t.mean()) ** 2
    return 1.0 if den <= VAR_EPS else float(2 * cov / den)


def pcc(pred: np.ndarray, target: np.ndarray) -> float:
    """Pearson correlation of two sequences (0 when either is constant)."""
    p, t = _check_pair(pred, target)
    vp, vt = p.var(), t.var()
    if vp <= VAR_EPS or vt <= VAR_EPS:
        return 0.0
    cov = np.mean((p - p.mean()) * (t - t.mean()))
    return float(cov / math.sqrt(vp * vt))


def rmse(pred: np.ndarray, target: np.ndarray) -> float:
    """Root mean squared error of two sequences."""
    p, t = _check_pair(pred, target)
    return float(np.sqrt(np.mean((p - t) ** 2)))


def kendall_tau(pred: np.ndarray, target: np.ndarray) -> float:
    """Kendall's tau-b of two sequences (0 when either is constant)."""
    p, t = _check_pair(pred, target)
    if p.var() <= VAR_EPS or t.var() <= VAR_EPS:
        return 0.0
    from scipy import stats  # imported here: scipy.stats costs half a second at import, every kernel would pay it

    return float(stats.kendalltau(p, t, variant="b").statistic)


def r2(pred: np.ndarray, target: np.ndarray) -> float:
    """Coefficient of determination of the prediction for the target."""
    p, t = _check_pair(pred, target)
    ss_res = float(np.sum((t - p) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    if ss_tot <= VAR_EPS * len(t):
        return 1.0 if ss_res <= VAR_EPS * len(t) else 0.0
    return 1.0 - ss_res / ss_tot


_FUNCS = {"ccc": ccc, "pcc": pcc, "rmse": rmse, "kendall_tau": kendall_tau, "r2": r2}


def score_song(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Every metric for one song's [T, 2] prediction, keyed "arousal_ccc", ..., "valence_r2"."""
    p = np.asarray(pred)
    t = np.asarray(target)
    if p.shape != t.shape or p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"expected prediction and target of shape [T, 2], got {p.shape} and {t.shape}")
    return {
        f"{dim}_{name}": fn(p[:, d], t[:, d])
        for d, dim in enumerate(DIMENSIONS)
        for name, fn in _FUNCS.items()
    }


# --------------------------------------------------------------------------------------------------
# aggregation


def interval(values: Iterable[float], method: str = "t", level: float = 0.95, n_boot: int = 2000,
             seed: int = 0, bounds: tuple[float, float] = (-math.inf, math.inf)) -> dict[str, float]:
    """Mean of per-song values and a confidence interval for it within `bounds`: {"mean", "lo", "hi", "n"}."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.ndim != 1 or len(v) == 0:
        raise ValueError("need at least one value to aggregate")
    mean = float(v.mean())
    n = len(v)
    if n < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": n}
    if method == "t":
        from scipy import stats

        half = stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n)
        lo, hi = mean - half, mean + half
    elif method == "bootstrap":
        rng = np.random.default_rng(seed)
        means = v[rng.integers(0, n, size=(n_boot, n))].mean(axis=1)
        lo, hi = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    else:
        raise ValueError(f"unknown interval method {method!r} (use 't' or 'bootstrap')")
    return {"mean": mean, "lo": float(max(lo, bounds[0])), "hi": float(min(hi, bounds[1])), "n": n}


def aggregate_songs(scores: Iterable[Mapping[str, float]], method: str = "t", level: float = 0.95,
                    seed: int = 0) -> dict[str, dict[str, float]]:
    """Per metric key, the mean over songs of `score_song` dicts and its interval (see `interval`), kept
    within the metric's `BOUNDS` for a key that names one ("valence_pcc")."""
    scores = list(scores)
    if not scores:
        raise ValueError("no song scores to aggregate")
    return {k: interval([s[k] for s in scores], method=method, level=level, seed=seed, bounds=metric_bounds(k))
            for k in scores[0]}


def metric_bounds(key: str) -> tuple[float, float]:
    """The range of the metric that a key such as "arousal_kendall_tau" names (unbounded for other keys)."""
    for name, bounds in BOUNDS.items():
        if key == name or key.endswith("_" + name):
            return bounds
    return (-math.inf, math.inf)


def aggregate_seeds(results: Iterable[Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Per metric key, mean and std (ddof 1) over runs with different seeds: {"mean", "std", "n"}."""
    results = list(results)
    if not results:
        raise ValueError("no seed results to aggregate")
    out = {}
    for k in results[0]:
        v = np.asarray([r[k] for r in results], dtype=np.float64)
        std = float(v.std(ddof=1)) if len(v) > 1 else math.nan
        out[k] = {"mean": float(v.mean()), "std": std, "n": len(v)}
    return out


# --------------------------------------------------------------------------------------------------
# torch, differentiable, over the time axis of [B, T, 2] with a [B, T] mask


def _moments(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None):
    """Masked per-song means, variances and covariance over time: each [B, 2]."""
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"expected pred and target of shape [B, T, C], got {tuple(pred.shape)} and "
                         f"{tuple(target.shape)}")
    if mask is None:
        w = torch.ones(pred.shape[:2], dtype=pred.dtype, device=pred.device)
    else:
        if mask.shape != pred.shape[:2]:
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match [B, T] = "
                             f"{tuple(pred.shape[:2])}")
        w = mask.to(pred.dtype)
    w = w.unsqueeze(-1)  # [B, T, 1]
    n = w.sum(1).clamp_min(1.0)  # [B, 1]; a song with no real step gives no NaN (but must not be passed)
    mp = (pred * w).sum(1) / n
    mt = (target * w).sum(1) / n
    dp = (pred - mp.unsqueeze(1)) * w
    dt = (target - mt.unsqueeze(1)) * w
    vp = (dp * dp).sum(1) / n
    vt = (dt * dt).sum(1) / n
    cov = (dp * dt).sum(1) / n
    return mp, mt, vp, vt, cov, w, n


def _ccc(mp, mt, vp, vt, cov):
    den = vp + vt + (mp - mt) ** 2
    ok = den > VAR_EPS
    return torch.where(ok, 2 * cov / torch.where(ok, den, torch.ones_like(den)), torch.ones_like(den))


def _pcc(vp, vt, cov):
    ok = (vp > VAR_EPS) & (vt > VAR_EPS)
    # The inner where keeps sqrt's gradient finite where the outer one discards the value.
    safe = torch.where(ok, vp * vt, torch.ones_like(vp))
    return torch.where(ok, cov / torch.sqrt(safe), torch.zeros_like(vp))


def _rmse(pred, target, w, n):
    mse = (((pred - target) * w) ** 2).sum(1) / n
    ok = mse > 0
    return torch.where(ok, torch.sqrt(torch.where(ok, mse, torch.ones_like(mse))), torch.zeros_like(mse))


def ccc_torch(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-song CCC over time, [B, 2], differentiable; padding (mask False) is ignored."""
    mp, mt, vp, vt, cov, _, _ = _moments(pred, target, mask)
    return _ccc(mp, mt, vp, vt, cov)


def pcc_torch(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-song Pearson correlation over time, [B, 2], differentiable; 0 where a sequence is constant."""
    _, _, vp, vt, cov, _, _ = _moments(pred, target, mask)
    return _pcc(vp, vt, cov)


def rmse_torch(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-song RMSE over time, [B, 2], differentiable (gradient 0 at an exact fit)."""
    _, _, _, _, _, w, n = _moments(pred, target, mask)
    return _rmse(pred, target, w, n)


def dsaml_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' loss 1 - mean(CCC, PCC, 1 - RMSE), per song and dimension, averaged over the batch."""
    mp, mt, vp, vt, cov, w, n = _moments(pred, target, mask)
    score = (_ccc(mp, mt, vp, vt, cov) + _pcc(vp, vt, cov) + 1 - _rmse(pred, target, w, n)) / 3
    return 1 - score.mean()


def mean_ccc(scores: list[dict[str, float]]) -> float:
    """Mean over songs of the mean of arousal and valence CCC (the validation score)."""
    return float(np.mean([np.mean([s[f"{d}_ccc"] for d in DIMENSIONS]) for s in scores]))
