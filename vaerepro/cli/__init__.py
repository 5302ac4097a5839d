"""The command line, on top of every other layer: `vaerepro SUBCOMMAND ...`. Each `cmd_*`
parses nothing itself: it calls the layers below and prints."""

from __future__ import annotations

import os
import signal
import sys

from vaerepro.cli.commands import (
    cmd_check,
    cmd_compare,
    cmd_fig2,
    cmd_fig3,
    cmd_hwtable,
    cmd_loglik,
    cmd_make_reference,
    cmd_plot,
    cmd_status,
    cmd_trajectory,
)
from vaerepro.cli.parser import build_parser
from vaerepro.cli.reproduce import cmd_reproduce
from vaerepro.core.errors import VaereproError
from vaerepro.runs.signals import Stopped, stops_raise

COMMANDS = {
    "reproduce": cmd_reproduce,
    "compare": cmd_compare,
    "loglik": cmd_loglik,
    "plot": cmd_plot,
    "status": cmd_status,
    "fig2": cmd_fig2,
    "fig3": cmd_fig3,
    "check": cmd_check,
    "hwtable": cmd_hwtable,
    "make-reference": cmd_make_reference,
    "trajectory": cmd_trajectory,
}

__all__ = ["COMMANDS", "build_parser", "main"]


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; vaerepro's own errors become one line and exit status 2."""
    args = build_parser().parse_args(argv)
    try:
        with stops_raise():
            return COMMANDS[args.command](args)
    except Stopped as err:
        resume = "; a run that had started continues with --resume" * (args.command == "reproduce")
        print(
            f"vaerepro {args.command}: stopped by {err}; every file written is whole (written "
            f"atomically){resume}",
            file=sys.stderr,
        )
        return 128 + err.signum
    except VaereproError as err:
        print(f"vaerepro {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `vaerepro compare RUN | head`: the reader has gone, quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no flush error at exit
        return 128 + signal.SIGPIPE
    except OSError as err:  # the machine's, not a bug: a path, a permission, a full disk
        print(
            f"vaerepro {args.command}: error: {err.strerror or err}: {err.filename or ''} "
            "(check that the path exists and is writable, and that the disk has space)",
            file=sys.stderr,
        )
        return 2
