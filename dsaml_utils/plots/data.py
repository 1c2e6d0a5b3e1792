"""Figures of a dataset: listeners' curves, their agreement, dataset statistics, spectrograms, embeddings."""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dsaml_utils.data.types import MEAN, MusicDataset, Song, TaskFilter, is_flat
from dsaml_utils.metrics import score_song
from dsaml_utils.plots.base import DIMS, MEAN_STYLE, stamp


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
