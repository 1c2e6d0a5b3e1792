"""Figures of one listener (notebook 08): their curves next to the models' predictions, with the legend
outside the axes so that it never covers a curve, and the metrics of a trait scenario as an HTML table."""

from __future__ import annotations

import html
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dsaml_utils.plots.base import DIMS, stamp

ROW_INCHES = 2.1
"""Height of one song's row of panels (titles and tick labels included)."""
COLORS = {"personalized (1 song)": "tab:blue", "meta-trained, not adapted": "tab:orange",
          "average-listener model": "tab:green"}
"""The same prediction in the same colour in every figure of notebook 08."""
TITLE_INCHES, LEGEND_INCHES = 0.3, 0.35
"""Room above the panels for the figure title and for the legend."""


def plot_listener_songs(songs: Sequence[Mapping[str, object]], title: str = "",
                        provenance: Mapping[str, object] | None = None) -> Figure:
    """One row per song (arousal, valence): the listener's curve in black and each prediction in colour; one
    legend above the panels. Items have "title", "times" [T], "truth" [T, 2], "truth_label", "preds" {name: [T, 2]},
    and optionally "styles" {name: matplotlib line keywords}."""
    if not songs:
        raise ValueError("no songs to plot")
    title_in = TITLE_INCHES if title else 0.05
    height = ROW_INCHES * len(songs) + title_in + LEGEND_INCHES + 0.2
    fig, axes = plt.subplots(len(songs), 2, figsize=(11, height), squeeze=False, sharex="row")
    palette = plt.get_cmap("tab10")
    for r, item in enumerate(songs):
        times, truth = np.asarray(item["times"]), np.asarray(item["truth"])
        styles = dict(item.get("styles", {}))  # type: ignore[arg-type]
        for d in range(2):
            ax = axes[r, d]
            ax.plot(times, truth[:, d], color="black", lw=2, label=str(item.get("truth_label", "listener")))
            for i, (name, p) in enumerate(dict(item["preds"]).items()):  # type: ignore[arg-type]
                style = {"color": COLORS.get(name, palette(3 + i)), "lw": 1.4, **styles.get(name, {})}
                ax.plot(times, np.asarray(p)[:, d], label=name, **style)
            ax.set_title(f"{item.get('title', '')} - {DIMS[d]}", fontsize=9)
            ax.grid(alpha=0.3)
        axes[r, 0].set_ylabel("value")
    for ax in axes[-1]:
        ax.set_xlabel("time (s)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - title_in / height), ncol=len(labels),
               fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10, y=1 - 0.04 / height, va="top")
    fig.tight_layout(rect=(0, 0.15 / height, 1, 1 - (title_in + LEGEND_INCHES) / height))
    return stamp(fig, provenance)


def plot_trait_scenario(scenario: Mapping[str, object], title: str = "",
                        provenance: Mapping[str, object] | None = None) -> Figure:
    """`evaluation.traits.trait_scenario`'s curves: the listener made from traits (black), the song's MEAN
    curve they were made from (grey, dashed) and the two predictions."""
    item = {"title": title, "times": scenario["times"], "truth": scenario["target"],
            "truth_label": "listener with these traits",
            "preds": {"song's MEAN curve": scenario["mean"], **dict(scenario["preds"])},  # type: ignore[arg-type]
            "styles": {"song's MEAN curve": {"color": "0.55", "ls": "--", "lw": 1.2}}}
    return plot_listener_songs([item], provenance=provenance)


def scores_html(scores: pd.DataFrame, caption: str = "") -> str:
    """A small HTML table of a scores frame (rows: predictions; CCC and RMSE columns), 3 decimals."""
    body = scores.to_html(float_format=lambda v: f"{v:.3f}", border=0, classes="dsaml-scores")
    return (f"<b>{html.escape(caption)}</b>" if caption else "") + body
