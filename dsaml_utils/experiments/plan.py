"""What the workbook's tables need, and training all of it at once, several runs at a time.

`WORKBOOK_PLAN` declares the experiments the notebooks show and over how many seeds: the personalization
and k-shot tables over three seeds (the session's seed and the next two), so that they show mean ± std,
every other table over the session's seed. `workbook_plan(seed)` turns it into experiment -> seeds.

`train_plan(plan, base, out, workers)` trains and evaluates every distinct run folder the plan needs,
exactly as `runner.run_specs` would (the same folders, `runner.train_and_evaluate`), in a pool of
`workers` processes: a run that starts from another run's weights (`RunSpec.init_from`) waits for it, and
the costliest runs start first. Training is seeded per (seed, update), so the weights and metrics are the
same as when the runs are trained one after another; the notebooks then find every run finished and
evaluated. One progress bar counts runs; each finished run prints one line with its seconds.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dsaml_utils.data.registry import load_dataset
from dsaml_utils.errors import UserError
from dsaml_utils.experiments.runner import (
    Job,
    experiment_scoring,
    experiment_specs,
    spec_jobs,
    train_and_evaluate,
)
from dsaml_utils.experiments.specs import EXPERIMENTS
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.training.config import RunConfig

WORKBOOK_PLAN: dict[str, int] = {"table1": 1, "table2": 1, "table3": 1, "table4": 1, "kshot": 3, "order": 1,
                                 "personalization": 3, "features": 1}
"""Experiment -> number of seeds (the session's seed, then +1, +2, ...) for each table the notebooks show."""

NEEDS_LISTENERS = ("table2", "table4", "kshot", "order", "personalization")
"""Experiments with PDMER rows: left out of the plan for a dataset without listener identities."""

UPDATE_SECONDS = {"dsaml": (0.11, 0.20), "crnn": (0.18, 0.30), "dnn": (0.36, 0.46), "damff": (0.30, 0.35),
                  "mcrnn": (0.67, 0.75)}
"""Model -> seconds per (DMER update, first-order MAML meta-step), quick preset, one thread (measured on
the project's 2-core CPU, median of 5); only used to start the longest runs first. Second-order MAML costs
2.2x a first-order step; models not named (the frame-feature family: 260 numbers per step) 0.02 s."""


def workbook_plan(seed: int = 0, personalized: bool = True) -> dict[str, list[int]]:
    """WORKBOOK_PLAN as experiment -> seeds, starting from `seed` (without PDMER when not personalized)."""
    return {name: [int(seed) + i for i in range(n)] for name, n in WORKBOOK_PLAN.items()
            if personalized or name not in NEEDS_LISTENERS}


def workbook_seeds(name: str, seed: int = 0) -> list[int]:
    """The seeds the workbook uses for one experiment (those of WORKBOOK_PLAN; one for any other)."""
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    return [int(seed) + i for i in range(WORKBOOK_PLAN.get(name, 1))]


def plan_jobs(plan: dict[str, list[int]], base: RunConfig, out: str | Path) -> list[Job]:
    """Every distinct run (one per folder) that the plan's experiments need, sources before the runs that
    start from them, each scored for every experiment that reads it; a folder that two experiments would
    fill with different settings is an error."""
    jobs: dict[Path, Job] = {}
    for name, seeds in plan.items():
        for job in spec_jobs(experiment_specs(name, base), base, seeds, out, experiment_scoring(name)):
            old = jobs.setdefault(job.folder, job)
            if old is not job and old.cfg.settings() != job.cfg.settings():
                raise UserError(f"{job.folder}: {name} row {job.row!r} and row {old.row!r} need different "
                                "settings in the same run folder")
            old.scoring = old.scoring.union(job.scoring)
    return list(jobs.values())


def job_cost(cfg: RunConfig) -> float:
    """Rough seconds of training a run: updates x seconds per update (UPDATE_SECONDS)."""
    frames = cfg.model_config.get("frontend") == "frames"
    dmer, maml = (0.02, 0.02) if frames else UPDATE_SECONDS.get(cfg.model, (0.02, 0.02))
    per_update = (maml * (1.0 if cfg.meta.first_order else 2.2)) if cfg.maml else dmer
    return cfg.train.steps * per_update


def schedule(jobs: list[Job]) -> list[Job]:
    """Jobs by priority: own cost plus the cost of every run that starts from it (longest chains first)."""
    cost = {j.folder: job_cost(j.cfg) for j in jobs}
    after = {j.folder: j.after for j in jobs}
    chain = dict(cost)
    for j in jobs:  # add each run's cost to every run it (transitively) starts from
        src, seen = j.after, set()
        while src in chain and src not in seen:
            chain[src] += cost[j.folder]
            seen.add(src)
            src = after[src]
    return sorted(jobs, key=lambda j: -chain[j.folder])  # stable: plan order among equals


@dataclass
class PlanRun:
    """One finished job of train_plan."""

    folder: Path
    trained: bool  # False when a finished run was found (and only evaluated, or nothing at all)
    seconds: float


_DATASETS: dict[tuple[str, str], object] = {}


def _init_worker(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)  # see workbook.runner's docstring: one thread each on shared cores
    warnings.filterwarnings("ignore", message="IProgress not found")


def _work(job: Job) -> tuple[bool, float]:
    """In a worker process: train and evaluate one job (the dataset is loaded once per process)."""
    key = (job.cfg.dataset, str(job.cfg.root))
    if key not in _DATASETS:
        with warnings.catch_warnings():  # once per worker would repeat them: the caller's load shows them
            warnings.simplefilter("ignore")
            _DATASETS[key] = load_dataset(*key)
    _, trained, seconds = train_and_evaluate(job, _DATASETS[key], FeatureCache(job.cfg.cache_dir), progress=False)
    return trained, seconds


class RunFailed(RuntimeError):
    """A run of train_plan raised; names its folder (the worker's exception is the cause)."""


def _failed(job: Job, exc: BaseException) -> BaseException:
    msg = f"{job.folder}: {exc.__class__.__name__}: {exc}"
    if isinstance(exc, UserError):
        try:
            return type(exc)(msg)
        except TypeError:
            pass
    return RunFailed(f"training run failed: {msg}")


def train_plan(plan: dict[str, list[int]], base: RunConfig, out: str | Path, workers: int = 2,
               threads: int | None = 1, progress: bool = True, ds=None) -> list[PlanRun]:
    """Train and evaluate every run the plan needs (see the module docstring) with `workers` processes
    (1: one after another in this process, with `ds` when given); returns the finished jobs in order.

    threads: torch threads per run (None: torch's default). An error in one run stops the others (they
    resume from their last checkpoint next time) and is raised with the run's folder in the message."""
    if workers < 1:
        raise UserError(f"workers must be at least 1, not {workers}")
    out = Path(out)
    jobs = schedule(plan_jobs(plan, base, out))
    bar = tqdm(total=len(jobs), desc="runs", unit="run", disable=not progress)
    done: list[PlanRun] = []

    def finished(job: Job, trained: bool, seconds: float) -> None:
        done.append(PlanRun(job.folder, trained, round(seconds, 2)))
        bar.update(1)
        if progress:
            what = "trained and evaluated" if trained else "reused"
            bar.write(f"[plan] {job.folder.relative_to(out)}: {what} in {seconds:.1f} s")

    try:
        if workers == 1:
            _serial(jobs, ds, threads, finished)
        else:
            _parallel(jobs, workers, threads, finished)
    finally:
        bar.close()
    return done


def _serial(jobs: list[Job], ds, threads: int | None, finished) -> None:
    old = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        caches: dict[str, FeatureCache] = {}
        for job in jobs:
            cache = caches.setdefault(job.cfg.cache_dir, FeatureCache(job.cfg.cache_dir))
            try:
                if ds is None:
                    ds = load_dataset(job.cfg.dataset, job.cfg.root)
                _, trained, seconds = train_and_evaluate(job, ds, cache, progress=False)
            except Exception as exc:
                raise _failed(job, exc) from exc
            finished(job, trained, seconds)
    finally:
        torch.set_num_threads(old)


def _parallel(jobs: list[Job], workers: int, threads: int | None, finished) -> None:
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // workers)
    pending, ready_folders = list(jobs), set()
    running: dict[Future, Job] = {}
    all_folders = {j.folder for j in jobs}
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    ok = False
    try:
        while pending or running:
            for job in list(pending):  # start what may start, in priority order
                if len(running) >= workers:
                    break
                if job.after is None or job.after in ready_folders or job.after not in all_folders:
                    running[pool.submit(_work, job)] = job
                    pending.remove(job)
            if not running:
                raise RuntimeError(f"runs wait for each other: {', '.join(str(j.folder) for j in pending)}")
            complete, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in complete:
                job = running.pop(fut)
                exc = fut.exception()
                if exc is not None:
                    raise _failed(job, exc) from exc
                trained, seconds = fut.result()
                ready_folders.add(job.folder)
                finished(job, trained, seconds)
        ok = True
    finally:
        if not ok:
            _stop(pool, running)
        pool.shutdown(wait=True, cancel_futures=True)


def _stop(pool: ProcessPoolExecutor, running: dict[Future, Job]) -> None:
    """After an error: cancel what has not started and end the workers (their runs resume from checkpoints)."""
    for fut in running:
        fut.cancel()
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
