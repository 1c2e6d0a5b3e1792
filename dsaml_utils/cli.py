"""The `dsaml` command: one subcommand per pipeline stage, each registered by the module that owns it."""

from __future__ import annotations

import argparse
import importlib
import sys

from dsaml_utils.errors import UserError

# Each module here defines `register_cli(subparsers)`, which adds its subcommand(s) and sets
# `func(args) -> int` as the parser default. Modules are imported only when the CLI is built.
COMMAND_MODULES = [
    "dsaml_utils.synth",    # dsaml synth
    "dsaml_utils.data",     # dsaml inspect
    "dsaml_utils.workbook",  # dsaml workbook
    "dsaml_utils.encoders",  # dsaml embed, dsaml export-imagebind-audio
    "dsaml_utils.model",    # dsaml model-summary
    "dsaml_utils.train",    # dsaml train
    "dsaml_utils.evaluate",  # dsaml evaluate, dsaml personalize
    "dsaml_utils.experiments",  # dsaml experiment
    "dsaml_utils.bench",    # dsaml bench
]


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(prog="dsaml", description="DSAML research workbook")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"dsaml {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
