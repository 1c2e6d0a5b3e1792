"""Running an experiment: train (or reuse) and evaluate each spec for each seed, then its table.

Use from a notebook::

    from dsaml_utils.experiments.runner import run_experiment
    from dsaml_utils.training.config import preset

    table, results, paths = run_experiment("table4", preset("quick"), seeds=[0, 1, 2], out="runs/exp")

Under protocol "authors" (`base.protocol`) the runs live in <out>/authors/ and a table is saved as
<name>-authors, so the two protocols never share a run folder or a table file.

`spec_jobs` says which run folders an experiment needs (and which run each starts from); `run_specs`
trains them one after another, `experiments.plan.train_plan` several at a time in worker processes.
Both train and evaluate a run with `train_and_evaluate`, so the folders and their contents are the same.

A run is scored for what its experiment's table shows (`experiment_scoring`): DMER tables no PDMER,
1-shot tables k = 1, the k-shot table every k, the personalization table k = 1 and the same-song protocol.
A run that several experiments share is scored for all of them (`evaluation.run.Scoring.union`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from dsaml_utils.data.registry import load_dataset
from dsaml_utils.errors import RunConflict, UserError
from dsaml_utils.evaluation.results import RunMetrics
from dsaml_utils.evaluation.run import FULL, Scoring, evaluate_run
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


@dataclass
class Job:
    """One run an experiment needs: its row, seed, config and folder, and the folder it starts from."""

    row: str  # the spec's row label
    seed: int
    cfg: RunConfig
    folder: Path
    after: Path | None = None  # the run this one starts from (cfg.init): train it first
    scoring: Scoring = FULL  # the PDMER parts its tables read (evaluation.run.Scoring)


def experiment_specs(name: str, base: RunConfig) -> list[RunSpec]:
    """The specs (rows) of one experiment of EXPERIMENTS for this base config."""
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    specs = list(EXPERIMENTS[name]["specs"])
    if base.encoder == "none":  # DSAML without adapter has no input left when there is no global encoder
        specs = [s for s in specs if s.overrides.get("model_config.use_adapter") is not False]
    return specs


def experiment_scoring(name: str) -> Scoring:
    """The PDMER parts an experiment's table reads (by its "part"): none for DMER, k = 1 for the PDMER
    tables, every k for the k-shot table, k = 1 and the same-song protocol for personalization."""
    part = EXPERIMENTS[name]["part"]
    return {"dmer": Scoring((), False), "pdmer": Scoring((1,), False), "kshot": Scoring(None, False),
            "personalization": Scoring((1,), True)}[part]


def spec_jobs(specs: list[RunSpec], base: RunConfig, seeds: list[int], out: str | Path,
              scoring: Scoring = FULL) -> list[Job]:
    """Every (spec, seed) run under `out`, in an order that trains a run's `init_from` source first; each
    scored for `scoring`."""
    if not seeds:
        raise UserError("give at least one seed")
    out = protocol_dir(out, base)
    names = [s.name for s in specs]
    for spec in specs:
        if spec.init_from is not None and spec.init_from not in names:
            raise UserError(f"row {spec.name!r} starts from row {spec.init_from!r}, which is not in this experiment")
    jobs = []
    for spec in sorted(specs, key=lambda s: s.init_from is not None):  # sources first
        for seed in seeds:
            cfg = spec.config(base, seed)
            slug, after = spec.slug(), None
            if spec.init_from is not None:  # e.g. dsaml-pdmer-personalized-from-dsaml-dmer-traditional
                source = next(s for s in specs if s.name == spec.init_from)
                after = out / source.slug() / f"seed{seed}"
                cfg.init = str(after)
                slug += "-from-" + source.slug()
            jobs.append(Job(spec.name, int(seed), cfg, out / slug / f"seed{seed}", after, scoring))
    return jobs


def protocol_dir(out: str | Path, base: RunConfig) -> Path:
    """Where an experiment's runs go: `out`, or out/authors under the authors' protocol."""
    return Path(out) / "authors" if base.protocol == "authors" else Path(out)


def train_and_evaluate(job: Job, ds, cache: FeatureCache, progress: bool = True) -> tuple[RunMetrics, bool, float]:
    """Train (or reuse) the job's run, then evaluate it (metrics.json reused when current); returns
    (metrics, whether it was trained here, seconds)."""
    t0 = time.perf_counter()
    trained = not ((job.folder / "model.pt").is_file() and (job.folder / "train_summary.json").is_file())
    try:
        train(job.cfg, job.folder, ds=ds, cache=cache, progress=progress)
    except RunConflict as exc:
        raise RunConflict(f"{exc}. (Runs are reused by folder: use another --out for changed settings)")
    metrics = evaluate_run(job.folder, ds=ds, cache=cache, progress=progress, reuse=True, scoring=job.scoring)
    return metrics, trained, time.perf_counter() - t0


def run_specs(specs: list[RunSpec], base: RunConfig, seeds: list[int], out: str | Path,
              progress: bool = True, ds=None, scoring: Scoring = FULL) -> dict[str, list[RunMetrics]]:
    """Train (or reuse) and evaluate every spec for every seed (PDMER: the parts of `scoring`); returns row
    name -> RunMetrics per seed."""
    jobs = spec_jobs(specs, base, seeds, out, scoring)
    ds = ds if ds is not None else load_dataset(base.dataset, base.root)
    cache = FeatureCache(base.cache_dir)
    results: dict[str, list[RunMetrics]] = {s.name: [] for s in specs}
    for job in jobs:
        if progress:
            print(f"[experiments] {job.row} (seed {job.seed}): {job.folder}", flush=True)
        results[job.row].append(train_and_evaluate(job, ds, cache, progress)[0])
    return results


def run_experiment(name: str, base: RunConfig, seeds: list[int], out: str | Path,
                   tables_dir: str | Path | None = None, progress: bool = True, ds=None):
    """Run one experiment of EXPERIMENTS; returns (numeric table, results, (md, csv) paths)."""
    specs = experiment_specs(name, base)
    exp = EXPERIMENTS[name]
    results = run_specs(specs, base, seeds, out, progress=progress, ds=ds, scoring=experiment_scoring(name))
    part = exp["part"]
    if part == "kshot":
        df = kshot_table(results, base.eval.kshots)
    elif part == "personalization":
        df = personalization_table(results)
    else:
        df = results_table(results, part, metrics=exp.get("metrics", ("ccc", "pcc", "rmse")))
        if part == "pdmer":
            extra = results_table(results, "pdmer_no_adaptation", metrics=("ccc",))
            df = df.join(extra[[f"{d}_ccc{s}" for d in DIMENSIONS for s in ("", "_std")]].add_suffix("_no_adaptation"))
    prov = provenance(results, base, seeds)
    tag = "" if base.protocol == "paper" else f"-{base.protocol}"
    title = exp["title"] + (f" (protocol {base.protocol})" if tag else "")
    paths = save_experiment(df, name + tag, title, tables_dir or protocol_dir(out, base) / "tables", prov)
    return df, results, paths
