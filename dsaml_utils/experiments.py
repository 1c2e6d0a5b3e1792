"""The paper's comparisons, computed from runs: train (or reuse) each run for several seeds, then tables.

An experiment is a list of `RunSpec`s (a row label, mode, strategy, model and config overrides). Each
spec is trained once per seed into ``<out>/<spec slug>/seed<k>`` (a finished run with the same config is
reused, an unfinished one resumed), evaluated (metrics.json, reused when current), and the rows of the
table are mean +- std over seeds. Specs with the same settings share their runs across experiments
(Table 2's "DSAML" row is Table 4's "Ours").

Experiments (`EXPERIMENTS`):
  table1           DMER on test songs (mean labels): DSAML vs CRNN, DNN, MCRNN, DAMFF
  table2           PDMER: every model trained with MAML on personalized tasks (marked †) and without
  table3           DMER ablations: w/o local attention, w/o global attention, w/o attention loss, w/o adapter
  table4           PDMER: DSAML, w/o MAML (†), w/o personalized tasks (‡), w/o both (†‡)
  kshot            PDMER after adapting on k = 1, 2, 4, 8 support songs (those that a dataset allows)
  order            first- vs second-order MAML
  personalization  DSAML with MAML and personalized tasks vs the same model without personalization
                   (no MAML, mean labels): held-out listeners, with and without adaptation, both PDMER
                   protocols (support = another song of the listener / the first 30 s of the same song)

In `personalization` and `kshot` the MAML row starts from the weights of the no-MAML row's run of the same
seed (`RunSpec.init_from`): personalization is then an addition to the usual DMER model, and the
comparison isolates it. (From scratch, the quick preset's few hundred meta-updates on 2 cores left the
MAML model a weaker DMER model, arousal CCC 0.65 against 0.78 on the test songs, seed 0.)

Use from a notebook::

    from dsaml_utils.config import preset
    from dsaml_utils.experiments import run_experiment
    table, results, paths = run_experiment("table4", preset("quick"), seeds=[0, 1, 2], out="runs/exp")
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dsaml_utils.config import RunConfig, apply_overrides
from dsaml_utils.errors import UserError
from dsaml_utils.metrics import DIMENSIONS

METRIC_NAMES = {"ccc": "CCC", "pcc": "PCC", "rmse": "RMSE", "kendall_tau": "tau", "r2": "R2"}
PARTS = ("dmer", "pdmer", "pdmer_no_adaptation", "pdmer_same_song", "pdmer_same_song_no_adaptation")
"""What a table column can show: DMER, PDMER (other songs, k-shot) and PDMER on the same song, adapted or not."""


@dataclass
class RunSpec:
    """One row of a table: how its runs differ from the base config."""

    name: str  # row label
    mode: str = "pdmer"  # "dmer" or "pdmer"
    strategy: str | None = None  # None: the mode's default (pdmer: personalized, dmer: traditional)
    model: str = "dsaml"
    overrides: dict[str, Any] = field(default_factory=dict)  # config field path -> value (config.apply_overrides)
    init_from: str | None = None  # name of another row of the experiment: start from its run of the same seed

    def config(self, base: RunConfig, seed: int) -> RunConfig:
        """The run config of this spec for one seed (a copy of base)."""
        cfg = RunConfig.from_dict(json.loads(json.dumps(base.to_dict())))
        cfg.mode, cfg.strategy, cfg.model = self.mode, self.strategy, self.model
        cfg.train.seed = int(seed)
        return apply_overrides(cfg, [f"{k}={json.dumps(v)}" for k, v in self.overrides.items()])

    def slug(self) -> str:
        """Folder name: model-mode-strategy, plus a hash of the overrides when there are any."""
        strategy = self.strategy or ("personalized" if self.mode == "pdmer" else "traditional")
        s = f"{self.model}-{self.mode}-{strategy}"
        if self.overrides:
            s += "-" + hashlib.sha1(json.dumps(self.overrides, sort_keys=True).encode()).hexdigest()[:8]
        return s


def _dsaml_pair(model: str, label: str) -> list[RunSpec]:
    return [RunSpec(f"{label}†", "pdmer", "personalized", model), RunSpec(label, "dmer", "traditional", model)]


BASELINES = {"damff": "DAMFF", "mcrnn": "MCRNN", "dnn": "DNN", "crnn": "CRNN"}

EXPERIMENTS: dict[str, dict] = {
    "table1": {"title": "Table 1: traditional DMER on the test songs (mean labels)", "part": "dmer",
               "specs": [RunSpec("DSAML", "dmer", "traditional")]
               + [RunSpec(v, "dmer", "traditional", k) for k, v in BASELINES.items()]},
    "table2": {"title": "Table 2: PDMER on held-out listeners (1-shot); † = trained with MAML on personalized tasks",
               "part": "pdmer",
               "specs": [RunSpec("DSAML", "pdmer", "personalized")]
               + [s for k, v in BASELINES.items() for s in _dsaml_pair(k, v)]},
    "table3": {"title": "Table 3: DMER ablations of DSAML", "part": "dmer",
               "specs": [RunSpec("DSAML", "dmer", "traditional"),
                         RunSpec("w/o local attention", "dmer", "traditional",
                                 overrides={"model_config.use_local_attention": False}),
                         RunSpec("w/o global attention", "dmer", "traditional",
                                 overrides={"model_config.use_global_attention": False}),
                         RunSpec("w/o attention loss", "dmer", "traditional",
                                 overrides={"model_config.use_attention_loss": False}),
                         RunSpec("w/o adapter", "dmer", "traditional", overrides={"model_config.use_adapter": False})]},
    "table4": {"title": "Table 4: PDMER ablations (1-shot); † w/o MAML, ‡ w/o personalized task construction",
               "part": "pdmer",
               "specs": [RunSpec("DSAML", "pdmer", "personalized"), RunSpec("DSAML †", "dmer", "personalized"),
                         RunSpec("DSAML ‡", "pdmer", "traditional"), RunSpec("DSAML †‡", "dmer", "traditional")]},
    "kshot": {"title": "PDMER after adapting on k support songs", "part": "kshot",
              "specs": [RunSpec("DSAML", "pdmer", "personalized", init_from="DSAML †‡"),
                        RunSpec("DSAML †‡", "dmer", "traditional")]},
    "order": {"title": "First- vs second-order MAML (PDMER, 1-shot)", "part": "pdmer",
              "specs": [RunSpec("first order", "pdmer", "personalized"),
                        RunSpec("second order", "pdmer", "personalized", overrides={"meta.first_order": False})]},
    "personalization": {"title": "Personalized (MAML + personalized tasks) vs not (no MAML, mean labels): "
                                 "held-out listeners, 1-shot", "part": "personalization",
                        "specs": [RunSpec("DSAML (MAML, personalized tasks)", "pdmer", "personalized",
                                          init_from="DSAML w/o personalization (no MAML, mean labels)"),
                                  RunSpec("DSAML w/o personalization (no MAML, mean labels)", "dmer", "traditional")]},
}
"""Name -> {"title", "part" (what the table shows), "specs"}."""


# ---------------------------------------------------------------------------------------------------
# running


def run_specs(specs: list[RunSpec], base: RunConfig, seeds: list[int], out: str | Path,
              progress: bool = True, ds=None) -> dict[str, list[dict]]:
    """Train (or reuse) and evaluate every spec for every seed; returns row name -> metrics per seed."""
    from dsaml_utils.data import load_dataset
    from dsaml_utils.evaluate import evaluate_run
    from dsaml_utils.features import FeatureCache
    from dsaml_utils.train import train

    if not seeds:
        raise UserError("give at least one seed")
    out = Path(out)
    ds = ds if ds is not None else load_dataset(base.dataset, base.root)
    cache = FeatureCache(base.cache_dir)
    names = [s.name for s in specs]
    for spec in specs:
        if spec.init_from is not None and spec.init_from not in names:
            raise UserError(f"row {spec.name!r} starts from row {spec.init_from!r}, which is not in this experiment")
    # rows that start from another row's runs are trained after it
    order = sorted(specs, key=lambda s: s.init_from is not None)
    results: dict[str, list[dict]] = {}
    for spec in order:
        runs = []
        for seed in seeds:
            cfg = spec.config(base, seed)
            slug = spec.slug()
            if spec.init_from is not None:  # e.g. dsaml-pdmer-personalized-from-dsaml-dmer-traditional
                source = next(s for s in specs if s.name == spec.init_from)
                cfg.init = str(out / source.slug() / f"seed{seed}")
                slug += "-from-" + source.slug()
            folder = out / slug / f"seed{seed}"
            if progress:
                print(f"[experiments] {spec.name} (seed {seed}): {folder}", flush=True)
            try:
                train(cfg, folder, ds=ds, cache=cache, progress=progress)
            except UserError as exc:
                if "different config" in str(exc):
                    raise UserError(f"{exc}. (Runs are reused by folder: use another --out for changed settings)")
                raise
            runs.append(evaluate_run(folder, ds=ds, cache=cache, progress=progress, reuse=True))
        results[spec.name] = runs
    return {name: results[name] for name in names}


def _summary(m: dict, part: str, k: int = 1) -> dict | None:
    """The {metric: {"mean", ...}} summary of one run's metrics for a part ("dmer", "pdmer", ...)."""
    if part == "dmer":
        return m.get("dmer", {}).get("summary")
    pd_ = m.get("pdmer", {})
    block = pd_.get("same_song", {}) if part.startswith("pdmer_same_song") else pd_.get("kshot", {}).get(str(k), {})
    key = "no_adaptation" if part.endswith("no_adaptation") else "adapted"
    return block.get(key, {}).get("summary")


def results_table(results: dict[str, list[dict]], part: str = "dmer", k: int = 1,
                  metrics: tuple[str, ...] = ("ccc", "pcc", "rmse")) -> pd.DataFrame:
    """Numeric table: one row per spec, columns "<dim>_<metric>" (mean over seeds) and "..._std", "seeds"."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}")
    rows = []
    for name, runs in results.items():
        sums = [s for s in (_summary(m, part, k) for m in runs) if s]
        row: dict[str, Any] = {"model": name}
        for d in DIMENSIONS:
            for met in metrics:
                vals = [s[f"{d}_{met}"]["mean"] for s in sums if f"{d}_{met}" in s]
                row[f"{d}_{met}"] = float(np.mean(vals)) if vals else math.nan
                row[f"{d}_{met}_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
        row["seeds"] = len(sums)
        row["train_s"] = float(np.mean([m.get("train", {}).get("train_wall_seconds", math.nan) for m in runs]))
        rows.append(row)
    return pd.DataFrame(rows).set_index("model")


def kshot_table(results: dict[str, list[dict]], kshots: tuple[int, ...] | None = None) -> pd.DataFrame:
    """Numeric k-shot table: rows (model, k), adapted and no-adaptation CCC per dimension (mean, std)."""
    rows = []
    for name, runs in results.items():
        ks = kshots or tuple(int(k) for k in runs[0].get("pdmer", {}).get("kshot", {}))
        for k in ks:
            row: dict[str, Any] = {"model": name, "k": k}
            for part in ("pdmer", "pdmer_no_adaptation"):
                sums = [s for s in (_summary(m, part, k) for m in runs) if s]
                for d in DIMENSIONS:
                    vals = [s[f"{d}_ccc"]["mean"] for s in sums]
                    col = f"{d}_ccc" + ("" if part == "pdmer" else "_no_adaptation")
                    row[col] = float(np.mean(vals)) if vals else math.nan
                    row[col + "_std"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan
            pairs = [m["pdmer"]["kshot"].get(str(k), {}).get("pairs", 0) for m in runs]
            row["pairs"] = pairs[0] if len(set(pairs)) == 1 else float(np.mean(pairs))  # the same for every seed
            rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "k"])


def personalization_table(results: dict[str, list[dict]], k: int = 1,
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


def provenance(results: dict[str, list[dict]], base: RunConfig, seeds: list[int]) -> dict[str, str]:
    """Where a table's numbers come from: data (and its fingerprint), preset, seeds, code version."""
    first = next((m for runs in results.values() for m in runs), {})
    data = first.get("data", {})
    return {"data": f"{base.dataset} ({Path(base.root).name}, {str(data.get('fingerprint', ''))[:12]})",
            "preset": base.preset, "seeds": ",".join(map(str, seeds)),
            "code": str(first.get("code_version", ""))[:12]}


def save_experiment(df: pd.DataFrame, name: str, title: str, tables_dir: str | Path,
                    prov: dict[str, str]) -> tuple[Path, Path]:
    """tables_dir/name.md (title, mean ± std table, provenance) and tables_dir/name.csv (numeric)."""
    from dsaml_utils.plots import markdown_table, provenance_text
    from dsaml_utils.train import atomic_write_text

    tables_dir = Path(tables_dir)
    md, csv = tables_dir / f"{name}.md", tables_dir / f"{name}.csv"
    text = f"### {title}\n\n{markdown_table(format_table(df))}\n\n_{provenance_text(prov)}_\n"
    atomic_write_text(md, text)
    atomic_write_text(csv, df.reset_index().to_csv(index=False))
    return md, csv


def run_experiment(name: str, base: RunConfig, seeds: list[int], out: str | Path,
                   tables_dir: str | Path | None = None, progress: bool = True, ds=None):
    """Run one experiment of EXPERIMENTS; returns (numeric table, results, (md, csv) paths)."""
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    exp = EXPERIMENTS[name]
    specs = list(exp["specs"])
    if base.encoder == "none":  # DSAML without adapter has no input left when there is no global encoder
        specs = [s for s in specs if s.overrides.get("model_config.use_adapter") is not False]
    results = run_specs(specs, base, seeds, out, progress=progress, ds=ds)
    part = exp["part"]
    if part == "kshot":
        df = kshot_table(results, base.eval.kshots)
    elif part == "personalization":
        df = personalization_table(results)
    else:
        df = results_table(results, part)
        if part == "pdmer":
            extra = results_table(results, "pdmer_no_adaptation", metrics=("ccc",))
            df = df.join(extra[[f"{d}_ccc{s}" for d in DIMENSIONS for s in ("", "_std")]].add_suffix("_no_adaptation"))
    prov = provenance(results, base, seeds)
    paths = save_experiment(df, name, exp["title"], tables_dir or Path(out) / "tables", prov)
    return df, results, paths


# ---------------------------------------------------------------------------------------------------
# CLI


def _cli(args: argparse.Namespace) -> int:
    from dsaml_utils.plots import markdown_table
    from dsaml_utils.train import config_from_args

    args.mode, args.strategy, args.init, args.seed = "dmer", None, None, None
    base = config_from_args(args)
    for name in args.names:
        if name not in EXPERIMENTS:
            raise UserError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    for name in args.names:
        df, _, (md, csv) = run_experiment(name, base, args.seeds, args.out, args.tables, progress=not args.quiet)
        print(f"\n{EXPERIMENTS[name]['title']}\n{markdown_table(format_table(df))}\n-> {md}, {csv}")
    return 0


def register_cli(subparsers) -> None:
    """Add `dsaml experiment`."""
    from dsaml_utils.train import add_run_options

    p = subparsers.add_parser("experiment", help="train/reuse runs over seeds and build the paper's tables")
    p.add_argument("names", nargs="+", metavar="NAME", help=f"experiments: {', '.join(EXPERIMENTS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--out", default="runs/experiments", help="runs folder (default runs/experiments)")
    p.add_argument("--tables", help="where tables go (default <out>/tables)")
    add_run_options(p)
    p.set_defaults(func=_cli)
