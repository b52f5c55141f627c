"""The `bench` command line: one module per verb, each a thin layer over a library function.

Every verb module has `add_parser(subparsers)` (its flags; shared option groups come from
`common.py` as argparse parents) and the function its parser calls with the parsed arguments.

User mistakes (`UserError`) print one line, `error: ...`, and exit with status 2; there is no
traceback for them. Set BENCH_DEBUG=1 to see one anyway.

A reader that stops early (`bench status --all | head`) closes the pipe under us: the verb
ends quietly with status 141 (128 + SIGPIPE, what a shell reports for a program the signal
ended), so `set -o pipefail` scripts still see that the output was cut short.
"""

from __future__ import annotations

import argparse
import os
import sys

from bench.cli import (aggregate, cka, convert, data, explain, listing, pretrain, pseudo_label, run, status, submit,
                       transfer)
from bench.cli.common import BenchParser
from bench.core.errors import UserError
from bench.core.version import __version__

# In the order `bench --help` lists them: the matrix, one backbone, single stages, analysis, data.
VERBS = (run, status, submit, convert, pretrain, pseudo_label, transfer, aggregate, cka, explain, data, listing)


def build_parser() -> argparse.ArgumentParser:
    p = BenchParser(prog="bench", description="depth2seg-bench: pre-train encoders, transfer them to "
                                "semantic segmentation, and compare the results.")
    p.add_argument("--version", action="version", version=f"depth2seg-bench {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", help="a verb (`bench COMMAND --help`)")
    for verb in VERBS:
        verb.add_parser(sub)
    return p


# 128 + SIGPIPE: the status a shell shows for a program that a closed pipe ended.
BROKEN_PIPE_STATUS = 141


def main(argv=None) -> int:
    try:
        return _run(argv)
    except BrokenPipeError:
        return _quiet_broken_pipe()


def _run(argv) -> int:
    try:
        args = build_parser().parse_args(argv)
    finally:  # `--help` and usage errors exit from here; their text must reach a closed pipe too
        sys.stdout.flush()
    try:
        status = args.fn(args)
        sys.stdout.flush()  # inside the try: a closed pipe is often found only at this flush
        return status
    except UserError as exc:
        if os.environ.get("BENCH_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; finished work is kept and a re-run resumes", file=sys.stderr)
        return 130


def _quiet_broken_pipe() -> int:
    """The reader has gone: point stdout at devnull so the interpreter's own flush at exit does
    not raise a second BrokenPipeError (the recipe of the CPython `signal` docs)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE_STATUS


if __name__ == "__main__":
    sys.exit(main())
