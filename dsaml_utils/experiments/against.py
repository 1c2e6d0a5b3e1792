"""`dsaml bench --against REV`: three hot paths timed with another commit's code and the current code, side by side.

The paths (see `hotpaths_harness` for exactly what is timed): a DMER update and a MAML meta-step of the
chosen preset (`Trainer.update`), and the evaluation of one run (`evaluate_run`). REV is checked out into a
temporary `git worktree` (removed afterwards, also on errors and Ctrl-C); the harness script then runs in a
fresh interpreter per measurement, once with PYTHONPATH=<that worktree> (old) and once with
PYTHONPATH=<this checkout> (new, uncommitted changes included), interleaved old, new, old, new, ... for
`repeats` rounds, on the same dataset, the same overrides and the same torch thread count. Each tree trains
its own run folders (checkpoint formats may differ) and has its own feature cache, filled by one untimed
warm-up process per tree before any round, so feature extraction is never timed. Every harness reports the
`dsaml_utils.__file__` it imported, and a run that imported another tree's package is an error: the package
is installed editable, so this guards against PYTHONPATH not taking effect.

Reported per path and tree: the median over runs of each run's median seconds per update (or per
evaluation), each run's times, each process's peak RSS, and old/new (> 1: the current code is faster); and
how far the losses of the same timed updates differ between the trees (0: the same arithmetic).
Timings are wall-clock and depend on what else runs on the machine: the report gives the load average.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import dsaml_utils
from dsaml_utils.data.synthetic.config import SynthConfig
from dsaml_utils.data.synthetic.writer import generate
from dsaml_utils.errors import UserError

PATHS = ("dmer", "maml", "eval")
UNITS = {"dmer": "update", "maml": "meta-step", "eval": "evaluation"}

BENCH_SYNTH = {
    "smoke": dict(songs=6, full_songs=2, anonymous_songs=1, listeners=3, test_listeners=2, lazy_listeners=1,
                  raters_per_song=3, raters_per_full_song=2, clip_seconds=25.0, full_seconds=(30.0, 35.0),
                  sample_rate=16000),
    "quick": dict(songs=40, full_songs=3, anonymous_songs=4, listeners=6, test_listeners=3, lazy_listeners=1,
                  raters_per_song=4, raters_per_full_song=3, full_seconds=(50.0, 60.0), sample_rate=16000),
}
"""SynthConfig fields of the dataset generated when no --root is given: the smoke preset's tiny one (as the
workbook's), else 40 clips of 45 s whose listeners each rated >= 16 (the quick preset's task filter)."""

HARNESS = Path(__file__).with_name("hotpaths_harness.py")
"""The harness script; run by file path in a subprocess, never imported by the package."""

RESULT_KEY = "dsaml_hotpaths_harness"
"""Marks the harness's result line (hotpaths_harness.RESULT_KEY)."""


@dataclass
class AgainstOptions:
    """What `run_against` measures."""

    rev: str  # the commit (any git revision) to compare the current checkout with
    root: str | None = None  # synthetic dataset root; None: generate a small one (BENCH_SYNTH) for the run
    paths: tuple[str, ...] = PATHS
    preset: str = "quick"  # training.config preset of every run
    warmup: int = 2  # untimed updates per process before the timed ones
    updates: int = 10  # timed updates per process
    eval_warmup: int = 0  # untimed evaluations per process before the timed ones
    evals: int = 1  # timed evaluations per process
    repeats: int = 3  # interleaved rounds: one process per tree and path in each
    threads: int = 1  # torch.set_num_threads in every harness, both trees alike
    sets: tuple[str, ...] = field(default_factory=tuple)  # FIELD=VALUE config overrides for both trees

    def check(self) -> AgainstOptions:
        """Refuse impossible options with a UserError naming the option."""
        self.paths = tuple(self.paths)
        unknown = [p for p in self.paths if p not in PATHS]
        if unknown or not self.paths:
            raise UserError(f"--paths {','.join(self.paths)}: choose among {','.join(PATHS)}")
        for name in ("updates", "evals", "repeats", "threads"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        for name in ("warmup", "eval_warmup"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.root is not None and not Path(self.root).is_dir():
            raise UserError(f"--root {self.root}: no such folder")
        return self


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(repo), *args], check=False, capture_output=True, text=True)
    except FileNotFoundError:
        raise UserError("git is not installed (needed to check out the other revision)") from None


def repo_root() -> Path:
    """The git checkout that holds the imported dsaml_utils (UserError when it is not in one)."""
    package = Path(dsaml_utils.__file__).resolve().parent
    res = _git(package, "rev-parse", "--show-toplevel")
    if res.returncode != 0:
        raise UserError(f"{package}: not in a git checkout; `dsaml bench --against` needs the repository")
    root = Path(res.stdout.strip()).resolve()
    if package != root / "dsaml_utils":
        raise UserError(f"{package}: the package is not at the top of its git checkout {root}")
    return root


def resolve_commit(repo: Path, rev: str) -> str:
    """The full hash of commit REV (UserError when git does not know it)."""
    res = _git(repo, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}")
    if res.returncode != 0 or not res.stdout.strip():
        raise UserError(f"--against {rev}: unknown revision in {repo}")
    return res.stdout.strip()


def dirty_files(repo: Path) -> list[str]:
    """`git status --porcelain` lines of the checkout: modified and untracked files the new side imports."""
    res = _git(repo, "--no-optional-locks", "status", "--porcelain")
    return [line for line in res.stdout.splitlines() if line.strip()]


@contextmanager
def _sigterm_exits():
    """While inside: SIGTERM (e.g. from `timeout`) raises SystemExit, so that cleanups run as on Ctrl-C."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def worktree(repo: Path, commit: str, where: Path):
    """A detached `git worktree` of commit at `where`, removed on leaving (also on errors and Ctrl-C)."""
    res = _git(repo, "worktree", "add", "--detach", str(where), commit)
    if res.returncode != 0:
        why = (res.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"git worktree add {where} {commit[:12]} failed: {why}")
    try:
        yield where.resolve()
    finally:
        if _git(repo, "worktree", "remove", "--force", str(where)).returncode != 0:
            shutil.rmtree(where, ignore_errors=True)
            _git(repo, "worktree", "prune")


def run_harness(job: dict, tree: Path, folder: Path, python: str = sys.executable) -> dict:
    """Run the harness copy in `folder` on JOB with `tree`'s package first on the path; its checked result."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tree), *filter(None, [env.get("PYTHONPATH")])])
    # run from the copy's own folder: sys.path[0] is then a folder holding nothing else to import
    cmd = [python, str(folder / HARNESS.name), "--json-args", json.dumps(job)]
    res = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=folder, env=env)
    result = None
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("{") and RESULT_KEY in line:
            result = json.loads(line)
            break
    if res.returncode != 0 or result is None:
        tail = [line for line in res.stderr.splitlines() if line.strip()]
        print("\n".join(tail[-25:]), file=sys.stderr)
        raise UserError(f"the harness failed on {tree} (path {job['path']}, exit status {res.returncode}): "
                        f"{tail[-1] if tail else 'no output'}")
    expected = (tree / "dsaml_utils" / "__init__.py").resolve()
    if Path(result["dsaml_file"]) != expected:
        raise UserError(f"PYTHONPATH={tree} did not take effect: the harness imported {result['dsaml_file']}, "
                        f"not {expected}")
    return result


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarize(opts: AgainstOptions, runs: dict[str, dict[str, list[dict]]]) -> dict[str, dict]:
    """Per path: the medians, old/new and every run's times and peak RSS (runs[path][side] = results)."""
    out = {}
    for path in opts.paths:
        row: dict = {"unit": UNITS[path]}
        for side in ("old", "new"):
            results = runs[path][side]
            per_run = [_median(r["times_s"]) for r in results]
            row[f"{side}_s"] = _median(per_run)
            row[f"{side}_runs_s"] = per_run
            row[f"{side}_times_s"] = [r["times_s"] for r in results]
            row[f"{side}_losses"] = [r["losses"] for r in results]
            row[f"{side}_peak_rss_mib"] = [round(r["peak_rss_mib"], 1) for r in results]
            row[f"{side}_cache_misses"] = [r["cache_misses"] for r in results]
        row["old_over_new"] = row["old_s"] / row["new_s"]
        diffs = [abs(a - b) for old, new in zip(row["old_losses"], row["new_losses"]) for a, b in zip(old, new)]
        row["loss_max_abs_diff"] = max(diffs) if diffs else None  # the same updates in both trees: ~0
        out[path] = row
    return out


def run_against(opts: AgainstOptions, progress: bool = True) -> dict:
    """Time the hot paths with commit opts.rev's code and this checkout's (see the module docstring);
    progress: one line per process on stderr."""
    opts.check()

    def say(msg: str) -> None:
        if progress:
            print(f"dsaml bench: {msg}", file=sys.stderr, flush=True)

    repo = repo_root()
    old_commit = resolve_commit(repo, opts.rev)
    new_commit = resolve_commit(repo, "HEAD")
    dirty = dirty_files(repo)
    with _sigterm_exits():
        return _run_rounds(opts, repo, old_commit, new_commit, dirty, say)


def _run_rounds(opts: AgainstOptions, repo: Path, old_commit: str, new_commit: str, dirty: list[str],
                say: Callable[[str], None]) -> dict:
    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="dsaml-against-"))
    try:
        shutil.copy2(HARNESS, tmp / HARNESS.name)
        root = Path(opts.root).resolve() if opts.root else tmp / "data"
        if opts.root is None:
            say(f"generating a small synthetic dataset into {root}")
            generate(root, SynthConfig(**BENCH_SYNTH["smoke" if opts.preset == "smoke" else "quick"], workers=1))
        say(f"checking out {opts.rev} ({old_commit[:12]}) into a temporary worktree")
        with worktree(repo, old_commit, tmp / "old") as old_tree:
            trees = {"old": old_tree, "new": repo}
            old_tree_name = str(old_tree)
            base = dict(root=str(root), preset=opts.preset, sets=list(opts.sets), warmup=opts.warmup,
                        updates=opts.updates, eval_warmup=opts.eval_warmup, evals=opts.evals,
                        threads=opts.threads, paths=list(opts.paths))
            files, versions = {}, {}

            def measure(side: str, path: str, tag: str) -> dict:
                work = tmp / "work" / side / tag
                work.mkdir(parents=True)
                job = {**base, "path": path, "cache": str(tmp / f"cache-{side}"), "work": str(work)}
                result = run_harness(job, trees[side], tmp)
                files[side], versions[side] = result["dsaml_file"], result["torch"]
                return result

            for side in ("old", "new"):
                say(f"{side}: warm-up process (fills the feature cache; not timed)")
                measure(side, "warm", "warm")
            runs = {p: {"old": [], "new": []} for p in opts.paths}
            for r in range(opts.repeats):
                for path in opts.paths:
                    for side in ("old", "new"):
                        res = measure(side, path, f"{path}-{r}")
                        runs[path][side].append(res)
                        say(f"round {r + 1}/{opts.repeats} {path:<4} {side}: "
                            f"{_median(res['times_s']):.4f} s/{UNITS[path]}, peak RSS {res['peak_rss_mib']:.0f} MiB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "old": {"rev": opts.rev, "commit": old_commit, "tree": old_tree_name, "dsaml_file": files["old"],
                "torch": versions["old"]},
        "new": {"rev": "HEAD", "commit": new_commit, "dirty": bool(dirty), "dirty_files": len(dirty),
                "tree": str(repo), "dsaml_file": files["new"], "torch": versions["new"]},
        "machine": platform.machine(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
        "load_before": list(load_before), "load_after": list(os.getloadavg()),
        "python": sys.executable, "root": str(root), "generated_root": opts.root is None,
        "options": asdict(opts), "paths": summarize(opts, runs),
    }


def format_report(report: dict) -> str:
    """The report as a table: both revisions, the machine and per path old s, new s, old/new, peak RSS."""
    old, new, o = report["old"], report["new"], report["options"]
    state = f"uncommitted changes in {new['dirty_files']} files" if new["dirty"] else "clean"
    sets = f", overrides {' '.join(o['sets'])}" if o["sets"] else ""
    lines = [f"command: {report['command']}"] if report.get("command") else []
    lines += [
        f"old  {old['commit']}  ({old['rev']}, in a temporary worktree)",
        f"new  {new['commit']}  (HEAD, {state}: {new['tree']})",
        (f"machine {report['machine']}, {report['cpu_count']} CPUs, load average {report['load_before'][0]:.2f} "
         f"before, {report['load_after'][0]:.2f} after; torch {new['torch']}, {o['threads']} thread(s)"),
        f"preset {o['preset']}, data {report['root']}{' (generated)' if report['generated_root'] else ''}{sets}",
        (f"{o['repeats']} round(s) of old, new; per process {o['warmup']} warm-up + {o['updates']} timed updates, "
         f"{o['eval_warmup']} warm-up + {o['evals']} timed evaluation(s)"),
        "",
        f"{'path':<6}{'per':<12}{'old s':>10}{'new s':>10}{'old/new':>9}  {'peak RSS MiB old / new':<24}"
        "max |loss old - new|",
    ]
    for path, row in report["paths"].items():
        rss = f"{max(row['old_peak_rss_mib']):.0f} / {max(row['new_peak_rss_mib']):.0f}"
        diff = "-" if row["loss_max_abs_diff"] is None else f"{row['loss_max_abs_diff']:.2g}"
        lines.append(f"{path:<6}{row['unit']:<12}{row['old_s']:>10.4f}{row['new_s']:>10.4f}"
                     f"{row['old_over_new']:>8.2f}x  {rss:<24}{diff}")
    lines += ["", ("old/new > 1: the current code is faster. s: median over runs of each run's median; "
                   "peak RSS: the largest over runs.")]
    missed = [p for p, row in report["paths"].items() if any(row["old_cache_misses"] + row["new_cache_misses"])]
    if missed:
        lines.append(f"warning: feature extraction ran in timed processes of {', '.join(missed)} (cache not warm)")
    return "\n".join(lines)
