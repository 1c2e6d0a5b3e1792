"""The measuring side of `dsaml bench --against`: times one hot path with whichever dsaml_utils it imports.

Not imported by the package: `experiments.against` copies this file out of the tree and runs it as a script
in a fresh interpreter, `python hotpaths_harness.py --json-args JOB`, with PYTHONPATH naming the tree whose
library is measured (an old commit's worktree or the current checkout). It must therefore run against the
library of every tree it is pointed at: it uses only APIs that exist unchanged since commit bbc4fc8
(`training.config.preset/apply_overrides`, `training.trainer.Trainer/train`, `evaluation.run.evaluate_run`,
`features.cache.FeatureCache`), and it applies no speed settings of its own (no malloc tuning, no thread
setting other than JOB's `threads`, the same for both trees): it measures what a user's process gets.

JOB (a JSON object) holds: path ("dmer", "maml", "eval" or "warm"), root (synthetic dataset), cache (this
tree's feature cache folder), work (a folder for run folders), preset, sets (["FIELD=VALUE", ...] overrides
for both trees), warmup and updates (untimed then timed `Trainer.update` calls), eval_warmup and evals
(untimed then timed `evaluate_run` calls), threads, and paths (for "warm": run each of them once, untimed,
so that the cache holds every song's features before anything is timed).

The paths:
  dmer  `Trainer(cfg, out, cache=..., progress=False)` with cfg.mode "dmer"; each `trainer.update()` timed
  maml  the same with cfg.mode "pdmer" (strategy None: the mode's default, personalized): one MAML meta-step
  eval  a "pdmer" run trained with `train` for train.steps=1 (train.eval_every=0), then each
        `evaluate_run(run, write=False, progress=False)` timed (DMER on the test songs, k-shot adaptation of
        every held-out listener, the same-song protocol)

Prints one JSON line: the path, each timed call's seconds, the losses of the timed updates, how many feature
cache entries had to be computed (0 once the cache is warm), the peak RSS of this process (getrusage
ru_maxrss), `dsaml_utils.__file__` (so the caller can check which tree was measured), torch's version and
thread count.
"""

from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

import dsaml_utils
from dsaml_utils.evaluation.run import evaluate_run
from dsaml_utils.features.cache import FeatureCache
from dsaml_utils.training.config import apply_overrides, preset
from dsaml_utils.training.trainer import Trainer, train

RESULT_KEY = "dsaml_hotpaths_harness"
"""Marks the result line on stdout (the library may print other lines)."""

MODES = {"dmer": "dmer", "maml": "pdmer", "eval": "pdmer"}
"""Hot path -> the run mode it trains in."""


def run_config(job: dict, mode: str, extra: tuple[str, ...] = ()):
    """The preset with this job's dataset and cache, the mode (and its default strategy), then the overrides."""
    cfg = preset(job["preset"], root=job["root"], cache_dir=job["cache"])
    cfg.mode, cfg.strategy = mode, None
    cfg.check()
    return apply_overrides(cfg, [*job["sets"], *extra])


def time_updates(job: dict, path: str, warmup: int, updates: int) -> dict:
    """Seconds and loss of each timed `trainer.update()` after `warmup` untimed ones."""
    cfg = run_config(job, MODES[path])
    out = tempfile.mkdtemp(prefix=f"{path}-", dir=job["work"])
    cache = FeatureCache(job["cache"])
    trainer = Trainer(cfg, out, cache=cache, progress=False)
    times, losses = [], []
    for i in range(warmup + updates):
        t0 = time.perf_counter()
        loss = trainer.update()
        seconds = time.perf_counter() - t0
        trainer.step += 1
        if i >= warmup:
            times.append(seconds)
            losses.append(float(loss))
    return {"times_s": times, "losses": losses, "cache_misses": cache.misses}


def time_evaluation(job: dict, warmup: int, evals: int) -> dict:
    """Seconds of each timed `evaluate_run` of a run trained (by this tree) for one step."""
    cfg = run_config(job, MODES["eval"], ("train.steps=1", "train.eval_every=0"))
    run = Path(tempfile.mkdtemp(prefix="eval-", dir=job["work"]))
    cache = FeatureCache(job["cache"])
    train(cfg, run, cache=cache, progress=False)
    times = []
    for i in range(warmup + evals):
        t0 = time.perf_counter()
        evaluate_run(run, cache=cache, write=False, progress=False)
        seconds = time.perf_counter() - t0
        if i >= warmup:
            times.append(seconds)
    return {"times_s": times, "losses": [], "cache_misses": cache.misses}


def run_job(job: dict) -> dict:
    """The measurement JOB asks for (see the module docstring)."""
    path = job["path"]
    if path == "warm":
        for p in job["paths"]:
            if p == "eval":
                time_evaluation(job, 0, 1)
            else:
                time_updates(job, p, 0, 1)
        return {"times_s": [], "losses": [], "cache_misses": 0}
    if path == "eval":
        return time_evaluation(job, job["eval_warmup"], job["evals"])
    if path in MODES:
        return time_updates(job, path, job["warmup"], job["updates"])
    raise ValueError(f"unknown path {path!r}")


def main(argv: list[str]) -> int:
    """`hotpaths_harness.py --json-args JOB`: print the result line."""
    if len(argv) != 2 or argv[0] != "--json-args":
        print("usage: hotpaths_harness.py --json-args JOB", file=sys.stderr)
        return 2
    job = json.loads(argv[1])
    torch.set_num_threads(int(job["threads"]))
    result = run_job(job)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({
        RESULT_KEY: 1,
        "path": job["path"],
        **result,
        "peak_rss_mib": peak_kib / 1024,
        "dsaml_file": str(Path(dsaml_utils.__file__).resolve()),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
