"""Every figure and table the notebooks produce, each stamped with where its numbers came from.

Each plotting function returns a matplotlib ``Figure`` and takes an optional ``provenance`` dict
(e.g. ``{"data": "synthetic", "preset": "quick", "seed": 0}``) that `stamp` writes as a small grey
footer, so a figure copied out of context still says what produced it. ``save_figure`` writes PNG
(and SVG) files, ``save_table`` writes a Markdown table with a provenance line plus the same table as CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dsaml_utils.data import MEAN, MusicDataset, Song, TaskFilter, is_flat

DIMS = ("arousal", "valence")
MEAN_STYLE = dict(color="black", lw=2.2, ls="--", label="mean of listeners")


# ---------------------------------------------------------------- provenance, saving

def provenance_text(provenance: Mapping[str, object] | None) -> str:
    """'data: synthetic | preset: quick | seed: 0' from a provenance dict (empty for None)."""
    if not provenance:
        return ""
    return " | ".join(f"{k}: {v}" for k, v in provenance.items() if v is not None and v != "")


def stamp(fig: Figure, provenance: Mapping[str, object] | None) -> Figure:
    """Write the provenance as a small footer on the figure (and keep it for the saved metadata)."""
    text = provenance_text(provenance)
    if text:
        fig.text(0.005, 0.002, text, fontsize=6.5, color="0.45", ha="left", va="bottom")
    fig._dsaml_provenance = text  # read back by save_figure
    return fig


def save_figure(
    fig: Figure, name: str, figures_dir: str | Path, svg: bool = True, close: bool = False
) -> list[Path]:
    """Save `fig` as figures_dir/name.png (and .svg); returns the written paths.

    The figure stays open by default so that a notebook still shows it; scripts pass close=True.
    """
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    desc = getattr(fig, "_dsaml_provenance", "")
    paths = [out / f"{name}.png"] + ([out / f"{name}.svg"] if svg else [])
    for path in paths:
        meta = {"Description": desc} if desc else {}
        if path.suffix == ".svg":
            meta["Date"] = None  # no timestamp: re-running gives identical files
        with plt.rc_context({"svg.hashsalt": "dsaml"}):  # stable SVG ids, so files diff cleanly
            fig.savefig(path, dpi=130, bbox_inches="tight", metadata=meta)
    if close:
        plt.close(fig)
    return paths


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A GitHub-flavoured Markdown table of `df` (index included when it is not a plain range)."""
    if not isinstance(df.index, pd.RangeIndex):
        df = df.reset_index()

    def fmt(v: object) -> str:
        if isinstance(v, (bool, np.bool_)):
            return str(v)
        if isinstance(v, (int, np.integer)):
            return f"{int(v):,}"
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(float(v), floatfmt)
        return str(v).replace("|", "\\|")

    head = "| " + " | ".join(str(c) for c in df.columns) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def save_table(
    df: pd.DataFrame,
    name: str,
    tables_dir: str | Path,
    provenance: Mapping[str, object] | None = None,
    title: str | None = None,
) -> tuple[Path, Path]:
    """Write tables_dir/name.md (title, table, provenance line) and tables_dir/name.csv."""
    out = Path(tables_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, csv = out / f"{name}.md", out / f"{name}.csv"
    parts = [f"### {title}\n" if title else "", markdown_table(df), ""]
    text = provenance_text(provenance)
    if text:
        parts.append(f"_{text}_\n")
    md.write_text("\n".join(parts).lstrip("\n"))
    (df if isinstance(df.index, pd.RangeIndex) else df.reset_index()).to_csv(csv, index=False)
    return md, csv


# ---------------------------------------------------------------- results tables

PAPER_COLUMNS = [f"{d}_{m}" for d in DIMS for m in ("ccc", "pcc", "rmse")]
"""The paper's table columns: CCC, PCC and RMSE of arousal, then of valence."""


def _paper(rows: dict[str, tuple[float, ...]]) -> pd.DataFrame:
    return pd.DataFrame([{"model": k, **dict(zip(PAPER_COLUMNS, v))} for k, v in rows.items()])


PAPER_RESULTS = {
    "table1_deam": _paper({  # traditional DMER on DEAM
        "DSAML": (0.39, 0.675, 0.202, 0.104, 0.221, 0.26),
        "DAMFF": (0.354, 0.621, 0.217, 0.055, 0.043, 0.299),
        "MCRNN": (0.227, 0.374, 0.265, 0.029, -0.005, 0.297),
        "DNN": (0.188, 0.362, 0.261, 0.033, 0.003, 0.281),
        "CRNN": (0.244, 0.517, 0.218, 0.017, -0.039, 0.27)}),
    "table1_pmemo": _paper({
        "DSAML": (0.186, 0.386, 0.112, 0.108, 0.26, 0.122),
        "DAMFF": (0.175, 0.378, 0.118, 0.091, 0.335, 0.134),
        "MCRNN": (0.104, 0.266, 0.168, 0.038, 0.154, 0.169),
        "DNN": (0.087, 0.217, 0.151, 0.03, 0.134, 0.159),
        "CRNN": (0.076, 0.231, 0.183, 0.034, 0.224, 0.169)}),
    "table2": _paper({  # PDMER on DEAM; (MAML) = the paper's dagger rows
        "DSAML": (0.377, 0.541, 0.236, 0.092, 0.154, 0.245),
        "DAMFF (MAML)": (0.22, 0.414, 0.319, 0.035, 0.069, 0.344),
        "DAMFF": (0.232, 0.478, 0.342, 0.035, 0.008, 0.39),
        "MCRNN (MAML)": (0.173, 0.312, 0.332, 0.022, 0.021, 0.348),
        "MCRNN": (0.176, 0.301, 0.364, 0.015, -0.002, 0.391),
        "DNN (MAML)": (0.138, 0.273, 0.35, 0.01, -0.009, 0.367),
        "DNN": (0.153, 0.286, 0.361, 0.016, -0.004, 0.385),
        "CRNN (MAML)": (0.113, 0.29, 0.31, 0.008, -0.009, 0.337),
        "CRNN": (0.131, 0.365, 0.35, -0.001, -0.021, 0.366)}),
    "table3_deam": _paper({  # DMER ablations on DEAM
        "DSAML": (0.402, 0.633, 0.196, 0.117, 0.182, 0.267),
        "w/o local attention": (0.385, 0.624, 0.215, 0.077, 0.134, 0.268),
        "w/o global attention": (0.37, 0.594, 0.207, 0.084, 0.148, 0.283),
        "w/o attention loss": (0.338, 0.564, 0.221, 0.103, 0.185, 0.279),
        "w/o adapter": (0.329, 0.529, 0.221, 0.083, 0.12, 0.272)}),
    "table4": _paper({  # PDMER ablations on DEAM
        "DSAML": (0.377, 0.541, 0.236, 0.092, 0.154, 0.245),
        "w/o MAML": (0.305, 0.518, 0.332, 0.062, 0.095, 0.383),
        "w/o personalized tasks": (0.357, 0.533, 0.236, 0.08, 0.129, 0.256),
        "w/o both": (0.332, 0.566, 0.309, 0.061, 0.132, 0.359)}),
}
"""The paper's reported numbers (AAAI-25, Tables 1-4), for side-by-side comparison."""


def kshot_long(kshot: pd.DataFrame) -> pd.DataFrame:
    """experiments.kshot_table (rows (model, k); CCC adapted and "_no_adaptation") in long form for
    plot_kshot_curve: one row per (model, k, adaptation) with arousal_ccc and valence_ccc."""
    df = kshot.reset_index() if "k" not in kshot.columns else kshot.copy()
    need = ["model", "k"] + [f"{d}_ccc{s}" for d in DIMS for s in ("", "_no_adaptation")]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the k-shot table (from experiments.kshot_table)")
    parts = []
    for suffix, name in (("", "adapted"), ("_no_adaptation", "no adaptation")):
        part = df[["model", "k"]].copy()
        part["adaptation"] = name
        for d in DIMS:
            part[f"{d}_ccc"] = df[f"{d}_ccc{suffix}"].to_numpy(float)
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


# ---------------------------------------------------------------- data

def active_listeners(song: Song, filt: TaskFilter | None = None) -> list[str]:
    """The song's listeners whose curve moves (not flat by the authors' filter, `data.is_flat`)."""
    filt = filt or TaskFilter()
    return [k for k in song.listeners if not is_flat(song.curves[k], filt.flat_threshold, filt.flat_window)]


def rater_spread(song: Song, listeners: Sequence[str] | None = None) -> float:
    """Mean over time and both dimensions of the std across listeners (all by default; 0 if < 2)."""
    curves = [song.curves[k] for k in (song.listeners if listeners is None else listeners)]
    if len(curves) < 2:
        return 0.0
    n = min(len(c) for c in curves)
    vals = np.stack([c.values()[:n] for c in curves])  # [L, T, 2]
    return float(vals.std(axis=0).mean()) if n else 0.0


def most_disputed_songs(ds: MusicDataset, n: int = 1, min_listeners: int = 3) -> list[str]:
    """Ids of the `n` songs whose active (non-flat) listeners disagree most, among songs with enough of them."""
    spread = {s.song_id: rater_spread(s, active_listeners(s)) for s in ds.songs.values()}
    count = {s.song_id: len(active_listeners(s)) for s in ds.songs.values()}
    ok = [sid for sid in ds.songs if count[sid] >= min_listeners]
    if len(ok) < n:  # fall back to the songs with the most active listeners
        ok = sorted(ds.songs, key=lambda sid: -count[sid])[:n]
    return sorted(ok, key=lambda sid: -spread[sid])[:n]


def listener_agreement(ds: MusicDataset, song_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per (listener, song): every metric of that listener's curve against the song's MEAN curve."""
    from dsaml_utils.metrics import score_song

    rows = []
    for sid in song_ids if song_ids is not None else list(ds.songs):
        song = ds.songs[sid]
        if MEAN not in song.curves:
            continue
        mean = song.curves[MEAN].values()
        for lst in song.listeners:
            own = song.curves[lst].values()
            n = min(len(own), len(mean))
            if n >= 2:
                rows.append({"listener": lst, "song": sid, "steps": n, **score_song(own[:n], mean[:n])})
    return pd.DataFrame(rows)


def plot_listener_agreement(agreement: pd.DataFrame, provenance: Mapping[str, object] | None = None) -> Figure:
    """Histograms of each listener's CCC and RMSE against the mean curve, over (listener, song) pairs."""
    cols = ["arousal_ccc", "valence_ccc", "arousal_rmse", "valence_rmse"]
    missing = [c for c in cols if c not in agreement.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the agreement table (from listener_agreement)")
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
    for ax, c in zip(axes, cols):
        x = agreement[c].to_numpy(float)
        ax.hist(x, bins=min(30, max(5, len(x) // 3)), color="tab:purple" if "ccc" in c else "tab:orange", alpha=0.8)
        ax.axvline(np.mean(x), color="black", ls="--", lw=1)
        ax.set_title(f"{c} (mean {np.mean(x):.3f})", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"One listener against the mean of all listeners ({len(agreement)} listener-song pairs)")
    fig.tight_layout()
    return stamp(fig, provenance)


def plot_listener_curves(
    song: Song,
    listeners: Sequence[str] | None = None,
    max_listeners: int = 4,
    provenance: Mapping[str, object] | None = None,
) -> Figure:
    """Arousal and valence over time for several listeners of one song, plus their mean (Figure 5).

    By default the first `max_listeners` listeners whose curves move (flat curves last).
    """
    if listeners is None:
        active = active_listeners(song)
        listeners = (active + [k for k in song.listeners if k not in active])[:max_listeners]
    chosen = list(listeners)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharex=True)
    palette = plt.get_cmap("tab10")
    for d, ax in enumerate(axes):
        for i, lst in enumerate(chosen):
            c = song.curves[lst]
            ax.plot(c.times, c.values()[:, d], color=palette(i % 10), lw=1.3, alpha=0.9, label=f"listener {lst}")
        if MEAN in song.curves:
            c = song.curves[MEAN]
            ax.plot(c.times, c.values()[:, d], **MEAN_STYLE)
        ax.set_title(DIMS[d])
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("value")
    axes[1].legend(fontsize=7, loc="best")
    fig.suptitle(f"Song {song.song_id}: {len(chosen)} of its {len(song.listeners)} listeners "
                 f"(spread across them {rater_spread(song, chosen):.3f})")
    fig.tight_layout()
    return stamp(fig, provenance)


def plot_dataset_stats(ds: MusicDataset, provenance: Mapping[str, object] | None = None) -> Figure:
    """Histograms: song length, listeners per song, songs per listener, label values, rater spread."""
    songs = list(ds.songs.values())
    length = [len(s.curves[MEAN]) * 0.5 for s in songs if MEAN in s.curves]
    per_song = [len(s.listeners) for s in songs]
    per_listener = [len(ds.songs_of(lst)) for lst in ds.listeners()]
    means = [s.curves[MEAN].values() for s in songs if MEAN in s.curves]
    vals = np.concatenate(means) if means else np.zeros((0, 2))
    spread = [rater_spread(s) for s in songs if len(s.listeners) >= 2]
    panels = [
        ("labelled length (s)", length),
        ("listeners per song", per_song),
        ("songs per listener", per_listener),
        ("mean arousal (all steps)", vals[:, 0]),
        ("mean valence (all steps)", vals[:, 1]),
        ("rater spread per song (std)", spread),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(12, 6))
    for ax, (title, x) in zip(axes.flat, panels):
        x = np.asarray(x, dtype=float)
        if len(x):
            if np.all(x == np.round(x)) and x.max() - x.min() <= 40:  # counts: one bar per integer
                bins = np.arange(x.min(), x.max() + 2) - 0.5
            else:
                bins = min(30, max(5, len(np.unique(x))))
            ax.hist(x, bins=bins, color="tab:blue", alpha=0.8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{title} (n={len(x)})", fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{ds.name}: {len(songs)} songs, {len(ds.listeners())} listeners, range {ds.value_range}")
    fig.tight_layout()
    return stamp(fig, provenance)


# ---------------------------------------------------------------- inputs and model

def plot_spectrogram_slices(
    mel: np.ndarray,
    times: Sequence[float] | None = None,
    n: int = 6,
    provenance: Mapping[str, object] | None = None,
) -> Figure:
    """A song's log-mel slices [T, frames, mels]: all of them side by side, then `n` one by one."""
    mel = np.asarray(mel)
    if mel.ndim != 3:
        raise ValueError(f"expected mel of shape [T, frames, mels], got {mel.shape}")
    T = mel.shape[0]
    times = np.asarray(times if times is not None else np.arange(T) * 0.5)
    n = max(1, min(n, T))
    picks = np.linspace(0, T - 1, n).round().astype(int)
    vmin, vmax = np.percentile(mel, [2, 99.5])
    fig = plt.figure(figsize=(12, 5.2))
    grid = fig.add_gridspec(2, n, height_ratios=[1.1, 1])
    top = fig.add_subplot(grid[0, :])
    strip = mel.reshape(-1, mel.shape[2]).T  # [mels, T*frames]
    top.imshow(strip, aspect="auto", origin="lower", vmin=vmin, vmax=vmax, cmap="magma",
               extent=[times[0], times[-1] + 0.5, 0, mel.shape[2]])
    for t in times[picks]:
        top.axvline(t, color="cyan", lw=0.8)
    top.set_xlabel("time (s)")
    top.set_ylabel("mel bin")
    top.set_title(f"{T} slices of 0.5 s, each {mel.shape[1]} frames x {mel.shape[2]} mel bins")
    for j, i in enumerate(picks):
        ax = fig.add_subplot(grid[1, j])
        ax.imshow(mel[i].T, aspect="auto", origin="lower", vmin=vmin, vmax=vmax, cmap="magma")
        ax.set_title(f"slice {i} ({times[i]:.1f} s)", fontsize=8)
        ax.set_xlabel("frame", fontsize=7)
        ax.tick_params(labelsize=6)
        if j:
            ax.set_yticks([])
    fig.tight_layout()
    return stamp(fig, provenance)


def plot_embedding_map(
    embeddings: Mapping[str, np.ndarray],
    labels: Mapping[str, np.ndarray],
    provenance: Mapping[str, object] | None = None,
    title: str = "Global embeddings (first two principal components)",
) -> Figure:
    """Songs' global embeddings projected on their first two principal components, coloured by each
    song's mean arousal and mean valence (`labels`: song id -> [2])."""
    ids = [k for k in embeddings if k in labels]
    if len(ids) < 2:
        raise ValueError("need embeddings and labels for at least two songs")
    x = np.stack([np.asarray(embeddings[k], dtype=float) for k in ids])
    x = x - x.mean(0)
    u, sv, _ = np.linalg.svd(x, full_matrices=False)
    pcs = u[:, :2] * sv[:2] if x.shape[1] >= 2 else np.pad(u[:, :1] * sv[:1], ((0, 0), (0, 1)))
    var = sv**2 / max((sv**2).sum(), 1e-12)
    y = np.stack([np.asarray(labels[k], dtype=float) for k in ids])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for d, ax in enumerate(axes):
        sc = ax.scatter(pcs[:, 0], pcs[:, 1], c=y[:, d], cmap="coolwarm", s=22, edgecolor="0.3", lw=0.3)
        fig.colorbar(sc, ax=ax, label=f"song mean {DIMS[d]}")
        ax.set_xlabel(f"PC1 ({var[0]:.0%} of variance)")
        ax.set_ylabel(f"PC2 ({var[1] if len(var) > 1 else 0:.0%})")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: {len(ids)} songs, {x.shape[1]}-d")
    fig.tight_layout()
    return stamp(fig, provenance)


def _heatmaps(rows: Mapping[str, Mapping[str, np.ndarray]], cmap: str, diag: bool, suptitle: str) -> Figure:
    """A grid of [T, T] heatmaps: one row per entry of `rows`, one column per inner key."""
    cols = list(next(iter(rows.values())).keys())
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(3.6 * len(cols), 3.3 * len(rows)), squeeze=False)
    for r, (rname, maps) in enumerate(rows.items()):
        for c, cname in enumerate(cols):
            a = np.asarray(maps[cname], dtype=float)
            if a.ndim != 2 or a.shape[0] != a.shape[1]:
                raise ValueError(f"{rname}/{cname}: expected a square [T, T] map, got {a.shape}")
            ax = axes[r, c]
            im = ax.imshow(a, cmap=cmap, origin="upper", interpolation="nearest")
            title = f"{cname}" if len(rows) == 1 else f"{rname}\n{cname}"
            if diag:
                title += f"  (mean diag {np.diag(a).mean():.3f})"
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("key step j")
            ax.set_ylabel("query step i")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_band_masks(
    masks: Mapping[str, np.ndarray], provenance: Mapping[str, object] | None = None
) -> Figure:
    """The band masks M_n[i, j] = 1 iff |i - j| <= n, side by side (white = may attend)."""
    fig = _heatmaps({"masks": dict(masks)}, cmap="Greys_r", diag=False,
                    suptitle="Band masks of the dual-scale attention")
    return stamp(fig, provenance)


def plot_attention_maps(
    maps: Mapping[str, Mapping[str, np.ndarray]], provenance: Mapping[str, object] | None = None
) -> Figure:
    """Head- and batch-averaged last-layer attention, one row per model (Figure 4: local vs global)."""
    fig = _heatmaps(maps, cmap="viridis", diag=True,
                    suptitle="Attention maps of the last layer (rows: model, columns: scale)")
    return stamp(fig, provenance)


# ---------------------------------------------------------------- training and results

def _as_frame(h: object) -> pd.DataFrame:
    return h if isinstance(h, pd.DataFrame) else pd.DataFrame(list(h))  # type: ignore[arg-type]


def plot_training_curves(
    histories: Mapping[str, object],
    metrics: Sequence[str] | None = None,
    x: str = "step",
    provenance: Mapping[str, object] | None = None,
) -> Figure:
    """One panel per metric, one line per run; each history is a DataFrame or a list of row dicts."""
    frames = {k: _as_frame(v) for k, v in histories.items()}
    if not frames:
        raise ValueError("no training histories to plot")
    if metrics is None:
        first = next(iter(frames.values()))
        metrics = [c for c in first.columns if c != x and pd.api.types.is_numeric_dtype(first[c])]
    metrics = list(metrics)
    if not metrics:
        raise ValueError("no numeric metric columns to plot")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for label, df in frames.items():
            if m in df.columns:
                d = df[[x, m]].dropna() if x in df.columns else df[[m]].dropna().reset_index(names=x)
                ax.plot(d[x], d[m], marker="o" if len(d) < 20 else None, ms=3, label=label)
        ax.set_title(m)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    return stamp(fig, provenance)


def plot_predicted_curves(
    songs: Sequence[Mapping[str, object]], provenance: Mapping[str, object] | None = None
) -> Figure:
    """True vs predicted curves; each item has "title", "times" [T], "truth" [T, 2], "preds" {name: [T, 2]}."""
    if not songs:
        raise ValueError("no songs to plot")
    fig, axes = plt.subplots(len(songs), 2, figsize=(11, 2.9 * len(songs)), squeeze=False)
    palette = plt.get_cmap("tab10")
    for r, item in enumerate(songs):
        times = np.asarray(item["times"])
        truth = np.asarray(item["truth"])
        for d in range(2):
            ax = axes[r, d]
            ax.plot(times, truth[:, d], color="black", lw=2, label=str(item.get("truth_label", "truth")))
            for i, (name, p) in enumerate(dict(item["preds"]).items()):  # type: ignore[arg-type]
                ax.plot(times, np.asarray(p)[:, d], color=palette(i), lw=1.4, label=name)
            ax.set_title(f"{item.get('title', '')} - {DIMS[d]}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[r, 0].set_ylabel("value")
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    axes[0, 1].legend(fontsize=7)
    fig.tight_layout()
    return stamp(fig, provenance)


def plot_metric_lines(
    df: pd.DataFrame,
    x: str,
    metrics: Sequence[str],
    hue: str | None = None,
    provenance: Mapping[str, object] | None = None,
    title: str | None = None,
) -> Figure:
    """Metric vs `x` (e.g. the k-shot curve: CCC against support songs), one line per `hue` value."""
    missing = [c for c in [x, *metrics, *([hue] if hue else [])] if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} not in table (has {list(df.columns)})")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
    groups = df.groupby(hue, sort=False) if hue else [("", df)]
    for ax, m in zip(axes[0], metrics):
        for label, g in groups:
            stats = g.groupby(x)[m].agg(["mean", "std"]).reset_index()
            ax.errorbar(stats[x].to_numpy(), stats["mean"].to_numpy(float),
                        yerr=stats["std"].fillna(0).to_numpy(float), marker="o", ms=4,
                        capsize=3, label=str(label) or None)
        ax.set_title(m)
        ax.set_xlabel(x)
        ax.grid(alpha=0.3)
    if hue:
        axes[0, -1].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return stamp(fig, provenance)


def plot_kshot_curve(
    df: pd.DataFrame,
    metrics: Sequence[str] = ("arousal_ccc", "valence_ccc"),
    provenance: Mapping[str, object] | None = None,
) -> Figure:
    """The k-shot curve: a metric after adapting on k songs of a new listener, against k.

    `df` has columns k, model, the metrics and optionally "adaptation" (kshot_long's format): one colour
    per model, solid lines adapted and dashed lines "no adaptation".
    """
    missing = [c for c in ["k", "model", *metrics] if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} not in the k-shot table (has {list(df.columns)})")
    df = df.dropna(subset=list(metrics), how="all")
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.4 * len(metrics), 3.5), squeeze=False)
    models = list(dict.fromkeys(df["model"]))
    palette = plt.get_cmap("tab10")
    kinds = list(dict.fromkeys(df["adaptation"])) if "adaptation" in df.columns else [None]
    for ax, m in zip(axes[0], metrics):
        for i, model in enumerate(models):
            for kind in kinds:
                g = df[(df["model"] == model) & ((df["adaptation"] == kind) if kind is not None else True)]
                g = g.groupby("k")[m].mean().dropna()
                if len(g):
                    dashed = kind is not None and kind != "adapted"
                    ax.plot(g.index.to_numpy(), g.to_numpy(float), marker="o", ms=4, color=palette(i % 10),
                            ls="--" if dashed else "-", label=model if kind is None else f"{model}, {kind}")
        ks = sorted(df["k"].unique())
        ax.set_xticks(ks)
        ax.set_title(m)
        ax.set_xlabel("k (annotated songs used for adaptation)")
        ax.grid(alpha=0.3)
    axes[0, -1].legend(fontsize=7)
    fig.suptitle("Personalization with k annotated songs")
    fig.tight_layout()
    return stamp(fig, provenance)


def plot_metric_bars(
    df: pd.DataFrame,
    metrics: Sequence[str],
    label: str = "model",
    provenance: Mapping[str, object] | None = None,
    title: str | None = None,
) -> Figure:
    """Grouped bars of metrics per model (one row of `df` per model)."""
    missing = [c for c in [label, *metrics] if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} not in table (has {list(df.columns)})")
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(df) * len(metrics) ** 0.5 + 3), 3.6))
    w = 0.8 / len(metrics)
    xs = np.arange(len(df))
    for i, m in enumerate(metrics):
        ax.bar(xs + (i - (len(metrics) - 1) / 2) * w, df[m].to_numpy(dtype=float), w, label=m)
    ax.set_xticks(xs, df[label].astype(str), rotation=20, ha="right")
    ax.axhline(0, color="black", lw=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return stamp(fig, provenance)
