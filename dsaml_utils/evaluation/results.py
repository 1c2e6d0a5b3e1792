"""metrics.json: what one evaluated run scored, its headline numbers, and several runs combined."""

from __future__ import annotations

import json
import math
from pathlib import Path

from dsaml_utils.metrics import aggregate_seeds


def headline(metrics: dict, k: int = 1) -> dict[str, dict[str, float]]:
    """{"dmer": {metric: mean}, "pdmer": ..., "pdmer_no_adaptation": ...} from a metrics dict (k-shot k)."""
    out = {}
    if "summary" in metrics.get("dmer", {}):
        out["dmer"] = {m: v["mean"] for m, v in metrics["dmer"]["summary"].items()}
    ks = metrics.get("pdmer", {}).get("kshot", {}).get(str(k), {})
    if "adapted" in ks:
        out["pdmer"] = {m: v["mean"] for m, v in ks["adapted"]["summary"].items()}
        out["pdmer_no_adaptation"] = {m: v["mean"] for m, v in ks["no_adaptation"]["summary"].items()}
    same = metrics.get("pdmer", {}).get("same_song", {})
    if "adapted" in same:
        out["pdmer_same_song"] = {m: v["mean"] for m, v in same["adapted"]["summary"].items()}
        out["pdmer_same_song_no_adaptation"] = {m: v["mean"] for m, v in same["no_adaptation"]["summary"].items()}
    return out


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _finite(x):
    """NaN/inf -> None, so metrics.json is strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def combine_runs(metrics: list[dict], k: int = 1) -> dict[str, dict[str, dict[str, float]]]:
    """Mean +- std over runs (seeds) of each headline metric: {"dmer": {metric: {"mean","std","n"}}, ...}."""
    out = {}
    heads = [headline(m, k) for m in metrics]
    for part in ("dmer", "pdmer", "pdmer_no_adaptation", "pdmer_same_song", "pdmer_same_song_no_adaptation"):
        have = [h[part] for h in heads if part in h]
        if have:
            out[part] = aggregate_seeds(have)
    return out
