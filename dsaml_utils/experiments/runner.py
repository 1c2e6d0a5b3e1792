"""Running an experiment: train (or reuse) and evaluate each spec for each seed, then its table.

Use from a notebook::

    from dsaml_utils.experiments.runner import run_experiment
    from dsaml_utils.training.config import preset

    table, results, paths = run_experiment("table4", preset("quick"), seeds=[0, 1, 2], out="runs/exp")
"""

from __future__ import annotations

from pathlib import Path

from dsaml_utils.data.registry import load_dataset
from dsaml_utils.errors import RunConflict, UserError
from dsaml_utils.evaluation.results import RunMetrics
from dsaml_utils.evaluation.run import evaluate_run
from dsaml_utils.experiments.specs import EXPERIMENTS, RunSpec
from dsaml_utils.experiments.tables import (
    kshot_table,
    personalization_table,
    provenance,
    results_table,
    save_experiment,
)
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.metrics import DIMENSIONS
from dsaml_utils.training.config import RunConfig
from dsaml_utils.training.trainer import train


def run_specs(specs: list[RunSpec], base: RunConfig, seeds: list[int], out: str | Path,
              progress: bool = True, ds=None) -> dict[str, list[RunMetrics]]:
    """Train (or reuse) and evaluate every spec for every seed; returns row name -> RunMetrics per seed."""

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
    results: dict[str, list[RunMetrics]] = {}
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
            except RunConflict as exc:
                raise RunConflict(f"{exc}. (Runs are reused by folder: use another --out for changed settings)")
            runs.append(evaluate_run(folder, ds=ds, cache=cache, progress=progress, reuse=True))
        results[spec.name] = runs
    return {name: results[name] for name in names}


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
