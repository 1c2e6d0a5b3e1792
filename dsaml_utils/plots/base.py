"""Saving figures and tables, each stamped with where its numbers came from.

Each plotting function returns a matplotlib ``Figure`` and takes an optional ``provenance`` dict
(e.g. ``{"data": "synthetic", "preset": "quick", "seed": 0}``) that `stamp` writes as a small grey
footer, so a figure copied out of context still says what produced it. ``save_figure`` writes PNG
(and SVG) files, ``save_table`` writes a Markdown table with a provenance line plus the same table as CSV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

DIMS = ("arousal", "valence")


MEAN_STYLE = dict(color="black", lw=2.2, ls="--", label="mean of listeners")


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
