"""Evaluation of trained runs (DMER and PDMER), `dsaml evaluate` and `dsaml personalize`.

DMER: every test song, predicted whole by sliding 60-step windows (hop `eval.hop`, overlapping
predictions averaged), scored against its MEAN curve.

PDMER: the held-out listeners, i.e. listeners with a curve on a test song and none on any training song
(`eval.unseen_listeners_only`; when a dataset has none, every test-song listener is used and metrics.json
says so). Near-flat curves are left out with the task filter's flat rule. For each k in `eval.kshots` and
each listener with more than k songs and each draw d < `eval.draws`: the listener's songs are put in a
seeded order rotated by d, the first k are the support songs (nested: the k = 1 support song is among the
k = 2 ones), the model is adapted on their first `eval.support_steps` labelled steps by MAML's inner
loop (`meta.personalize`, `meta.inner_steps` SGD steps at `meta.inner_lr`, train mode), and every other
song of that listener is predicted whole and scored against the listener's own curve. The same query
pairs are also scored without adaptation ("no_adaptation"), so the personalization gain is visible.
With `eval.same_song` the authors' full-song protocol is scored too ("same_song"): for every held-out
listener-song pair, adapt on the first `eval.support_steps` labelled steps of that song and score the rest
of the same song (adapted and not). Its gain mixes personalization with correcting the model's error on
that particular song, so compare it with a non-personalized model adapted the same way.

Metrics: CCC, PCC, RMSE, Kendall's tau and R^2 per song (PDMER: per listener-song pair), averaged with a
95% interval (`metrics.aggregate_songs`); several runs (seeds) give mean +- std (`combine_runs`).
Everything goes to <run>/metrics.json with the config, seed, data fingerprint and code version.

`dsaml personalize` adapts a trained run to one person from one annotated song. The curve file is a CSV
with a header and the columns ``time,arousal,valence``: time in seconds on a 0.5 s grid (label i covers
audio [time_i, time_i + 0.5)), values on the training dataset's scale (DEAM/synthetic [-1, 1], PMEmo [0, 1]).
It saves the person's state as personal.pt: the difference (adapted - trained) of every parameter that
adaptation changed (MAML's inner loop updates all trainable parameters; BatchNorm statistics are not
changed), with the sha256 of the run's model.pt it applies to. Each predicted song gets <name>.csv
(same columns, from 0 s to the end of the audio) and <name>.png.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dsaml_utils.audio import audio_digest
from dsaml_utils.config import RunConfig
from dsaml_utils.data import HOP_SECONDS, MEAN, Curve, MusicDataset, Song, is_flat, load_dataset
from dsaml_utils.errors import DataError, UserError
from dsaml_utils.features import FeatureCache
from dsaml_utils.metrics import DIMENSIONS, aggregate_seeds, aggregate_songs, score_song
from dsaml_utils.train import (
    Item, SongData, adapt_to_listener, atomic_write_text, build_store, load_checkpoint, load_run_model,
    predict_song, resolve_device, save_checkpoint, score_listener_song, step_rng, support_items,
)

HEADLINE_METRICS = ("ccc", "pcc", "rmse")
"""Metrics shown in the printed tables (metrics.json holds all of metrics.METRICS)."""

_EVAL_STREAM = 11


# ---------------------------------------------------------------------------------------------------
# provenance


def data_fingerprint(ds: MusicDataset) -> str:
    """sha256 of the annotation files under the dataset root (CSV files below a folder named *annotation*;
    every CSV when there is none), the song ids of the train and test splits, and each song's audio bytes."""
    root = Path(ds.root)
    files = sorted(p for p in root.rglob("*.csv") if any("annotation" in part.lower()
                                                           for part in p.relative_to(root).parts[:-1]))
    if not files:
        files = sorted(root.rglob("*.csv"))
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root)).encode() + b"\0")
        h.update(hashlib.sha256(p.read_bytes()).digest())
    h.update(json.dumps({"train": sorted(ds.train_ids), "test": sorted(ds.test_ids)}).encode())
    for sid in sorted(ds.songs):
        path = ds.songs[sid].audio_path
        if path is not None and Path(path).is_file():
            h.update(f"{sid}\0".encode() + bytes.fromhex(audio_digest(path)))
    return h.hexdigest()


def code_version() -> str:
    """The git commit of the package's repository (+ '-dirty' with uncommitted changes), else its version."""
    import dsaml_utils

    repo = Path(dsaml_utils.__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"dsaml_utils {dsaml_utils.__version__}"


def file_digest(path: Path) -> str:
    """sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------------
# DMER and PDMER


def evaluate_dmer(model, store: dict[str, SongData], song_ids: list[str], cfg: RunConfig,
                  device: str | torch.device = "cpu") -> dict:
    """Per-song scores against the MEAN curve and their aggregate, for the songs in the store."""
    rows = []
    for sid in song_ids:
        if sid not in store:
            continue
        sd = store[sid]
        pred = predict_song(model, sd, cfg.train.window, cfg.eval.hop, device=device)
        rows.append({"song_id": sid, "steps": len(sd.times), **score_listener_song(pred, sd, MEAN)})
    if not rows:
        return {"skipped": "no test song with audio and labels"}
    return {"summary": _aggregate(rows, cfg), "per_song": rows}


def held_out_listeners(ds: MusicDataset, store: dict[str, SongData], train_ids: list[str],
                       test_ids: list[str], cfg: RunConfig) -> tuple[dict[str, list[str]], list[str]]:
    """(listener -> their test songs, notes): listeners never seen in training, non-flat curves only."""
    seen = {lst for sid in train_ids if sid in ds.songs for lst in ds.songs[sid].listeners}
    songs: dict[str, list[str]] = {}
    for sid in test_ids:
        if sid not in store:
            continue
        for lst in ds.songs[sid].listeners:
            start, stop = store[sid].span(lst)
            if stop - start < 2:
                continue
            if cfg.tasks.flat_threshold > 0 and is_flat(ds.songs[sid].curves[lst], cfg.tasks.flat_threshold,
                                                        cfg.tasks.flat_window):
                continue
            songs.setdefault(lst, []).append(sid)
    notes = []
    unseen = {k: v for k, v in songs.items() if k not in seen}
    if cfg.eval.unseen_listeners_only:
        if unseen or not songs:
            songs = unseen
        else:
            notes.append("no test-song listener is absent from the training songs: PDMER uses every test-song "
                         "listener (they were seen in training)")
    return dict(sorted(songs.items())), notes


def evaluate_pdmer(model, ds: MusicDataset, store: dict[str, SongData], train_ids: list[str],
                   test_ids: list[str], cfg: RunConfig, device: str | torch.device = "cpu",
                   progress: bool = True) -> dict:
    """k-shot personalization on held-out listeners: adapted and no-adaptation scores per query pair."""
    listeners, notes = held_out_listeners(ds, store, train_ids, test_ids, cfg)
    if not listeners:
        return {"skipped": "no listener curves on the test songs (the dataset has no rater identities)",
                "notes": notes}
    W, hop, seed = cfg.train.window, cfg.eval.hop, cfg.train.seed
    plain_pred = {}  # song -> prediction without adaptation (the same for every listener)
    out = {"listeners": len(listeners), "songs_per_listener": {k: len(v) for k, v in listeners.items()},
           "notes": notes, "kshot": {}}
    jobs = [(k, i, lst, d) for k in cfg.eval.kshots for i, lst in enumerate(listeners)
            for d in range(min(cfg.eval.draws, len(listeners[lst]))) if len(listeners[lst]) > k]
    rows: dict[int, dict[str, list]] = {k: {"adapted": [], "no_adaptation": []} for k in cfg.eval.kshots}
    for k, i, lst, d in tqdm(jobs, desc="personalize", unit="listener", disable=not progress, leave=False):
        songs = listeners[lst]
        # one seeded order per listener; draw d rolls it by d, so draws use different support songs
        perm = np.roll(step_rng(seed, _EVAL_STREAM, i).permutation(len(songs)), -d)
        order = [songs[j] for j in perm]
        support, query = order[:k], order[k:]
        params = adapt_to_listener(model, store, support_items(store, support, lst, cfg), cfg,
                                   seed=seed * 100003 + i * 101 + d, device=device)
        for sid in query:
            sd = store[sid]
            if sid not in plain_pred:
                plain_pred[sid] = predict_song(model, sd, W, hop, device=device)
            base = {"listener": lst, "song_id": sid, "draw": d, "support": support}
            rows[k]["adapted"].append({**base, **score_listener_song(
                predict_song(model, sd, W, hop, params, device), sd, lst)})
            rows[k]["no_adaptation"].append({**base, **score_listener_song(plain_pred[sid], sd, lst)})
    for k in cfg.eval.kshots:
        if not rows[k]["adapted"]:
            out["kshot"][str(k)] = {"skipped": f"no held-out listener has more than {k} song(s)"}
            continue
        out["kshot"][str(k)] = {
            "listeners": len({r["listener"] for r in rows[k]["adapted"]}),
            "pairs": len(rows[k]["adapted"]),
            "adapted": {"summary": _aggregate(rows[k]["adapted"], cfg), "per_pair": rows[k]["adapted"]},
            "no_adaptation": {"summary": _aggregate(rows[k]["no_adaptation"], cfg),
                              "per_pair": rows[k]["no_adaptation"]},
        }
    if cfg.eval.same_song:
        out["same_song"] = _same_song(model, store, listeners, cfg, plain_pred, device, progress)
    return out


def _same_song(model, store: dict[str, SongData], listeners: dict[str, list[str]], cfg: RunConfig,
               plain_pred: dict, device, progress: bool) -> dict:
    """The authors' full-song protocol: adapt on the first support steps of a song, score the rest of it."""
    W, hop, seed = cfg.train.window, cfg.eval.hop, cfg.train.seed
    n_sup = min(cfg.eval.support_steps or W, W)
    rows = {"adapted": [], "no_adaptation": []}
    jobs = [(i, lst, sid) for i, lst in enumerate(listeners) for sid in listeners[lst]]
    for i, lst, sid in tqdm(jobs, desc="same-song", unit="pair", disable=not progress, leave=False):
        sd = store[sid]
        start, stop = sd.span(lst)
        if stop - start < n_sup + 2:  # nothing left to score
            continue
        params = adapt_to_listener(model, store, [Item(sid, lst, start, n_sup)], cfg, seed=seed * 7919 + i,
                                   device=device)
        if sid not in plain_pred:
            plain_pred[sid] = predict_song(model, sd, W, hop, device=device)
        rest = slice(start + n_sup, stop)
        base = {"listener": lst, "song_id": sid, "scored_steps": stop - start - n_sup}
        y = sd.labels[lst][rest]
        rows["adapted"].append({**base, **score_song(predict_song(model, sd, W, hop, params, device)[rest], y)})
        rows["no_adaptation"].append({**base, **score_song(plain_pred[sid][rest], y)})
    if not rows["adapted"]:
        return {"skipped": f"no held-out listener curve is longer than {n_sup + 1} steps"}
    return {"pairs": len(rows["adapted"]), "support_steps": n_sup,
            **{k: {"summary": _aggregate(v, cfg), "per_pair": v} for k, v in rows.items()}}


def _aggregate(rows: list[dict], cfg: RunConfig) -> dict:
    scores = [{k: v for k, v in r.items() if isinstance(v, float)} for r in rows]
    return aggregate_songs(scores, method=cfg.eval.interval, seed=cfg.train.seed)


def headline(metrics: dict, k: int = 1) -> dict[str, dict[str, float]]:
    """{"dmer": {metric: mean}, "pdmer": ..., "pdmer_no_adaptation": ...} from a metrics dict (k-shot k)."""
    out = {}
    if "summary" in metrics.get("dmer", {}):
        out["dmer"] = {m: v["mean"] for m, v in metrics["dmer"]["summary"].items()}
    ks = metrics.get("pdmer", {}).get("kshot", {}).get(str(k), {})
    if "adapted" in ks:
        out["pdmer"] = {m: v["mean"] for m, v in ks["adapted"]["summary"].items()}
        out["pdmer_no_adaptation"] = {m: v["mean"] for m, v in ks["no_adaptation"]["summary"].items()}
    same = metrics.get("pdmer", {}).get("same_song", {})
    if "adapted" in same:
        out["pdmer_same_song"] = {m: v["mean"] for m, v in same["adapted"]["summary"].items()}
        out["pdmer_same_song_no_adaptation"] = {m: v["mean"] for m, v in same["no_adaptation"]["summary"].items()}
    return out


# ---------------------------------------------------------------------------------------------------
# a whole run


def evaluate_run(run: str | Path, *, ds: MusicDataset | None = None, cache: FeatureCache | None = None,
                 progress: bool = True, write: bool = True, reuse: bool = False) -> dict:
    """Evaluate a trained run (DMER and PDMER) and write <run>/metrics.json; returns the metrics dict.

    reuse: return an existing metrics.json when it was made from the current model.pt and config.
    """
    run = Path(run)
    if not (run / "model.pt").is_file():
        raise UserError(f"{run}: no model.pt (training has not finished; rerun `dsaml train` with the same "
                        "options to resume it)")
    cfg = RunConfig.load(run / "config.json")
    model_digest = file_digest(run / "model.pt")
    if reuse and (run / "metrics.json").is_file():
        old = json.loads((run / "metrics.json").read_text())
        stored = {k: v for k, v in old.get("config", {}).items() if k != "deviations"}
        if old.get("model_digest") == model_digest and stored == cfg.settings():
            ds = ds if ds is not None else load_dataset(cfg.dataset, cfg.root)
            if old.get("data", {}).get("fingerprint") == data_fingerprint(ds):
                return old
    t0 = time.perf_counter()
    device = resolve_device(cfg.train.device)
    cfg, model = load_run_model(run, device)
    ds = ds if ds is not None else load_dataset(cfg.dataset, cfg.root)
    test = set(ds.test_ids)
    train_ids = [s for s in ds.train_ids if s not in test]
    store = build_store(ds, list(ds.test_ids), cfg, model, cache, progress=progress)
    torch.manual_seed(cfg.train.seed)
    metrics = {
        "run": str(run),
        "seed": cfg.train.seed,
        "preset": cfg.preset,
        "mode": cfg.mode,
        "strategy": cfg.strategy,
        "model": cfg.model,
        "config": cfg.to_dict(),
        "data": {"dataset": cfg.dataset, "root": str(cfg.root), "fingerprint": data_fingerprint(ds),
                 "train_songs": len(train_ids), "test_songs": len(ds.test_ids), "test_songs_scored": len(store)},
        "code_version": code_version(),
        "model_digest": model_digest,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "train": _read_json(run / "train_summary.json"),
        "dmer": evaluate_dmer(model, store, list(ds.test_ids), cfg, device),
        "pdmer": evaluate_pdmer(model, ds, store, train_ids, list(ds.test_ids), cfg, device, progress),
    }
    metrics["headline"] = headline(metrics)
    metrics["eval_wall_seconds"] = round(time.perf_counter() - t0, 2)
    if write:
        atomic_write_text(run / "metrics.json", json.dumps(_finite(metrics), indent=1) + "\n")
    return metrics


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _finite(x):
    """NaN/inf -> None, so metrics.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def combine_runs(metrics: list[dict], k: int = 1) -> dict[str, dict[str, dict[str, float]]]:
    """Mean +- std over runs (seeds) of each headline metric: {"dmer": {metric: {"mean","std","n"}}, ...}."""
    out = {}
    heads = [headline(m, k) for m in metrics]
    for part in ("dmer", "pdmer", "pdmer_no_adaptation", "pdmer_same_song", "pdmer_same_song_no_adaptation"):
        have = [h[part] for h in heads if part in h]
        if have:
            out[part] = aggregate_seeds(have)
    return out


def format_metrics(metrics: dict | list[dict], k: int = 1) -> str:
    """A plain-text table of one run's metrics (with 95% intervals) or of several runs (mean +- std)."""
    many = isinstance(metrics, list)
    runs = metrics if many else [metrics]
    rows = {"dmer": "DMER (test songs, mean labels)", "pdmer": f"PDMER {k}-shot, adapted",
            "pdmer_no_adaptation": f"PDMER {k}-shot, no adaptation",
            "pdmer_same_song": "PDMER same song, adapted", "pdmer_same_song_no_adaptation": "PDMER same song, no adapt."}
    cols = [f"{d}_{m}" for d in DIMENSIONS for m in HEADLINE_METRICS]
    lines = [f"{'':34}" + "".join(f"{c:>22}" for c in cols)]
    if many:
        comb = combine_runs(runs, k)
        for part, title in rows.items():
            if part in comb:
                cells = [f"{comb[part][c]['mean']:.3f} ± {_fmt(comb[part][c]['std'])}" if c in comb[part] else "-"
                         for c in cols]
                lines.append(f"{title:34}" + "".join(f"{c:>22}" for c in cells))
        lines.append(f"mean ± std over {len(runs)} run(s): " + ", ".join(str(m.get('run')) for m in runs))
    else:
        m = runs[0]
        ks = m.get("pdmer", {}).get("kshot", {}).get(str(k), {})
        same = m.get("pdmer", {}).get("same_song", {})
        summaries = {"dmer": m.get("dmer", {}).get("summary"),
                     "pdmer": ks.get("adapted", {}).get("summary"),
                     "pdmer_no_adaptation": ks.get("no_adaptation", {}).get("summary"),
                     "pdmer_same_song": same.get("adapted", {}).get("summary"),
                     "pdmer_same_song_no_adaptation": same.get("no_adaptation", {}).get("summary")}
        for part, title in rows.items():
            s = summaries[part]
            if s:
                cells = [f"{s[c]['mean']:.3f} [{_fmt(s[c]['lo'])}, {_fmt(s[c]['hi'])}]" if c in s else "-"
                         for c in cols]
                lines.append(f"{title:34}" + "".join(f"{c:>22}" for c in cells))
        lines.append(f"run {m.get('run')} (seed {m.get('seed')}, {m.get('mode')}/{m.get('strategy')}, "
                     f"{m.get('model')}, preset {m.get('preset')}); 95% intervals over songs / pairs")
        for part in ("dmer", "pdmer"):
            if "skipped" in m.get(part, {}):
                lines.append(f"{part}: skipped ({m[part]['skipped']})")
    return "\n".join(lines)


def _fmt(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


# ---------------------------------------------------------------------------------------------------
# personalize one listener from files


def read_curve_csv(path: str | Path) -> Curve:
    """A listener's curve from a CSV with header time,arousal,valence (time in s on a 0.5 s grid)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: curve file not found")
    lines = [ln.strip() for ln in path.read_text(encoding="utf-8-sig").splitlines() if ln.strip()]
    if not lines:
        raise DataError(f"{path}: curve file is empty")
    header = [h.strip().lower() for h in lines[0].split(",")]
    need = ("time", "arousal", "valence")
    if any(n not in header for n in need):
        raise DataError(f"{path}: header must name the columns time,arousal,valence; got {lines[0]!r}")
    cols = [header.index(n) for n in need]
    rows = []
    for i, ln in enumerate(lines[1:], start=2):
        cells = ln.split(",")
        try:
            rows.append([float(cells[c]) for c in cols])
        except (ValueError, IndexError):
            raise DataError(f"{path}: line {i}: expected numbers in columns time,arousal,valence, got {ln!r}") from None
    if not rows:
        raise DataError(f"{path}: no curve values after the header")
    a = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(a).all():
        raise DataError(f"{path}: curve contains NaN or infinite values")
    steps = np.diff(a[:, 0])
    if len(steps) and not np.allclose(steps, HOP_SECONDS, atol=1e-3):
        bad = int(np.argmax(~np.isclose(steps, HOP_SECONDS, atol=1e-3))) + 3
        raise DataError(f"{path}: line {bad}: times must increase by {HOP_SECONDS} s (2 Hz labels)")
    if a[0, 0] < 0:
        raise DataError(f"{path}: negative time {a[0, 0]}")
    return Curve(a[:, 0], a[:, 1], a[:, 2])


def write_curve_csv(path: Path, times: np.ndarray, pred: np.ndarray) -> None:
    """Write time,arousal,valence rows (the read_curve_csv format)."""
    lines = ["time,arousal,valence"] + [f"{t:.1f},{p[0]:.4f},{p[1]:.4f}" for t, p in zip(times, pred)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def plot_curve_png(path: Path, times: np.ndarray, pred: np.ndarray, title: str,
                   value_range: tuple[float, float]) -> None:
    """A two-panel PNG (arousal, valence) of a predicted curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(8, 4.5), sharex=True)
    for d, ax in enumerate(axes):
        ax.plot(times, pred[:, d], color="C0" if d == 0 else "C3")
        ax.set_ylabel(DIMENSIONS[d])
        ax.set_ylim(*value_range)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time (s)")
    axes[0].set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _audio_times(path: Path, start: float) -> np.ndarray:
    from dsaml_utils.audio import load_audio

    wave, sr = load_audio(path)
    n = int(math.floor((len(wave) / sr - start) / HOP_SECONDS + 1e-9))
    if n < 1:
        raise DataError(f"{path}: audio is shorter than {start + HOP_SECONDS} s")
    return start + HOP_SECONDS * np.arange(n)


def personalize_files(run: str | Path, out: str | Path, predict: list[str | Path],
                      support: tuple[str | Path, str | Path] | None = None, personal: str | Path | None = None,
                      start: float = 0.0, progress: bool = True) -> dict:
    """Adapt a trained run to one person (support audio + curve CSV) or load their personal.pt, then write
    <name>.csv and <name>.png for each song in `predict`; returns {"personal": path, "predictions": [...]}."""
    run, out = Path(run), Path(out)
    if (support is None) == (personal is None):
        raise UserError("give either --support AUDIO CURVE_CSV or --personal FILE")
    device = resolve_device(RunConfig.load(run / "config.json").train.device)
    cfg, model = load_run_model(run, device)
    base = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    digest = file_digest(run / "model.pt")
    value_range = (-1.0, 1.0) if cfg.dataset != "pmemo" else (0.0, 1.0)
    cache = FeatureCache(cfg.cache_dir)
    out.mkdir(parents=True, exist_ok=True)

    def store_for(songs: list[Song]) -> dict[str, SongData]:
        ds = MusicDataset("personal", out, {s.song_id: s for s in songs}, [], [], value_range)
        store = build_store(ds, [s.song_id for s in songs], cfg, model, cache, progress=False)
        if len(store) != len(songs):
            raise DataError("; ".join(ds.problems) or "could not read the audio")
        return store

    if support is not None:
        audio, curve_path = Path(support[0]), Path(support[1])
        curve = read_curve_csv(curve_path)
        song = Song("support", audio, {MEAN: curve, "you": curve})
        store = store_for([song])
        params = adapt_to_listener(model, store, support_items(store, ["support"], "you", cfg), cfg,
                                   seed=cfg.train.seed, device=device)
        delta = {k: (params[k] - base[k]).cpu() for k in params if not torch.equal(params[k], base[k])}
        state = {"run": str(run), "model_digest": digest, "delta": delta,
                 "support": json.dumps({"audio": str(audio), "curve": str(curve_path), "steps": len(curve)})}
        personal_path = out / "personal.pt"
        save_checkpoint(personal_path, state)
    else:
        personal_path = Path(personal)
        state = load_checkpoint(personal_path)
        if state.get("model_digest") != digest:
            raise UserError(f"{personal_path}: made for another model (model.pt digest differs from {run})")
        unknown = set(state["delta"]) - set(base)
        if unknown:
            raise UserError(f"{personal_path}: parameters {sorted(unknown)[:3]} are not in the run's model")
        params = {k: base[k] + state["delta"][k].to(device) if k in state["delta"] else base[k] for k in base}
    written = []
    for path in tqdm([Path(p) for p in predict], desc="predict", unit="song", disable=not progress):
        times = _audio_times(path, start)
        song = Song(path.stem, path, {MEAN: Curve(times, np.zeros(len(times)), np.zeros(len(times)))})
        sd = store_for([song])[path.stem]
        pred = predict_song(model, sd, cfg.train.window, cfg.eval.hop, params, device)
        csv, png = out / f"{path.stem}.csv", out / f"{path.stem}.png"
        write_curve_csv(csv, sd.times, pred)
        plot_curve_png(png, sd.times, pred, f"{path.name}: personalized prediction ({cfg.model}, {run.name})",
                       value_range)
        written.append({"audio": str(path), "csv": str(csv), "png": str(png)})
    return {"personal": str(personal_path), "predictions": written}


# ---------------------------------------------------------------------------------------------------
# CLI


def _cli_evaluate(args: argparse.Namespace) -> int:
    results = [evaluate_run(r, progress=not (args.quiet or args.json), reuse=args.reuse) for r in args.run]
    if args.json:
        payload = results[0] if len(results) == 1 else {"runs": [r["run"] for r in results],
                                                        "combined": combine_runs(results, args.k)}
        print(json.dumps(_finite(payload if len(results) > 1 else {k: v for k, v in payload.items()
                                                                   if k != "config"}), indent=1))
    else:
        print(format_metrics(results if len(results) > 1 else results[0], args.k))
    return 0


def _cli_personalize(args: argparse.Namespace) -> int:
    res = personalize_files(args.run, args.out, args.predict, support=args.support, personal=args.personal,
                            start=args.start, progress=not args.quiet)
    print(f"personal state: {res['personal']}")
    for p in res["predictions"]:
        print(f"{p['audio']} -> {p['csv']}, {p['png']}")
    return 0


def register_cli(subparsers) -> None:
    """Add `dsaml evaluate` and `dsaml personalize`."""
    p = subparsers.add_parser("evaluate", help="score trained runs (DMER and PDMER) and write metrics.json")
    p.add_argument("--run", nargs="+", required=True, help="run folder(s); several = seeds, shown as mean ± std")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--k", type=int, default=1, help="k-shot shown in the table (default 1)")
    p.add_argument("--reuse", action="store_true", help="reuse an up-to-date metrics.json instead of recomputing")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cli_evaluate)

    q = subparsers.add_parser("personalize", help="adapt a trained run to one listener and predict their curves")
    q.add_argument("--run", required=True, help="trained run folder")
    q.add_argument("--support", nargs=2, metavar=("AUDIO", "CURVE_CSV"),
                   help="one song the person annotated and their curve (CSV: time,arousal,valence at 2 Hz)")
    q.add_argument("--personal", help="a personal.pt saved earlier (instead of --support)")
    q.add_argument("--predict", nargs="+", required=True, metavar="AUDIO", help="songs to predict")
    q.add_argument("--out", required=True, help="output folder (personal.pt, <song>.csv, <song>.png)")
    q.add_argument("--start", type=float, default=0.0, help="first predicted time in seconds (default 0)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=_cli_personalize)
