"""The `dsaml` command: every subcommand's options live here, one module per command group.

The library below never parses arguments; each module here turns options into calls of the library and
registers its subcommands with `register(subparsers)`, which sets `func(args) -> int` as the default.

`main` reports every failure in one line on stderr: a UserError as it reads (exit status its `exit_code`, else
2); Ctrl-C as "interrupted" (130); any other exception by its type and message, with the path of a file in
the temporary folder that holds the full traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
import traceback

from dsaml_utils.cli import bench, data, evaluate, features, models, synth, train, workbook
from dsaml_utils.errors import UserError

COMMAND_GROUPS = (synth, features, data, workbook, models, train, evaluate, bench)
"""synth; features; inspect; workbook; model-summary, embed, export-imagebind-audio; train, experiment; evaluate,
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
        return int(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print(f"dsaml {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug or an unforeseen failure: one line here, the traceback in a file
        print(f"dsaml {args.command}: unexpected error: {_cause(exc)} ({_save_traceback(exc, argv)})",
              file=sys.stderr)
        return 1


def _cause(exc: BaseException, limit: int = 200) -> str:
    """The exception's type and the first line of its message, cut to `limit` characters."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _save_traceback(exc: BaseException, argv: list[str] | None) -> str:
    """Write the command and the full traceback to a new file in the temporary folder; says where."""
    command = shlex.join(["dsaml", *(sys.argv[1:] if argv is None else argv)])
    try:  # mkstemp: a new file of our own (mode 0600), never an existing one or a planted link
        fd, path = tempfile.mkstemp(prefix=f"dsaml-traceback-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-",
                                    suffix=".txt")
        with os.fdopen(fd, "w") as f:
            f.write(f"{command}\n\n" + "".join(traceback.format_exception(exc)))
    except OSError as err:
        return f"the traceback could not be written to {tempfile.gettempdir()}: {err.strerror or err}"
    return f"traceback in {path}"
