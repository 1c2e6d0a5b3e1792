"""`dsaml workbook`: run every notebook and regenerate the figures and tables."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from dsaml_utils.experiments.plan import RunFailed
from dsaml_utils.workbook import runner
from dsaml_utils.workbook.runner import (
    NOTEBOOKS_DIR,
    PRESETS,
    NotebookFailed,
    default_params,
    list_notebooks,
    run_workbook,
    strip_outputs,
)


def _cli(args: argparse.Namespace) -> int:
    if args.strip:
        for nb in list_notebooks(args.notebooks, args.only):
            if strip_outputs(nb):
                print(f"stripped {nb}")
        return 0
    params = default_params(args.preset, args.dataset, args.root, args.out, args.figures, args.seed, args.device)
    if args.fresh:
        for sub in ("runs", "notebooks", "cache", "workbook.json"):  # this run's outputs, nothing else
            path = Path(params.run_dir) / sub
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    print(f"dsaml workbook: preset {params.preset}, dataset {params.dataset} ({params.root})\n"
          f"  run: {params.run_dir}\n  figures: {params.figures_dir}\n  tables: {params.tables_dir}",
          file=sys.stderr)
    try:
        record = run_workbook(params, args.notebooks, args.only, args.cell_progress, log_output=args.log_output,
                              jobs=args.jobs)
    except (NotebookFailed, RunFailed) as exc:
        print(f"dsaml workbook: error: {exc}", file=sys.stderr)
        return 1
    pre = record["pretrain"]
    wall = record.get("notebooks_wall_seconds", 0.0)
    total = record.get("dataset_seconds", 0.0) + pre["seconds"] + wall
    print(f"  {'dataset':<34} {record.get('dataset_seconds', 0.0):8.1f} s")
    print(f"  {'training (' + str(pre['runs']) + ' runs, ' + str(pre['jobs']) + ' at a time)':<34} "
          f"{pre['seconds']:8.1f} s")
    for n in record["notebooks"]:
        print(f"  {n['name']:<34} {n['seconds']:8.1f} s")
    print(f"  {'notebooks (wall, ' + str(max(1, pre['jobs'])) + ' at a time)':<34} {wall:8.1f} s")
    print(f"  {'total':<34} {total:8.1f} s")
    return 0


def register(subparsers) -> None:
    """Add `dsaml workbook`."""
    p = subparsers.add_parser("workbook", help="run every notebook (papermill) and regenerate figures/tables",
                              description=runner.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="quick",
                   help="smoke: seconds on tiny fixtures; quick: the CPU preset; paper: the paper's settings")
    p.add_argument("--dataset", choices=("synthetic", "deam", "pmemo"), default="synthetic")
    p.add_argument("--root", help="dataset root (default: data/synthetic, generated when absent)")
    p.add_argument("--out", help="run directory (default: runs/<dataset>-<preset>)")
    p.add_argument("--figures", help="figures directory (default: figures/<dataset>; smoke: <run>/figures)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--only", nargs="+", metavar="NN", help="run only these notebooks (numbers or names)")
    p.add_argument("--notebooks", default=str(NOTEBOOKS_DIR), help=argparse.SUPPRESS)
    p.add_argument("--jobs", type=int, metavar="N",
                   help="train the notebooks' runs first, N at a time in worker processes (default: 2 on CPU, "
                        "1 on CUDA and for the paper preset; 0: let the notebooks train them one by one)")
    p.add_argument("--cell-progress", action="store_true", help="show papermill's per-cell progress bar")
    p.add_argument("--log-output", action="store_true",
                   help="echo every cell's output (training progress included) to the terminal")
    p.add_argument("--fresh", action="store_true",
                   help="delete this run's earlier training runs and executed notebooks first (needed after "
                        "changing settings: runs with another config are never overwritten)")
    p.add_argument("--strip", action="store_true",
                   help="instead of running, remove outputs from the stored notebooks (after editing them)")
    p.set_defaults(func=_cli)
