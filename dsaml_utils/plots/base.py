"""Saving figures and tables, each stamped with where its numbers came from.

Each plotting function returns a matplotlib ``Figure`` and takes an optional ``provenance`` dict
(e.g. ``{"data": "synthetic", "preset": "quick", "seed": 0}``) that `stamp` writes as a small grey
footer with the code version added (``code: <commit>``, `short_code_version`), so a figure copied out of
context still says what produced it. ``save_figure`` writes PNG (and SVG) files and returns their paths as
a `SavedFigure` (a list that shows as one line in a notebook), ``save_table`` writes a Markdown table with a
provenance line plus the same table as CSV.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from dsaml_utils.io.provenance import code_version

DIMS = ("arousal", "valence")


MEAN_STYLE = dict(color="black", lw=2.2, ls="--", label="mean of listeners")


def provenance_text(provenance: Mapping[str, object] | None) -> str:
    """'data: synthetic | preset: quick | seed: 0' from a provenance dict (empty for None)."""
    if not provenance:
        return ""
    return " | ".join(f"{k}: {v}" for k, v in provenance.items() if v is not None and v != "")


@functools.lru_cache(maxsize=1)  # once per process: the code that runs is the code it imported
def short_code_version() -> str:
    """io.provenance.code_version() as footers show it: the commit's first 12 characters, '-dirty' kept."""
    version = code_version()
    commit, dirty, _ = version.partition("-dirty")
    if len(commit) == 40 and all(c in "0123456789abcdef" for c in commit):
        return commit[:12] + ("-dirty" if dirty else "")
    return version  # not a git checkout: "dsaml_utils <version>"


def stamp(fig: Figure, provenance: Mapping[str, object] | None) -> Figure:
    """Write the provenance, plus the code version when it has none, as a small footer on the figure
    (and keep it for the saved metadata)."""
    if provenance and "code" not in provenance:
        provenance = {**provenance, "code": short_code_version()}
    text = provenance_text(provenance)
    if text:
        fig.text(0.005, 0.002, text, fontsize=6.5, color="0.45", ha="left", va="bottom")
    fig._dsaml_provenance = text  # read back by save_figure
    return fig


class SavedFigure(list):
    """The paths save_figure wrote (PNG first), a list that a notebook echoes as one short line."""

    @property
    def path(self) -> Path:
        """The PNG."""
        return self[0]

    def __repr__(self) -> str:
        return f"<saved {self[0].stem}: {', '.join(p.suffix.lstrip('.') for p in self)}>" if self else "<saved nothing>"

    def _repr_pretty_(self, p, cycle) -> None:
        p.text(repr(self))


def square_maps(rows: Mapping[str, Mapping[str, np.ndarray]], cmap: str, suptitle: str, diag: bool = False,
                size: tuple[float, float] = (3.6, 3.3)) -> Figure:
    """A grid of [T, T] heatmaps (query rows, key columns): one row per entry of `rows`, one column per inner
    key, `size` inches per panel; non-finite entries (masked scores) are left blank; `diag` adds each
    map's mean diagonal to its title."""
    cols = list(next(iter(rows.values())).keys())
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(size[0] * len(cols), size[1] * len(rows)),
                             squeeze=False)
    for r, (rname, maps) in enumerate(rows.items()):
        for c, cname in enumerate(cols):
            a = np.asarray(maps[cname], dtype=float)
            if a.ndim != 2 or a.shape[0] != a.shape[1]:
                where = f"{rname}/{cname}" if rname else cname
                raise ValueError(f"{where}: expected a square [T, T] map, got {a.shape}")
            ax = axes[r, c]
            im = ax.imshow(np.where(np.isfinite(a), a, np.nan), cmap=cmap, origin="upper", interpolation="nearest")
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


def save_figure(
    fig: Figure, name: str, figures_dir: str | Path, svg: bool = True, close: bool = False
) -> SavedFigure:
    """Save `fig` as figures_dir/name.png (and .svg); returns the written paths (a SavedFigure).

    The figure stays open by default so that a notebook still shows it; scripts pass close=True.
    """
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    desc = getattr(fig, "_dsaml_provenance", "")
    paths = SavedFigure([out / f"{name}.png"] + ([out / f"{name}.svg"] if svg else []))
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
