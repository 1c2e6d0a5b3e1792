"""Plain-text tables of one run's metrics (95% intervals) or of several runs (mean +- std)."""

from __future__ import annotations

import math

from dsaml_utils.evaluation.results import RunMetrics, combine_runs
from dsaml_utils.metrics import DIMENSIONS, METRICS
from dsaml_utils.training.protocol import LEAKAGE_MARK

HEADLINE_METRICS = ("ccc", "pcc", "rmse")
"""Metrics shown in the printed tables by default (metrics.json holds all of metrics.METRICS)."""


def format_metrics(metrics: RunMetrics | list[RunMetrics], k: int = 1,
                   shown: tuple[str, ...] = HEADLINE_METRICS) -> str:
    """A plain-text table of one run's metrics (with 95% intervals) or of several runs (mean +- std); `shown`:
    which of metrics.METRICS are columns (seed 004's protocol: ccc, pcc, kendall_tau, rmse, r2)."""
    bad = [m for m in shown if m not in METRICS]
    if bad or not shown:
        raise ValueError(f"metrics {bad or list(shown)}: choose from {', '.join(METRICS)}")
    many = isinstance(metrics, list)
    runs = metrics if many else [metrics]
    rows = {"dmer": "DMER (test songs, mean labels)", "pdmer": f"PDMER {k}-shot, adapted",
            "pdmer_no_adaptation": f"PDMER {k}-shot, no adaptation",
            "pdmer_same_song": "PDMER same song, adapted", "pdmer_same_song_no_adaptation": "PDMER same song, no adapt."}
    cols = [f"{d}_{m}" for d in DIMENSIONS for m in shown]
    table: list[tuple[str, list[str]]] = []  # (row title, cells), laid out once all cells are known
    lines: list[str] = []
    if many:
        comb = combine_runs(runs, k)
        for part, title in rows.items():
            if part in comb:
                table.append((title, [f"{comb[part][c].mean:.3f} ± {_fmt(comb[part][c].std)}" if c in comb[part]
                                      else "-" for c in cols]))
        lines.append(f"mean ± std over {len(runs)} run(s): " + ", ".join(m.run for m in runs))
        lines.append("protocol " + ", ".join(sorted({m.protocol_name for m in runs})))
    else:
        m = runs[0]
        for part, title in rows.items():
            s = m.summary(part, k)
            if s:
                table.append((title, [f"{s[c].mean:.3f} [{_fmt(s[c].lo)}, {_fmt(s[c].hi)}]" if c in s else "-"
                                      for c in cols]))
        lines.append(f"run {m.run} (seed {m.seed}, {m.mode}/{m.strategy}, "
                     f"{m.model}, preset {m.preset}, protocol {m.protocol_name}); 95% intervals over songs / pairs")
        for part, skipped in (("dmer", m.dmer.skipped), ("pdmer", m.pdmer.skipped)):
            if skipped is not None:
                lines.append(f"{part}: skipped ({skipped})")
    if any(m.selected_on_test for m in runs):
        lines.append(f"{LEAKAGE_MARK}: the weights were chosen by their score on these test songs")
    width = max([22] + [len(c) + 2 for _, cells in table for c in cells])
    head = [f"{'':34}" + "".join(f"{c:>{width}}" for c in cols)]
    return "\n".join(head + [f"{t:34}" + "".join(f"{c:>{width}}" for c in cells) for t, cells in table] + lines)


def _fmt(x) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"
