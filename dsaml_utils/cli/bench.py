"""`dsaml bench`: the batched MAML meta-step against the per-task loop, side by side; with `--against REV`,
the three hot paths (DMER update, MAML meta-step, evaluation of a run) with REV's code against the current code."""

from __future__ import annotations

import argparse
import copy
import json
import shlex

import torch

from dsaml_utils.errors import UserError
from dsaml_utils.experiments import against
from dsaml_utils.experiments.bench import DEFAULT_CASES, WARMUP, format_report, run_bench
from dsaml_utils.runtime import keep_freed_memory

CASE_OPTIONS = ("tasks", "inner_steps", "query_songs", "steps", "personalize_steps")
"""Options of the batched-vs-loop bench only."""

AGAINST_OPTIONS = ("root", "paths", "updates", "evals", "eval_warmup", "set")
"""Options of `--against` only."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _given(args: argparse.Namespace, name: str, default):
    value = getattr(args, name)
    return default if value is None else value


def _against_text(args: argparse.Namespace, opts: against.AgainstOptions) -> str:
    """The command line that reproduces this comparison (every setting spelled out)."""
    words = ["dsaml", "bench", "--against", opts.rev, "--preset", opts.preset, "--paths", ",".join(opts.paths)]
    if opts.root:
        words += ["--root", opts.root]
    for name in ("warmup", "updates", "eval_warmup", "evals", "repeats", "threads"):
        words += [_flag(name), str(getattr(opts, name))]
    for item in args.set or []:
        words += ["--set", item]
    if args.device:
        words += ["--device", args.device]
    if args.seed:
        words += ["--seed", str(args.seed)]
    return shlex.join(words + (["--json"] if args.json else []))


def _against(args: argparse.Namespace) -> int:
    given = [_flag(f) for f in CASE_OPTIONS if getattr(args, f) is not None]
    if given:
        raise UserError(f"{', '.join(given)}: options of the batched-vs-loop bench, not of --against")
    if args.preset and len(args.preset) > 1:
        raise UserError("--against times one preset: give --preset once")
    if args.threads and len(args.threads) > 1:
        raise UserError("--against runs both trees with one thread count: give --threads N once")
    sets = list(args.set or [])
    if args.device:
        sets.append(f"train.device={args.device}")
    if args.seed:
        sets.append(f"train.seed={args.seed}")
    paths = tuple(p.strip() for p in args.paths.split(",") if p.strip()) if args.paths else against.PATHS
    opts = against.AgainstOptions(
        rev=args.against, root=args.root, paths=paths, preset=(args.preset or ["quick"])[0],
        warmup=_given(args, "warmup", 2), updates=_given(args, "updates", 10),
        eval_warmup=_given(args, "eval_warmup", 0), evals=_given(args, "evals", 1), repeats=args.repeats,
        threads=(args.threads or [1])[0], sets=tuple(sets)).check()
    text = _against_text(args, opts)
    report = against.run_against(opts, progress=not args.json)
    report["command"] = text
    print(json.dumps(report, indent=2) if args.json else against.format_report(report))
    return 0


def _command(args: argparse.Namespace) -> int:
    if args.against is not None:
        return _against(args)
    given = [_flag(f) for f in AGAINST_OPTIONS if getattr(args, f) is not None]
    if given:
        raise UserError(f"{', '.join(given)}: options of `dsaml bench --against REV` only")
    if args.warmup is None:
        args.warmup = WARMUP
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if any(n < 1 for n in args.threads or []):
        raise UserError(f"--threads must be positive, got {args.threads}")
    cases = []
    for name in args.preset or ["quick", "paper"]:
        case = copy.copy(DEFAULT_CASES[name])
        for field in CASE_OPTIONS:
            value = getattr(args, field)
            if value is not None:
                if value < (0 if field == "inner_steps" else 1):
                    raise UserError(f"--{field.replace('_', '-')} must be positive, got {value}")
                setattr(case, field, value)
        cases.append(case)
    tuned = keep_freed_memory() if args.tune_malloc else False
    report = run_bench(cases, repeats=args.repeats, warmup=args.warmup, seed=args.seed, device=device,
                       threads=args.threads, progress=not args.json)
    report["malloc_tuned"] = tuned
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def register(subparsers) -> None:
    """Add `dsaml bench`."""
    p = subparsers.add_parser("bench", help="time the batched MAML meta-step against the per-task loop; with "
                              "--against REV, the hot paths with REV's code against the current code")
    p.add_argument("--preset", action="append", choices=sorted(DEFAULT_CASES),
                   help="model preset to time (repeatable; default: quick and paper)")
    p.add_argument("--tasks", type=int, help="tasks per meta-step (default: 16 quick, 8 paper)")
    p.add_argument("--inner-steps", type=int, help="inner SGD steps per task (default: 4 quick, 2 paper)")
    p.add_argument("--query-songs", type=int, help="query songs per task (default: 4 quick, 3 paper)")
    p.add_argument("--steps", type=int, help="0.5 s steps per song (default 60)")
    p.add_argument("--personalize-steps", type=int, help="inner steps when personalizing (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each way (median reported); "
                   "with --against: interleaved rounds, one process per tree and path each")
    p.add_argument("--warmup", type=int, help=f"untimed runs of each way first (default {WARMUP}); with --against: "
                   "untimed updates per process (default 2)")
    p.add_argument("--seed", type=int, default=0, help="with --against: train.seed of every run")
    p.add_argument("--threads", type=int, nargs="+", help="torch intra-op thread counts to time, e.g. 1 2 "
                   "(default: torch's current setting); with --against: one count for both trees (default 1)")
    p.add_argument("--no-tune-malloc", dest="tune_malloc", action="store_false",
                   help="leave glibc malloc as it is (see the module docstring); --against never "
                   "tunes it")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available); with --against: train.device")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    a = p.add_argument_group("--against REV", description=against.__doc__.split("\n\n")[0])
    a.add_argument("--against", metavar="REV", help="git revision whose code to time against the current "
                   "checkout's (e.g. bbc4fc8); checked out into a temporary worktree")
    a.add_argument("--root", help="dataset root of the preset's dataset, synthetic unless --set dataset=... "
                   "(default: generate a small synthetic one for the run)")
    a.add_argument("--paths", help=f"comma-separated hot paths to time (default {','.join(against.PATHS)})")
    a.add_argument("--updates", type=int, help="timed updates per process (default 10)")
    a.add_argument("--evals", type=int, help="timed evaluations per process (default 1)")
    a.add_argument("--eval-warmup", type=int, help="untimed evaluations per process first (default 0)")
    a.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="config override for both trees, e.g. train.batched_meta=false (repeatable)")
    p.set_defaults(func=_command)
