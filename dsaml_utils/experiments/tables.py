"""The experiments' tables: one row per spec, mean +- std over seeds, saved as Markdown and CSV."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dsaml_utils.evaluation.results import PARTS, RunMetrics
from dsaml_utils.io.atomic import atomic_write_text
from dsaml_utils.metrics import DIMENSIONS
from dsaml_utils.plots.base import markdown_table, provenance_text
from dsaml_utils.training.config import RunConfig
from dsaml_utils.training.protocol import LEAKAGE_MARK

METRIC_NAMES = {"ccc": "CCC", "pcc": "PCC", "rmse": "RMSE", "kendall_tau": "tau", "r2": "R2"}


def _mean_std(vals: list[float]) -> tuple[float, float]:
    """Mean and sample std over seeds (NaN when there are too few values)."""
    mean = float(np.mean(vals)) if vals else math.nan
    return mean, float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan


def results_table(results: dict[str, list[RunMetrics]], part: str = "dmer", k: int = 1,
                  metrics: tuple[str, ...] = ("ccc", "pcc", "rmse")) -> pd.DataFrame:
    """Numeric table: one row per spec, columns "<dim>_<metric>" (mean over seeds) and "..._std", "seeds"."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}")
    rows = []
    for name, runs in results.items():
        sums = [s for s in (m.summary(part, k) for m in runs) if s]
        row: dict[str, Any] = {"model": name}
        for d in DIMENSIONS:
            for met in metrics:
                vals = [s[f"{d}_{met}"].mean for s in sums if f"{d}_{met}" in s]
                row[f"{d}_{met}"], row[f"{d}_{met}_std"] = _mean_std(vals)
        row["seeds"] = len(sums)
        row["train_s"] = float(np.mean([m.train_seconds for m in runs]))
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def kshot_table(results: dict[str, list[RunMetrics]], kshots: tuple[int, ...] | None = None) -> pd.DataFrame:
    """Numeric k-shot table: rows (model, k), adapted and no-adaptation CCC per dimension (mean, std)."""
    rows = []
    for name, runs in results.items():
        ks = kshots or tuple(runs[0].pdmer.kshot)
        for k in ks:
            row: dict[str, Any] = {"model": name, "k": k}
            for part in ("pdmer", "pdmer_no_adaptation"):
                sums = [s for s in (m.summary(part, k) for m in runs) if s]
                for d in DIMENSIONS:
                    vals = [s[f"{d}_ccc"].mean for s in sums]
                    col = f"{d}_ccc" + ("" if part == "pdmer" else "_no_adaptation")
                    row[col], row[col + "_std"] = _mean_std(vals)
            pairs = [m.pairs(k) for m in runs]
            row["pairs"] = pairs[0] if len(set(pairs)) == 1 else float(np.mean(pairs))  # the same for every seed
            rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "k"])


def personalization_table(results: dict[str, list[RunMetrics]], k: int = 1,
                          metrics: tuple[str, ...] = ("ccc",)) -> pd.DataFrame:
    """Numeric table: per spec, held-out-listener scores with and without adaptation, for both protocols
    (k support songs, other songs scored: columns "..._other"; first steps of a song, its rest scored: "..._same")."""
    parts = {"pdmer": "_other", "pdmer_no_adaptation": "_other_no_adaptation",
             "pdmer_same_song": "_same", "pdmer_same_song_no_adaptation": "_same_no_adaptation"}
    out = None
    for part, suffix in parts.items():
        t = results_table(results, part, k, metrics)
        extra = t[["seeds", "train_s"]]
        t = t.drop(columns=["seeds", "train_s"])
        t.columns = [c[:-4] + suffix + "_std" if c.endswith("_std") else c + suffix for c in t.columns]
        out = t if out is None else out.join(t)
    return out.join(extra)


def format_table(df: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Display form: each "<col>" with a "<col>_std" partner becomes "mean ± std"; std columns dropped."""
    out = pd.DataFrame(index=df.index)
    for col in df.columns:
        if col.endswith("_std") and col[:-4] in df.columns:
            continue
        if f"{col}_std" in df.columns:
            out[_pretty(col)] = [_pm(m, s, digits) for m, s in zip(df[col], df[f"{col}_std"])]
        elif col == "train_s":
            out["train s"] = [f"{v:.0f}" if np.isfinite(v) else "" for v in df[col]]
        else:
            out[_pretty(col)] = df[col]
    return out


def _pm(m: float, s: float, digits: int) -> str:
    if not np.isfinite(m):
        return ""
    return f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if np.isfinite(s) else "")


def _pretty(col: str) -> str:
    for d in DIMENSIONS:
        if col.startswith(d + "_"):
            rest, tags = col[len(d) + 1:], []
            for tag, text in (("_no_adaptation", "no adapt."), ("_other", "other songs"), ("_same", "same song")):
                if rest.endswith(tag):
                    rest = rest[: -len(tag)]
                    tags.insert(0, text)
            return f"{d[0].upper()} {METRIC_NAMES.get(rest, rest)}" + (f" ({', '.join(tags)})" if tags else "")
    return col


def provenance(results: dict[str, list[RunMetrics]], base: RunConfig, seeds: list[int]) -> dict[str, str]:
    """Where a table's numbers come from: data (and its fingerprint), preset, protocol (and whether its weights
    were selected on the test split), seeds, code version."""
    every = [m for runs in results.values() for m in runs]
    first = every[0] if every else None
    fingerprint = first.data.fingerprint if first is not None else ""
    protocols = sorted({m.protocol_name for m in every}) or [base.protocol]
    return {"data": f"{base.dataset} ({Path(base.root).name}, {fingerprint[:12]})",
            "preset": base.preset, "protocol": ", ".join(protocols),
            "selection": LEAKAGE_MARK if any(m.selected_on_test for m in every) else None,
            "seeds": ",".join(map(str, seeds)), "code": _short_version(first.code_version if first is not None else "")}


def save_experiment(df: pd.DataFrame, name: str, title: str, tables_dir: str | Path,
                    prov: dict[str, str]) -> tuple[Path, Path]:
    """tables_dir/name.md (title, mean ± std table, provenance) and tables_dir/name.csv (numeric)."""

    tables_dir = Path(tables_dir)
    md, csv = tables_dir / f"{name}.md", tables_dir / f"{name}.csv"
    text = f"### {title}\n\n{markdown_table(format_table(df))}\n\n_{provenance_text(prov)}_\n"
    atomic_write_text(md, text)
    atomic_write_text(csv, df.reset_index().to_csv(index=False))
    return md, csv


def _short_version(version: str) -> str:
    """A commit shortened to 12 characters, keeping a '-dirty' mark (uncommitted changes) when there is one."""
    return version[:12] + ("-dirty" if version.endswith("-dirty") and len(version) > 12 else "")
