"""Entry point: dispatches subcommands and turns user mistakes into one-line errors with exit code 2."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from resnetkit import __version__
from resnetkit.cli import models_cmd
from resnetkit.errors import ResnetkitError

EXIT_USER_ERROR = 2

_COMMANDS = {"models": models_cmd}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnetkit", description="Deep residual networks: models and workflow.")
    parser.add_argument("--version", action="version", version=f"resnetkit {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _COMMANDS.values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        return int(_COMMANDS[args.command].run(args) or 0)
    except ResnetkitError as e:
        print(f"resnetkit: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("resnetkit: interrupted", file=sys.stderr)
        return 130
