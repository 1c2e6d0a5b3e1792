"""One trained run scored under both protocols, side by side: what the protocol alone changes.

`protocol_table(run)` evaluates the run under "paper" and under "authors" (`training.protocol`; each into
its own metrics file, reused when current) and lists, per part and metric, both numbers and how many songs
or pairs each averaged. The weights are the same in both columns, so only the evaluation rules differ:
which listeners and pairs are scored (points 5-7), how full songs are stitched (8) and the model's mode
while predicting (9). The training-side rules (selection on the test split, epochs, task construction,
points 10-12) change the weights and therefore need runs trained under each protocol.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from dsaml_utils.data.types import MusicDataset
from dsaml_utils.evaluation.results import PARTS, RunMetrics
from dsaml_utils.evaluation.run import evaluate_run
from dsaml_utils.features.cache import FeatureCache

PROTOCOL_NAMES = ("paper", "authors")

METRICS = ("arousal_ccc", "valence_ccc", "arousal_pcc", "valence_pcc", "arousal_rmse", "valence_rmse")
"""The metrics the comparison lists."""


def _count(m: RunMetrics, part: str) -> int:
    """Songs (dmer) or (listener, song) pairs (pdmer parts, 1-shot) behind one part's means."""
    scores = m.scores(part, 1)
    return 0 if scores is None else len(scores.rows)


def protocol_rows(metrics: dict[str, RunMetrics]) -> pd.DataFrame:
    """Rows (part, metric) x columns (each protocol's mean, then its count) from {protocol: RunMetrics}."""
    rows = []
    for part in PARTS:
        sums = {p: m.summary(part, 1) for p, m in metrics.items()}
        if all(s is None for s in sums.values()):
            continue
        for metric in METRICS:
            row = {"part": part, "metric": metric}
            for p, s in sums.items():
                row[p] = s[metric].mean if s is not None and metric in s else float("nan")
            for p, m in metrics.items():
                row[f"n {p}"] = _count(m, part)
            rows.append(row)
    return pd.DataFrame(rows)


def protocol_table(run: str | Path, ds: MusicDataset | None = None, cache: FeatureCache | None = None,
                   progress: bool = True) -> pd.DataFrame:
    """The run evaluated under both protocols (metrics files reused when current), as `protocol_rows`."""
    metrics = {p: evaluate_run(run, ds=ds, cache=cache, progress=progress, reuse=True, protocol=p)
               for p in PROTOCOL_NAMES}
    return protocol_rows(metrics)
