"""`dsaml bench`: the batched (vmap) MAML meta-step against the per-task loop, and personalization time.

One run measures, for each DSAML preset, one outer update (`meta_step`) done both ways on the same
tasks from the same model state and seed: `WARMUP` warm-ups of each, then `repeats` timed runs, interleaved
(loop then batched, then batched then loop, ...), reporting medians and the ratio loop / batched (> 1
means batching is faster). It also times personalizing one new listener: adapting on one support song
(`meta.personalize`) and predicting one song. Inputs are random tensors of the real shapes (60 steps of
[51, 128] log-mel and a 1024-d global embedding for the paper preset): timing does not depend on values.

A full authors' meta-step (16 tasks x 16 inner steps, 1 support + 15 query songs) takes minutes on 2 CPU
cores even at the quick size, so both presets are timed on reduced meta-batches by default (quick: 16 tasks
x 4 inner steps, 4 query songs; paper: 8 tasks x 2 inner steps, 3 query songs); the report prints what was
used. Timings are wall-clock and depend on what else runs on the machine: the report gives the load average.

By default the bench first asks glibc's malloc to keep freed memory (`runtime.keep_freed_memory`), for both ways
alike. Otherwise every tensor over 32 MB is a fresh mmap whose pages fault in on first touch (~2.5 us per
4 KB page, measured on a 2-core cloud VM): the batched path, whose per-task stacks are n times larger, pays for that
on every step while the loop's smaller tensors are recycled. `--no-tune-malloc` measures without it.

On cores shared with other busy processes, OpenMP threads that spin-wait make multi-threaded timings
erratic, the loop's many small parallel regions most: `--threads 1`, or OMP_WAIT_POLICY=PASSIVE in the
environment (read when torch starts), gives steadier numbers. The report shows both settings.
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from dsaml_utils.errors import UserError
from dsaml_utils.meta.batched import meta_optimizer, meta_step
from dsaml_utils.meta.maml import Batch, MetaConfig, Task, personalize
from dsaml_utils.models.dsaml import DSAML, DSAMLConfig
from dsaml_utils.models.inference import predict_with
from dsaml_utils.models.registry import example_batch


@dataclass
class BenchCase:
    """One preset to time and the meta-batch it is timed on."""

    preset: str  # "quick", "paper" or "smoke" (a toy size for tests)
    tasks: int  # tasks per meta-step
    inner_steps: int  # inner SGD steps per task
    query_songs: int  # query songs per task (support: 1 song)
    steps: int = 60  # 0.5 s steps per song (60 = the authors' 30 s windows)
    personalize_steps: int = 16  # inner steps when personalizing one listener (authors: 16)


DEFAULT_CASES = {
    "smoke": BenchCase("smoke", tasks=2, inner_steps=1, query_songs=2, steps=8, personalize_steps=2),
    "quick": BenchCase("quick", tasks=16, inner_steps=4, query_songs=4),  # reduced: see module docstring
    "paper": BenchCase("paper", tasks=8, inner_steps=2, query_songs=3),
}


WARMUP = 2
"""Untimed meta-steps of each way before the timed ones. Two, because the batched step's first two calls still
grow the process's heap to its larger peak (paper preset, measured: 434 k and 98 k minor page faults, then
none; the loop's first call alone does): with one warm-up, a timed batched step paid about a second of
page faults that no later step of a training run pays (docs/performance.md, round four)."""


TINY_MODEL = dict(d_model=16, n_layers=1, n_heads=2, d_ff=32, n_frames=11, n_mels=24, global_dim=16,
                  max_rel_distance=8)
"""Field overrides on the quick model for the "smoke" case: a toy size, so that tests time it in seconds."""


def build(preset: str) -> torch.nn.Module:
    """The DSAML model of a bench preset."""
    if preset == "smoke":
        return DSAML(DSAMLConfig.quick(**TINY_MODEL))
    if preset not in ("quick", "paper"):
        raise UserError(f"unknown bench preset {preset!r}; choose from {sorted(DEFAULT_CASES)}")
    return DSAML(getattr(DSAMLConfig, preset)())


def make_tasks(model: torch.nn.Module, case: BenchCase, seed: int = 0,
               device: str = "cpu") -> list[Task]:
    """Random tasks of the model's input shapes: (1 support song, `case.query_songs` query songs) each."""
    def batch(songs: int, s: int) -> Batch:
        b = example_batch(model, steps=case.steps, batch_size=songs, seed=s)
        b["y"] = torch.rand(songs, case.steps, 2, generator=torch.Generator().manual_seed(s)) * 2 - 1
        return {k: v.to(device) for k, v in b.items()}

    return [(batch(1, seed + 2 * i), batch(case.query_songs, seed + 2 * i + 1)) for i in range(case.tasks)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_meta_step(model: torch.nn.Module, case: BenchCase, repeats: int = 3, warmup: int = WARMUP, seed: int = 0,
                   device: str = "cpu", progress: bool = True) -> dict[str, list[float]]:
    """Seconds per meta-step, loop and batched, each from the same model/optimizer state and seed."""
    cfg = MetaConfig(inner_steps=case.inner_steps, tasks_per_step=case.tasks,
                          query_songs=case.query_songs)
    tasks = make_tasks(model, case, seed, device)
    model.train()
    optimizer = meta_optimizer(model)
    start = (copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict()))
    times: dict[str, list[float]] = {"loop": [], "batched": []}
    runs = [("loop", "batched") if r % 2 == 0 else ("batched", "loop") for r in range(warmup + repeats)]
    bar = tqdm(total=2 * len(runs), desc=f"bench {case.preset} meta-step", disable=not progress)
    for r, order in enumerate(runs):
        for way in order:
            model.load_state_dict(start[0])
            optimizer.load_state_dict(start[1])
            torch.manual_seed(seed)
            _sync(device)
            t0 = time.perf_counter()
            meta_step(model, optimizer, tasks, cfg, batched=(way == "batched"))
            _sync(device)
            if r >= warmup:
                times[way].append(time.perf_counter() - t0)
            bar.update()
    bar.close()
    model.load_state_dict(start[0])
    return times


def time_personalize(model: torch.nn.Module, case: BenchCase, repeats: int = 3, seed: int = 0,
                     device: str = "cpu") -> list[float]:
    """Seconds to adapt to one listener's support song and predict one other song."""
    cfg = MetaConfig(inner_steps=case.personalize_steps)
    support, query = make_tasks(model, BenchCase(case.preset, 1, 0, 1, case.steps), seed + 999, device)[0]
    model.eval()
    out = []
    for r in range(repeats + 1):  # the first run warms up
        _sync(device)
        t0 = time.perf_counter()
        fast = personalize(model, support, cfg)
        predict_with(model, fast, query)
        _sync(device)
        if r:
            out.append(time.perf_counter() - t0)
    return out


def run_bench(cases: list[BenchCase], repeats: int = 3, warmup: int = WARMUP, seed: int = 0, device: str = "cpu",
              threads: list[int] | None = None, progress: bool = True) -> dict:
    """Time every case at each intra-op thread count; returns the report (keys: see `format_report`)."""
    threads = threads or [torch.get_num_threads()]
    report = {"device": device, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
              "first_order": True, "repeats": repeats, "warmup": warmup, "cases": []}
    before = torch.get_num_threads()
    try:
        for case in cases:
            for n_threads in threads:
                torch.set_num_threads(n_threads)
                load = os.getloadavg()[0]
                torch.manual_seed(seed)
                model = build(case.preset).to(device)
                t = time_meta_step(model, case, repeats, warmup, seed, device, progress)
                p = time_personalize(model, case, repeats, seed, device)
                loop, batched = statistics.median(t["loop"]), statistics.median(t["batched"])
                report["cases"].append({
                    **asdict(case), "support_songs": 1, "torch_threads": n_threads,
                    "params": sum(p_.numel() for p_ in model.parameters() if p_.requires_grad),
                    "loop_s": loop, "batched_s": batched, "loop_over_batched": loop / batched,
                    "loop_runs_s": t["loop"], "batched_runs_s": t["batched"],
                    "personalize_s": statistics.median(p), "personalize_runs_s": p,
                    "load_before": load, "load_after": os.getloadavg()[0],
                })
    finally:
        torch.set_num_threads(before)
    return report


def format_report(report: dict) -> str:
    """Human-readable table of a `run_bench` report.

    Report keys: device, torch, machine, cpu_count, omp_wait_policy, malloc_tuned, first_order, repeats,
    warmup, and cases: one dict per (preset, thread count) with the BenchCase fields, support_songs,
    torch_threads, params, loop_s / batched_s (medians, seconds per meta-step), loop_over_batched,
    loop_runs_s / batched_runs_s (every timed run), personalize_s, personalize_runs_s, and the 1-minute
    load average before and after (load_before, load_after).
    """
    lines = [f"dsaml bench: device {report['device']} ({report['machine']}, {report['cpu_count']} cpus), "
             f"torch {report['torch']}, first-order MAML, median of {report['repeats']} interleaved runs after "
             f"{report['warmup']} warm-up{'s' if report['warmup'] != 1 else ''} of each; malloc keeps freed memory: {report.get('malloc_tuned', False)}; "
             f"OMP_WAIT_POLICY {report['omp_wait_policy']}",
             f"{'preset':<7} {'params':>11} {'threads':>7}  {'meta-batch: tasks x inner steps, 1+query songs':<46} "
             f"{'loop s':>8} {'batched s':>9} {'loop/batched':>12} {'personalize s':>13} {'load':>10}"]
    for c in report["cases"]:
        batch = f"{c['tasks']} x {c['inner_steps']}, 1+{c['query_songs']} songs of {c['steps']} steps"
        lines.append(f"{c['preset']:<7} {c['params']:>11,} {c['torch_threads']:>7}  {batch:<46} "
                     f"{c['loop_s']:>8.3f} {c['batched_s']:>9.3f} {c['loop_over_batched']:>11.2f}x "
                     f"{c['personalize_s']:>13.3f} {c['load_before']:>4.1f}-{c['load_after']:<4.1f}")
    steps = ", ".join(sorted({f"{c['preset']}: {c['personalize_steps']} steps" for c in report["cases"]}))
    lines.append(f"personalize = adapt on 1 support song ({steps}) + predict 1 song. loop/batched > 1: the "
                 "batched meta-step is faster. load: 1-minute load average before-after (other processes "
                 "on the cores slow everything, the per-task loop's many small parallel ops most).")
    return "\n".join(lines)
