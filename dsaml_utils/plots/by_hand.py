"""Figures of the notebooks' by-hand computations: toy curves under distortions (06), one attention head (07)."""

from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from dsaml_utils.data.types import HOP_SECONDS
from dsaml_utils.metrics import ccc, pcc, rmse
from dsaml_utils.plots.base import square_maps, stamp


def plot_toy_curves(target: np.ndarray, preds: Mapping[str, np.ndarray],
                    provenance: Mapping[str, object] | None = None) -> Figure:
    """One panel per prediction: the target, the prediction and its CCC, PCC and RMSE in the title."""
    if not preds:
        raise ValueError("no predictions to plot")
    t = np.asarray(target, dtype=np.float64)
    seconds = np.arange(len(t)) * HOP_SECONDS
    fig, axes = plt.subplots(1, len(preds), figsize=(3.3 * len(preds), 2.9), sharey=True, squeeze=False)
    for ax, (name, p) in zip(axes[0], preds.items()):
        ax.plot(seconds, t, color="black", lw=1.6, label="target")
        ax.plot(seconds, p, color="tab:orange", lw=1.4, label="prediction")
        scores = [round(f(p, t), 2) + 0.0 for f in (ccc, pcc, rmse)]  # + 0.0: no "-0.00"
        ax.set_title(f"{name}\nCCC {scores[0]:.2f} · PCC {scores[1]:.2f} · RMSE {scores[2]:.2f}", fontsize=8.5)
        ax.set_xlabel("time (s)")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("value")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    fig.suptitle("One target, five ways to miss it")
    fig.tight_layout()
    return stamp(fig, provenance)


def plot_attention_pieces(pieces: Mapping[str, np.ndarray], title: str,
                          provenance: Mapping[str, object] | None = None) -> Figure:
    """[T, T] maps side by side (query rows, key columns); -inf entries (masked scores) are left blank."""
    if not pieces:
        raise ValueError("no maps to plot")
    fig = square_maps({"": dict(pieces)}, cmap="viridis", suptitle=title, size=(3.4, 3.2))
    return stamp(fig, provenance)
