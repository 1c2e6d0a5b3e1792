"""`dsaml evaluate` and `dsaml personalize`."""

from __future__ import annotations

import argparse
import json

from dsaml_utils.errors import UserError
from dsaml_utils.evaluation.report import HEADLINE_METRICS, format_metrics
from dsaml_utils.evaluation.results import combine_runs, jsonable
from dsaml_utils.evaluation.run import evaluate_run
from dsaml_utils.experiments.personalize import personalize_files
from dsaml_utils.metrics import METRICS
from dsaml_utils.training.protocol import PROTOCOLS


def _cli_evaluate(args: argparse.Namespace) -> int:
    shown = _metrics(args.metrics)  # a bad name is refused before anything is computed
    results = [evaluate_run(r, progress=not (args.quiet or args.json), reuse=args.reuse, protocol=args.protocol)
               for r in args.run]
    if args.json:
        if len(results) == 1:  # metrics.json without the config
            payload = {k: v for k, v in results[0].to_dict().items() if k != "config"}
        else:
            payload = {"runs": [m.run for m in results], "combined": combine_runs(results, args.k)}
        print(json.dumps(jsonable(payload), indent=1, allow_nan=False))
    else:
        print(format_metrics(results if len(results) > 1 else results[0], args.k, shown))
    return 0


def _metrics(text: str) -> tuple[str, ...]:
    """--metrics "ccc,pcc,kendall_tau" -> the names, each one of metrics.METRICS."""
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in names if m not in METRICS]
    if bad or not names:
        raise UserError(f"--metrics {text!r}: choose from {', '.join(METRICS)} (comma-separated)")
    return names


def _cli_personalize(args: argparse.Namespace) -> int:
    res = personalize_files(args.run, args.out, args.predict, support=args.support, personal=args.personal,
                            start=args.start, progress=not args.quiet, overwrite=args.overwrite)
    if res["personal"] not in res["written"]:
        print(f"personal state read from {res['personal']}")
    replaced = set(res["replaced"])
    for path in res["written"]:
        print(f"{'replaced' if path in replaced else 'wrote'} {path}")
    return 0


def register(subparsers) -> None:
    """Add `dsaml evaluate` and `dsaml personalize`."""
    p = subparsers.add_parser("evaluate", help="score trained runs (DMER and PDMER) and write metrics.json")
    p.add_argument("--run", nargs="+", required=True, help="run folder(s); several = seeds, shown as mean ± std")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--k", type=int, default=1, help="k-shot shown in the table (default 1)")
    p.add_argument("--reuse", action="store_true", help="reuse an up-to-date metrics.json instead of recomputing")
    p.add_argument("--protocol", choices=PROTOCOLS,
                   help="score under this protocol (default: each run's own, into metrics.json); the other one "
                        "writes metrics-<protocol>.json")
    p.add_argument("--metrics", default=",".join(HEADLINE_METRICS),
                   help="columns of the printed table, comma-separated, from " + ", ".join(METRICS)
                        + f" (default {','.join(HEADLINE_METRICS)}; seed 004's PMEmo protocol: "
                          "ccc,pcc,kendall_tau,rmse,r2); metrics.json always holds all of them")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cli_evaluate)

    q = subparsers.add_parser("personalize", help="adapt a trained run to one listener and predict their curves")
    q.add_argument("--run", required=True, help="trained run folder")
    q.add_argument("--support", nargs=2, metavar=("AUDIO", "CURVE_CSV"),
                   help="one song the person annotated and their curve (CSV: time,arousal,valence at 2 Hz)")
    q.add_argument("--personal", help="a personal.pt saved earlier (instead of --support)")
    q.add_argument("--predict", nargs="+", required=True, metavar="AUDIO", help="songs to predict")
    q.add_argument("--out", required=True,
                   help="output folder (personal.pt, <song>.csv, <song>.png; <song>: the file name without suffix)")
    q.add_argument("--start", type=float, default=0.0, help="first predicted time in seconds (default 0)")
    q.add_argument("--overwrite", action="store_true",
                   help="replace outputs that --out already holds (default: refuse before writing anything)")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=_cli_personalize)
