"""`dsaml bench`: the batched MAML meta-step against the per-task loop, side by side."""

from __future__ import annotations

import argparse
import copy
import json

import torch

from dsaml_utils.errors import UserError
from dsaml_utils.experiments.bench import (
    DEFAULT_CASES,
    format_report,
    keep_freed_memory,
    run_bench,
)


def _command(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    if any(n < 1 for n in args.threads or []):
        raise UserError(f"--threads must be positive, got {args.threads}")
    cases = []
    for name in args.preset or ["quick", "paper"]:
        case = copy.copy(DEFAULT_CASES[name])
        for field in ("tasks", "inner_steps", "query_songs", "steps", "personalize_steps"):
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
    p = subparsers.add_parser("bench", help="time the batched MAML meta-step against the per-task loop")
    p.add_argument("--preset", action="append", choices=sorted(DEFAULT_CASES),
                   help="model preset to time (repeatable; default: quick and paper)")
    p.add_argument("--tasks", type=int, help="tasks per meta-step (default: 16 quick, 8 paper)")
    p.add_argument("--inner-steps", type=int, help="inner SGD steps per task (default: 4 quick, 2 paper)")
    p.add_argument("--query-songs", type=int, help="query songs per task (default: 4 quick, 3 paper)")
    p.add_argument("--steps", type=int, help="0.5 s steps per song (default 60)")
    p.add_argument("--personalize-steps", type=int, help="inner steps when personalizing (default 16)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each way (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs of each way first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, nargs="+", help="torch intra-op thread counts to time, e.g. 1 2 "
                   "(default: torch's current setting)")
    p.add_argument("--no-tune-malloc", dest="tune_malloc", action="store_false",
                   help="leave glibc malloc as it is (see the module docstring)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_command)
