"""Reading a synthetic dataset back: its hidden truth, how far listeners differ, what personalizing gains.

Both measures read the DEAM layout with the DEAM loader, so they also work on a real DEAM root (without
the truth numbers) and see exactly the curves that training sees.

``listener_divergence``: per identified listener, RMSE and CCC (arousal, valence) of each of their
non-flat curves against the song's MEAN curve are averaged over their songs, then over listeners. When
``synthetic_truth`` exists, the same is done against the true curves, and the MEAN curves themselves are
scored against the truth.

``personalization_headroom``: for every held-out listener and every ordered pair of their songs (support
s, query q), a per-dimension linear recalibration ``a + b * MEAN`` is fitted by least squares to the
listener's curve on the first ``support_labels`` labels of s and applied to the MEAN curve of q. Reported
per dimension: the mean CCC over pairs of the MEAN curve against the listener on q ("mean_ccc"), of the
recalibrated MEAN ("recalibrated_ccc"), and their difference ("headroom").
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from dsaml_utils.data.deam import load_deam
from dsaml_utils.data.synthetic.config import RATER_DYNAMIC_DIR, TRUTH_DIR
from dsaml_utils.data.types import MEAN, Curve, MusicDataset, TaskFilter, is_flat
from dsaml_utils.errors import DataError
from dsaml_utils.metrics import ccc, rmse


def load_truth(root: str | Path) -> tuple[dict[str, Curve], list[dict]]:
    """The hidden true curves (song id -> Curve) and the listener records of a synthetic dataset."""
    root = Path(root)
    npz_path, json_path = root / TRUTH_DIR / "truth.npz", root / TRUTH_DIR / "listeners.json"
    for p in (npz_path, json_path):
        if not p.is_file():
            raise DataError(f"{p}: not found (is {root} a dataset written by `dsaml synth`?)")
    truth = {}
    with np.load(npz_path) as z:
        for key in z.files:
            sid, kind = key.split("/")
            if kind == "truth":
                values = z[key]
                truth[sid] = Curve(z[f"{sid}/times"], values[:, 0], values[:, 1])
    return truth, json.loads(json_path.read_text())


def _load(root: Path) -> MusicDataset:
    """The curves of a DEAM-layout root (audio only checked for presence)."""
    with warnings.catch_warnings():
        # A synthetic dataset reproduces public DEAM's swapped static columns on purpose; the curves
        # measured here do not depend on them.
        warnings.filterwarnings("ignore", message="static annotations of songs", category=UserWarning)
        return load_deam(root, check_audio=False)


def _scores(x: np.ndarray, y: np.ndarray) -> tuple[list[float], list[float]]:
    """RMSE and CCC per dimension of two [T, 2] curves."""
    return [rmse(x[:, d], y[:, d]) for d in range(2)], [ccc(x[:, d], y[:, d]) for d in range(2)]


def listener_divergence(root: str | Path, filt: TaskFilter | None = None) -> dict:
    """How far identified listeners' curves are from the MEAN curves (and from the hidden truth, if any)."""
    root = Path(root)
    filt = filt or TaskFilter()
    ds = _load(root)
    truth = load_truth(root)[0] if (root / TRUTH_DIR / "truth.npz").is_file() else None

    per: dict[str, dict[str, list]] = {}
    flat = 0
    for sid, song in ds.songs.items():
        mean = song.curves[MEAN].values().astype(np.float64)
        tv = truth.get(sid) if truth is not None else None
        for wid in song.listeners:
            curve = song.curves[wid]
            if filt.flat_threshold > 0 and is_flat(curve, filt.flat_threshold, filt.flat_window):
                flat += 1
                continue
            n = min(len(curve), len(mean), len(tv) if tv is not None else len(curve))
            if n < 2:
                continue
            mine, ref = curve.values().astype(np.float64)[:n], mean[:n]
            rec = per.setdefault(wid, {"vs_mean_rmse": [], "vs_mean_ccc": [], "vs_truth_rmse": [],
                                       "vs_truth_ccc": []})
            r, c = _scores(mine, ref)
            rec["vs_mean_rmse"].append(r)
            rec["vs_mean_ccc"].append(c)
            if tv is not None:
                r, c = _scores(mine, tv.values().astype(np.float64)[:n])
                rec["vs_truth_rmse"].append(r)
                rec["vs_truth_ccc"].append(c)

    def avg(rows) -> list[float]:
        return [round(float(x), 4) for x in np.mean(rows, axis=0)] if len(rows) else [float("nan")] * 2

    per_listener = {wid: {"songs": len(r["vs_mean_rmse"]), **{k: avg(v) for k, v in r.items() if v}}
                    for wid, r in sorted(per.items())}
    result = {
        "listeners": len(per_listener),
        "curves": sum(p["songs"] for p in per_listener.values()),
        "flat_curves_dropped": flat,
        "listener_vs_mean_rmse": avg([p["vs_mean_rmse"] for p in per_listener.values()]),
        "listener_vs_mean_ccc": avg([p["vs_mean_ccc"] for p in per_listener.values()]),
    }
    if truth is not None:
        result["listener_vs_truth_rmse"] = avg([p["vs_truth_rmse"] for p in per_listener.values()
                                                if "vs_truth_rmse" in p])
        result["listener_vs_truth_ccc"] = avg([p["vs_truth_ccc"] for p in per_listener.values()
                                               if "vs_truth_ccc" in p])
        rm, cc = [], []
        for sid, song in ds.songs.items():
            if sid in truth:
                tv, mv = truth[sid].values().astype(np.float64), song.curves[MEAN].values().astype(np.float64)
                n = min(len(tv), len(mv))
                r, c = _scores(mv[:n], tv[:n])
                rm.append(r)
                cc.append(c)
        result["mean_vs_truth_rmse"] = avg(rm)
        result["mean_vs_truth_ccc"] = avg(cc)
    result["per_listener"] = per_listener
    return result


def personalization_headroom(root: str | Path, support_labels: int = 60) -> dict:
    """What an ideal one-song personalizer could gain on the held-out listeners of a synthetic dataset."""
    root = Path(root)
    records = load_truth(root)[1]
    ds = _load(root)
    test = {r["listener_id"] for r in records if r["role"] == "test"}
    means: dict[str, np.ndarray] = {}  # song -> [T, 2]
    curves: dict[str, dict[str, np.ndarray]] = {wid: {} for wid in test}  # listener -> song -> [T, 2]
    for r in records:
        if r["role"] != "test":
            continue
        wid = r["listener_id"]
        for s in r["songs"]:
            sid = str(s)
            song = ds.songs.get(sid)
            if song is None or wid not in song.curves:
                raise DataError(f"{root / RATER_DYNAMIC_DIR / 'arousal' / f'{sid}.csv'}: no row for test "
                                f"listener {wid}")
            means[sid] = song.curves[MEAN].values().astype(np.float64)
            mine = song.curves[wid].values().astype(np.float64)
            curves[wid][sid] = mine[: min(len(means[sid]), len(mine))]
    base, recal = [], []
    for wid, songs in sorted(curves.items()):
        for s in songs:
            for q in songs:
                if s == q:
                    continue
                b_row, r_row = [], []
                for d in range(2):
                    k = min(support_labels, len(songs[s]))
                    x, y = means[s][:k, d], songs[s][:k, d]
                    slope = np.cov(x, y, bias=True)[0, 1] / (x.var() + 1e-12)
                    icpt = y.mean() - slope * x.mean()
                    mq, lq = means[q][: len(songs[q]), d], songs[q][:, d]
                    b_row.append(ccc(mq, lq))
                    r_row.append(ccc(icpt + slope * mq, lq))
                base.append(b_row)
                recal.append(r_row)
    if not base:
        raise DataError(f"{root}: no held-out listener rated two songs, so there is no pair to measure")
    b, r = np.mean(base, 0), np.mean(recal, 0)
    rnd = lambda v: [round(float(x), 4) for x in v]  # noqa: E731
    return {"pairs": len(base), "listeners": len(curves), "mean_ccc": rnd(b), "recalibrated_ccc": rnd(r),
            "headroom": rnd(r - b)}
