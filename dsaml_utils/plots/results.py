"""Figures of models and results: attention maps, training curves, predictions, k-shot curves, metric bars."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dsaml_utils.metrics import DIMENSIONS
from dsaml_utils.plots.base import DIMS, square_maps, stamp


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


def plot_band_masks(
    masks: Mapping[str, np.ndarray], provenance: Mapping[str, object] | None = None
) -> Figure:
    """The band masks M_n[i, j] = 1 iff |i - j| <= n, side by side (white = may attend)."""
    fig = square_maps({"masks": dict(masks)}, cmap="Greys_r", suptitle="Band masks of the dual-scale attention")
    return stamp(fig, provenance)


def plot_attention_maps(
    maps: Mapping[str, Mapping[str, np.ndarray]], provenance: Mapping[str, object] | None = None
) -> Figure:
    """Head- and batch-averaged last-layer attention, one row per model (Figure 4: local vs global)."""
    fig = square_maps(maps, cmap="viridis", diag=True,
                      suptitle="Attention maps of the last layer (rows: model, columns: scale)")
    return stamp(fig, provenance)


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


def plot_curve_png(path: Path, times: np.ndarray, pred: np.ndarray, title: str,
                   value_range: tuple[float, float]) -> None:
    """A two-panel PNG (arousal, valence) of a predicted curve."""
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


def plot_importance(df: pd.DataFrame, top: int = 15, provenance: Mapping[str, object] | None = None,
                    title: str = "Permutation importance") -> Figure:
    """Horizontal bars: the drop in CCC per descriptor (evaluation.importance), one panel per dimension,
    the `top` descriptors of each panel, with the std over repeats as error bars."""
    cols = [f"{d}_drop" for d in DIMENSIONS]
    missing = [c for c in cols + [f"{c}_std" for c in cols] if c not in df.columns]
    if missing:
        raise ValueError(f"columns {missing} not in table (has {list(df.columns)})")
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.28 * top + 1.6))
    for ax, d, color in zip(axes, DIMENSIONS, ("tab:red", "tab:blue")):
        part = df.sort_values(f"{d}_drop", ascending=False).head(top)[::-1]
        ys = np.arange(len(part))
        ax.barh(ys, part[f"{d}_drop"], xerr=part[f"{d}_drop_std"], color=color, alpha=0.8)
        ax.set_yticks(ys, part.index.astype(str), fontsize=7)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_xlabel(f"drop in {d} CCC when shuffled")
        ax.grid(axis="x", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    return stamp(fig, provenance)
