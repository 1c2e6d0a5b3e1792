"""A listener's traits (offset, gain, valence inversion, reaction lag per dimension): applied to a curve the
way the synthetic generator applies them, fitted back from a pair of curves, and what personalizing on one
song recovers of them.

The synthetic generator (`data.synthetic.listeners.annotate`) turns a song's true curve x into a listener's
slider trace: valence negated if they hear it inverted, then ``offset + gain * x`` per dimension, a tanh
squash, a reaction lag (the slider stays at 0 until they react), smoothing and noise. `apply_traits` does
the first four on any [T, 2] curve on the 2 Hz label grid (lags round to 0.5 s); `fit_traits` inverts
them: for each lag up to ``max_lag`` it regresses ``curve[t]`` on ``reference[t - lag]`` over the steps
both cover, keeps the lag with the largest |correlation|, and reads intercept = offset, |slope| = gain,
slope < 0 = inverted. Without squash, clipping, smoothing and noise the fit is exact.

Fitted against a model's own prediction (the adapted prediction regressed on the average model's or on
the un-adapted one), the same numbers say which traits the few adaptation steps moved the model towards.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn as nn

from dsaml_utils.data.synthetic.analysis import load_truth
from dsaml_utils.data.synthetic.config import TRUTH_DIR
from dsaml_utils.data.types import MEAN
from dsaml_utils.features.songs import SongData, align_curve
from dsaml_utils.meta.listener import adapt_to_listener, support_items
from dsaml_utils.meta.maml import MetaConfig
from dsaml_utils.metrics import DIMENSIONS, VAR_EPS, ccc, rmse, score_song
from dsaml_utils.models.inference import predict_song

LABEL_RATE = 2.0  # Hz of every label curve
TRAIT_ROWS = ("arousal offset", "arousal gain", "arousal inverted", "arousal lag (s)", "arousal fit r",
              "valence offset", "valence gain", "valence inverted", "valence lag (s)", "valence fit r")
"""The rows of `traits_table`: four traits per dimension and the correlation of the fit that found them."""
TRAIT_LISTENER = "traits"
"""The listener id `with_listener` gives a listener made from traits."""


@dataclass(frozen=True)
class Traits:
    """A listener's traits per dimension (arousal, valence); `corr` is the fit's correlation (None when given)."""

    offset: tuple[float, float] = (0.0, 0.0)
    gain: tuple[float, float] = (1.0, 1.0)
    inverted: tuple[bool, bool] = (False, False)
    lag: tuple[float, float] = (0.0, 0.0)  # s
    corr: tuple[float, float] | None = None

    def row(self) -> dict[str, float]:
        """The traits keyed by TRAIT_ROWS (fit r NaN when given rather than fitted)."""
        out = {}
        for d, dim in enumerate(DIMENSIONS):
            out.update({f"{dim} offset": float(self.offset[d]), f"{dim} gain": float(self.gain[d]),
                        f"{dim} inverted": bool(self.inverted[d]), f"{dim} lag (s)": float(self.lag[d]),
                        f"{dim} fit r": float(self.corr[d]) if self.corr is not None else float("nan")})
        return out


def traits_from_record(record: Mapping) -> Traits:
    """The true Traits of one listener record of synthetic_truth/listeners.json (arousal is never inverted)."""
    return Traits(offset=tuple(float(x) for x in record["offset"]), gain=tuple(float(x) for x in record["gain"]),
                  inverted=(False, bool(record["invert_valence"])), lag=tuple(float(x) for x in record["lag"]))


def true_traits(root: str | Path) -> dict[str, Traits]:
    """Listener id -> true Traits of a synthetic dataset; {} when the root has no synthetic truth (real data)."""
    path = Path(root) / TRUTH_DIR / "listeners.json"
    if not path.is_file():
        return {}
    return {r["listener_id"]: traits_from_record(r) for r in json.loads(path.read_text())}


def true_curves(root: str | Path, store: Mapping[str, SongData]) -> dict[str, np.ndarray]:
    """Song id -> the hidden true curve [T, 2] on each song's label grid; {} without synthetic truth."""
    if not (Path(root) / TRUTH_DIR / "truth.npz").is_file():
        return {}
    truth = load_truth(root)[0]
    return {sid: align_curve(truth[sid], sd.times) for sid, sd in store.items() if sid in truth}


def apply_traits(curve: np.ndarray, traits: Traits, squash: float | None = None, rate: float = LABEL_RATE,
                 clip: bool = True) -> np.ndarray:
    """A listener's [T, 2] curve made from `curve` [T, 2] as the synthetic generator does: inversion, offset +
    gain, optional tanh squash, lag (slider at 0 before it), clipped to [-1, 1]; no smoothing or noise."""
    x = np.array(curve, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"expected a [T, 2] curve, got {x.shape}")
    sign = np.where(np.asarray(traits.inverted, dtype=bool), -1.0, 1.0)
    x = np.asarray(traits.offset, dtype=np.float64) + np.asarray(traits.gain, dtype=np.float64) * sign * x
    if squash:
        x = np.tanh(squash * x) / squash
    y = np.zeros_like(x)
    for d in range(2):
        lag = int(round(traits.lag[d] * rate))
        if lag < 0:
            raise ValueError(f"lag {traits.lag[d]} s: a listener reacts after the music, lags are >= 0")
        y[lag:, d] = x[: len(x) - lag, d]
    return np.clip(y, -1, 1) if clip else y


def _fit_dim(ref: np.ndarray, y: np.ndarray, max_steps: int, min_overlap: int) -> tuple[float, float, int, float]:
    """(intercept, slope, lag in steps, correlation) of y[t] ~ a + b * ref[t - lag], the best |corr| lag."""
    best = None
    for lag in range(0, min(max_steps, len(y) - min_overlap) + 1):
        r, v = ref[: len(ref) - lag], y[lag:]
        ok = np.isfinite(r) & np.isfinite(v)
        r, v = r[ok], v[ok]
        if len(r) < min_overlap:
            continue
        vr, vv = r.var(), v.var()
        if vr <= VAR_EPS:
            continue
        cov = ((r - r.mean()) * (v - v.mean())).mean()
        corr = cov / np.sqrt(vr * vv) if vv > VAR_EPS else 0.0
        if best is None or abs(corr) > abs(best[3]) + 1e-9:
            slope = cov / vr
            best = (float(v.mean() - slope * r.mean()), float(slope), lag, float(corr))
    if best is None:
        return float("nan"), float("nan"), 0, float("nan")
    return best


def fit_traits(reference: np.ndarray, curve: np.ndarray, max_lag: float = 3.0, rate: float = LABEL_RATE,
               min_overlap: int = 4) -> Traits:
    """The Traits that best turn `reference` [T, 2] into `curve` [T, 2]: per dimension the lag (<= max_lag s)
    with the largest |correlation| of curve[t] and reference[t - lag], then least squares at that lag."""
    ref, y = np.asarray(reference, dtype=np.float64), np.asarray(curve, dtype=np.float64)
    if ref.shape != y.shape or ref.ndim != 2 or ref.shape[1] != 2:
        raise ValueError(f"expected two [T, 2] curves, got {ref.shape} and {y.shape}")
    fits = [_fit_dim(ref[:, d], y[:, d], int(round(max_lag * rate)), min_overlap) for d in range(2)]
    return Traits(offset=tuple(f[0] for f in fits), gain=tuple(abs(f[1]) for f in fits),
                  inverted=tuple(bool(f[1] < 0) for f in fits), lag=tuple(f[2] / rate for f in fits),
                  corr=tuple(f[3] for f in fits))


def mean_traits(fits: Sequence[Traits]) -> Traits:
    """Traits fitted on several songs summarised: mean offset, gain, lag and corr; inverted by majority."""
    if not fits:
        raise ValueError("no fitted traits to summarise")

    def avg(field: str) -> tuple[float, float]:
        return tuple(float(np.nanmean([getattr(f, field)[d] for f in fits])) for d in range(2))

    inverted = tuple(bool(np.mean([f.inverted[d] for f in fits]) > 0.5) for d in range(2))
    corr = avg("corr") if all(f.corr is not None for f in fits) else None
    return Traits(offset=avg("offset"), gain=avg("gain"), inverted=inverted, lag=avg("lag"), corr=corr)


def traits_table(columns: Mapping[str, Traits], digits: int = 3) -> pd.DataFrame:
    """One row per trait (TRAIT_ROWS), one column per source (e.g. "true", "adapted vs average model"),
    numbers rounded to `digits`."""
    def cells(t: Traits) -> pd.Series:
        return pd.Series({k: v if isinstance(v, bool) else round(v, digits) for k, v in t.row().items()}, dtype=object)

    df = pd.DataFrame({name: cells(t) for name, t in columns.items()})
    df.index.name = "trait"
    return df.reindex(list(TRAIT_ROWS))


def error_parts(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """Each dimension's MSE of a [T, 2] prediction split into bias^2 (means), scale^2 (standard deviations)
    and shape 2 sd_p sd_t (1 - r), keyed "arousal_bias2", ...; the three add up to RMSE^2. "_bias" is the
    signed mean difference (prediction minus target)."""
    p, t = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"expected prediction and target of shape [T, 2], got {p.shape} and {t.shape}")
    out = {}
    for d, dim in enumerate(DIMENSIONS):
        sp, st = p[:, d].std(), t[:, d].std()
        cov = ((p[:, d] - p[:, d].mean()) * (t[:, d] - t[:, d].mean())).mean()
        r = cov / (sp * st) if sp * sp > VAR_EPS and st * st > VAR_EPS else 0.0
        out[f"{dim}_bias"] = float(p[:, d].mean() - t[:, d].mean())
        out[f"{dim}_bias2"] = out[f"{dim}_bias"] ** 2
        out[f"{dim}_scale2"] = float((sp - st) ** 2)
        out[f"{dim}_shape"] = float(2 * sp * st * (1 - r))
    return out


PREDICTIONS = ("personalized (1 song)", "meta-trained, not adapted", "average-listener model")
"""The three predictions notebook 08 compares, in its order."""


def listener_predictions(adapter: "ListenerAdapter", listener: str, sid: str, average: Mapping[str, np.ndarray],
                         key: object | None = None) -> dict[str, np.ndarray]:
    """PREDICTIONS -> [T, 2] on song `sid` over the listener's labelled span; "personalized" is adapter key
    `key` (default: `listener`), adapted first."""
    sl = slice(*adapter.store[sid].span(listener))
    key = listener if key is None else key
    return dict(zip(PREDICTIONS, (adapter.predict(sid, key)[sl], adapter.predict(sid)[sl],
                                  np.asarray(average[sid])[sl])))


def listener_scores(adapter: "ListenerAdapter", listener: str, songs: Sequence[str],
                    average: Mapping[str, np.ndarray], key: object | None = None) -> pd.DataFrame:
    """One row per (song, prediction): every metric (`score_song`) and the MSE split (`error_parts`) against
    the listener's curve; "personalized" is adapter key `key` (default: `listener`), adapted first."""
    rows = []
    for sid in songs:
        sd = adapter.store[sid]
        truth = sd.labels[listener][slice(*sd.span(listener))]
        for name, p in listener_predictions(adapter, listener, sid, average, key).items():
            rows.append({"song": sid, "prediction": name, **score_song(p, truth), **error_parts(p, truth)})
    return pd.DataFrame(rows)


def personalization_gaps(adapter: "ListenerAdapter", listeners: Mapping[str, Sequence[str]],
                         average: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """Per listener (adapted on their first song): personalized minus average-listener model, each metric and
    MSE term averaged over their other songs (positive RMSE or bias^2: personalizing made it worse)."""
    keys = [f"{dim}_{k}" for dim in DIMENSIONS for k in ("ccc", "rmse", "bias2", "scale2", "shape")]
    rows = {}
    for lst, songs in listeners.items():
        adapter.adapt(lst, songs[0], lst)
        means = listener_scores(adapter, lst, songs[1:], average).groupby("prediction")[keys].mean()
        rows[lst] = means.loc[PREDICTIONS[0]] - means.loc[PREDICTIONS[2]]
    df = pd.DataFrame(rows).T
    df.index.name = "listener"
    return df


def recovered_traits(adapter: "ListenerAdapter", listener: str, songs: Sequence[str],
                     average: Mapping[str, np.ndarray], truth: Mapping[str, np.ndarray] | None = None,
                     max_lag: float = 3.0) -> dict[str, Traits]:
    """The listener's traits fitted on each of `songs` (over their labelled span) and averaged: in their own
    curves against the hidden true curve (when `truth` has the song) and against the MEAN curve, and in the
    adapted prediction (adapter key `listener`) against the un-adapted one and the `average` model's."""
    fits: dict[str, list[Traits]] = {"their curves vs true curve": [], "their curves vs MEAN": [],
                                     "adapted vs not adapted": [], "adapted vs average model": []}
    for sid in songs:
        sd = adapter.store[sid]
        start, stop = sd.span(listener)
        sl = slice(start, stop)
        mine, adapted = sd.labels[listener][sl], adapter.predict(sid, listener)[sl]
        if truth is not None and sid in truth:
            fits["their curves vs true curve"].append(fit_traits(truth[sid][sl], mine, max_lag))
        fits["their curves vs MEAN"].append(fit_traits(sd.labels[MEAN][sl], mine, max_lag))
        fits["adapted vs not adapted"].append(fit_traits(adapter.predict(sid)[sl], adapted, max_lag))
        fits["adapted vs average model"].append(fit_traits(np.asarray(average[sid])[sl], adapted, max_lag))
    return {name: mean_traits(f) for name, f in fits.items() if f}


def recovery_table(true: Mapping[str, Traits], recovered: Mapping[str, Mapping[str, Traits]]) -> pd.DataFrame:
    """How well each source (name -> listener -> fitted Traits) tracks the true traits over listeners: the
    correlation of true and fitted offset, gain and lag per dimension (NaN under 3 listeners) and the share
    of listeners whose valence inversion it gets right."""
    rows = {}
    for name, fitted in recovered.items():
        ids = [k for k in fitted if k in true]
        col = {}
        for d, dim in enumerate(DIMENSIONS):
            for field in ("offset", "gain", "lag"):
                x = np.array([getattr(true[k], field)[d] for k in ids], dtype=np.float64)
                y = np.array([getattr(fitted[k], field)[d] for k in ids], dtype=np.float64)
                ok = len(ids) >= 3 and x.std() > 0 and y.std() > 0
                label = f"{dim} {'lag (s)' if field == 'lag' else field}: r over listeners"
                col[label] = float(np.corrcoef(x, y)[0, 1]) if ok else float("nan")
        col["valence inverted: share right"] = (float(np.mean([true[k].inverted[1] == fitted[k].inverted[1]
                                                                 for k in ids])) if ids else float("nan"))
        col["listeners"] = len(ids)
        rows[name] = col
    df = pd.DataFrame(rows)
    df.index.name = "trait"
    return df


def mean_levels(adapter: "ListenerAdapter", listener: str, support: str, songs: Sequence[str],
                average: Mapping[str, np.ndarray], dim: int = 1) -> pd.DataFrame:
    """Mean level on dimension `dim` of the listener's curve, the MEAN curve and the three predictions, on the
    support excerpt (what adaptation saw) and over the listener's other `songs` (steps pooled)."""
    def levels(parts: list[tuple[str, slice]]) -> dict[str, float]:
        curves = {"listener": lambda sid: adapter.store[sid].labels[listener],
                  "MEAN curve": lambda sid: adapter.store[sid].labels[MEAN],
                  "meta-trained, not adapted": lambda sid: adapter.predict(sid),
                  "personalized (1 song)": lambda sid: adapter.predict(sid, listener),
                  "average-listener model": lambda sid: np.asarray(average[sid])}
        return {name: float(np.concatenate([get(sid)[sl, dim] for sid, sl in parts]).mean())
                for name, get in curves.items()}

    start, stop = adapter.store[support].span(listener)
    n = stop - start if adapter.support_steps is None else min(adapter.support_steps, adapter.window, stop - start)
    rows = {"support excerpt": levels([(support, slice(start, start + n))]),
            "their other songs": levels([(sid, slice(*adapter.store[sid].span(listener))) for sid in songs])}
    df = pd.DataFrame(rows).T
    df.index.name = f"mean {DIMENSIONS[dim]} on"
    return df


def trait_scenario(adapter: "ListenerAdapter", support: str, query: str, traits: Traits,
                   average: np.ndarray, squash: float | None = None) -> dict:
    """A listener made from `traits` on the MEAN curves (`with_listener`): the adapter adapts to them on
    `support` (once per setting); returns their curve on `query` ("target"), its "times" and "mean", the
    "preds" of the `average` model and of the adapted one, and their "scores" (`scores_frame`)."""
    store = with_listener(adapter.store, [support, query], TRAIT_LISTENER, traits, squash)
    key = (TRAIT_LISTENER, traits, squash, support)
    adapter.adapt(key, support, TRAIT_LISTENER, store=store)
    sd = store[query]
    start, stop = sd.span(TRAIT_LISTENER)
    sl = slice(start, stop)
    target = sd.labels[TRAIT_LISTENER][sl]
    preds = {"average-listener model": np.asarray(average)[sl],
             "personalized (1 song)": adapter.predict(query, key)[sl]}
    return {"times": sd.times[sl], "mean": sd.labels[MEAN][sl], "target": target, "preds": preds,
            "scores": scores_frame(target, preds)}


def scores_frame(target: np.ndarray, preds: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """CCC and RMSE per dimension of each prediction [T, 2] against `target` [T, 2], one row per prediction."""
    rows = []
    for name, p in preds.items():
        p = np.asarray(p, dtype=np.float64)
        row = {"prediction": name}
        for d, dim in enumerate(DIMENSIONS):
            row[f"{dim}_ccc"], row[f"{dim}_rmse"] = ccc(p[:, d], target[:, d]), rmse(p[:, d], target[:, d])
        rows.append(row)
    return pd.DataFrame(rows).set_index("prediction")


def with_listener(store: Mapping[str, SongData], songs: Sequence[str], listener: str, traits: Traits,
                  squash: float | None = None) -> dict[str, SongData]:
    """Copies of these songs with one more listener, whose labels are the song's MEAN curve with `traits`."""
    out = {}
    for sid in songs:
        sd = store[sid]
        mean = sd.labels[MEAN]
        curve = np.full_like(mean, np.nan)
        ok = np.isfinite(mean).all(axis=1)
        curve[ok] = apply_traits(mean[ok], traits, squash=squash).astype(mean.dtype)
        out[sid] = dataclasses.replace(sd, labels={**sd.labels, listener: curve})
    return out


class ListenerAdapter:
    """A meta-trained model adapted to listeners on one support song each: adapted parameters and
    predictions are computed once per (listener or trait setting, song) and kept, so widgets only look up."""

    def __init__(self, model: nn.Module, store: Mapping[str, SongData], meta: MetaConfig, window: int, hop: int,
                 support_steps: int | None, seed: int = 0, device: str | torch.device = "cpu"):
        self.model, self.store, self.meta = model, dict(store), meta
        self.window, self.hop, self.support_steps, self.seed, self.device = window, hop, support_steps, seed, device
        self.params: dict[object, dict[str, torch.Tensor]] = {}
        self._preds: dict[tuple, np.ndarray] = {}

    def adapt(self, key: object, support: str, listener: str, store: Mapping[str, SongData] | None = None) -> dict:
        """Adapted parameters for `key` (computed on the first call): the inner loop on `listener`'s labels of
        the first `support_steps` steps of song `support` (from `store`, default the adapter's)."""
        if key not in self.params:
            store = dict(store) if store is not None else self.store
            windows = support_items(store, [support], listener, self.window, self.support_steps)
            self.params[key] = adapt_to_listener(self.model, store, windows, self.meta, self.window,
                                                 seed=self.seed, device=self.device)
        return self.params[key]

    def predict(self, sid: str, key: object | None = None) -> np.ndarray:
        """[T, 2] prediction for song `sid`: adapted to `key` (adapt it first), or un-adapted for None."""
        if (key, sid) not in self._preds:
            params = None if key is None else self.params[key]
            self._preds[(key, sid)] = predict_song(self.model, self.store[sid], self.window, self.hop, params,
                                                   self.device)
        return self._preds[(key, sid)]
