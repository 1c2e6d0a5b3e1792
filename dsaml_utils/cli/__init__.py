"""The `dsaml` command: every subcommand's options live here, one module per command group.

The library below never parses arguments; each module here turns options into calls of the library and
registers its subcommands with `register(subparsers)`, which sets `func(args) -> int` as the default.
"""

from __future__ import annotations

import argparse
import sys

from dsaml_utils.cli import bench, data, evaluate, models, synth, train, workbook
from dsaml_utils.errors import UserError

COMMAND_GROUPS = (synth, data, workbook, models, train, evaluate, bench)
"""synth; inspect; workbook; model-summary, embed, export-imagebind-audio; train, experiment; evaluate,
personalize; bench."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="dsaml", description="DSAML research workbook")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"dsaml {args.command}: error: {exc}", file=sys.stderr)
        return 2
