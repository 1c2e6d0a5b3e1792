"""`dsaml inspect`: what a dataset root holds and every problem found."""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from dsaml_utils.data.registry import DATASETS, load_dataset
from dsaml_utils.data.summary import format_summary, summarize
from dsaml_utils.errors import DataError, UserError


def _inspect_main(args: argparse.Namespace) -> int:
    """`dsaml inspect`: load, print the summary, exit 2 when the dataset is not usable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # every warning is also listed in the summary's problems
            ds = load_dataset(args.dataset, args.root, decode_audio=not args.quick)
    except UserError as exc:
        if args.json:
            print(json.dumps({"usable": False, "reason": str(exc)}))
        raise
    summary = summarize(ds)
    print(json.dumps(summary, indent=1) if args.json else format_summary(summary))
    sys.stdout.flush()
    if not summary["usable"]:
        raise DataError(f"{args.root}: not usable as {args.dataset}: {summary['reason']}")
    return 0


def register(subparsers) -> None:
    """Add `dsaml inspect`."""
    p = subparsers.add_parser(
        "inspect", help="load a dataset and report what is usable",
        description="Load a dataset, print how many songs, listeners and curves it has and every "
        "problem met; exit status 2 when it cannot be used. Every audio file is decoded to check that it "
        "covers its labels (audio shorter than its labels is reported and not counted).",
    )
    p.add_argument("--dataset", choices=DATASETS, required=True, help="which loader to use")
    p.add_argument("--root", type=Path, required=True, help="the dataset's root folder")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--quick", action="store_true",
                   help="only open each audio file's header: skip the full decode that measures its duration")
    p.set_defaults(func=_inspect_main)
