"""`dsaml features`: openSMILE frame feature files (2 Hz, 260 columns) for every song of a root that has audio."""

from __future__ import annotations

import argparse
from pathlib import Path

from dsaml_utils.data.registry import DATASETS
from dsaml_utils.errors import UserError
from dsaml_utils.features.frame_files import write_features


def register(subparsers) -> None:
    """Add `dsaml features`."""
    p = subparsers.add_parser(
        "features", help="compute openSMILE frame features (DEAM / PMEmo layout) from the audio",
        description="Compute the 260 openSMILE frame features that DEAM and PMEmo ship (IS13 ComParE LLDs and "
        "deltas, mean and std over 1 s every 0.5 s) for every song with audio, in the dataset's own layout: "
        "features/<song_id>.csv (DEAM, synthetic) or features/dynamic_features.csv (PMEmo). Files not older "
        "than their audio are kept; older ones are refused unless --overwrite.")
    p.add_argument("--dataset", choices=DATASETS, required=True, help="which layout the root has")
    p.add_argument("--root", type=Path, required=True, help="the dataset's root folder")
    p.add_argument("--overwrite", action="store_true", help="recompute every song and replace existing files")
    p.add_argument("--workers", type=int, default=2, help="threads running openSMILE (default 2)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Write the files, print what was written, kept, refused and skipped; exit 2 when something was refused."""
    if args.workers < 1:
        raise UserError("--workers must be >= 1")
    report = write_features(args.dataset, args.root, overwrite=args.overwrite, workers=args.workers)
    for line in report.lines():
        print(line)
    if report.refused:
        raise UserError(f"{len(report.refused)} existing feature files were not replaced (listed above); "
                        "pass --overwrite to recompute and replace them")
    return 0
