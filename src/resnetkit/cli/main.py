"""Entry point: dispatches subcommands and turns user mistakes into one-line errors with exit code 2.

Exit codes: 0 success, 1 `models` found nothing, 2 a user error (one `resnetkit: error:` line), 3 predict / explain
finished but some files could not be read (one `resnetkit: warning:` line each), 130 interrupted."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any

from resnetkit import __version__
from resnetkit.cli import (
    audit_cmd,
    bench_cmd,
    demo_cmd,
    detect_cmd,
    distill_cmd,
    eval_cmd,
    experiment_cmd,
    explain_cmd,
    export_cmd,
    finetune_cmd,
    models_cmd,
    predict_cmd,
    prune_cmd,
    report_cmd,
    serve_cmd,
    train_cmd,
)
from resnetkit.cli.exit_codes import EXIT_USER_ERROR
from resnetkit.distributed import launched_rank
from resnetkit.errors import ResnetkitError, TrainingInterrupted
from resnetkit.hardware import keep_freed_memory

_COMMANDS = {
    "demo": demo_cmd,
    "train": train_cmd,
    "finetune": finetune_cmd,
    "distill": distill_cmd,
    "prune": prune_cmd,
    "eval": eval_cmd,
    "predict": predict_cmd,
    "detect": detect_cmd,
    "segment": detect_cmd,
    "explain": explain_cmd,
    "report": report_cmd,
    "audit": audit_cmd,
    "export": export_cmd,
    "serve": serve_cmd,
    "experiment": experiment_cmd,
    "models": models_cmd,
    "bench": bench_cmd,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="resnetkit", description="Deep residual networks: models and workflow.")
    parser.add_argument("--version", action="version", version=f"resnetkit {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in dict.fromkeys(_COMMANDS.values()):  # detect_cmd adds both detect and segment
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    _configure_logging(args.quiet or launched_rank() != 0)  # under torchrun only rank 0 reports progress
    try:
        return int(_COMMANDS[args.command].run(args) or 0)
    except TrainingInterrupted as e:
        if launched_rank() == 0:  # under torchrun every rank stops; one says so
            print(f"resnetkit: {e}", file=sys.stderr)
        return 130
    except ResnetkitError as e:
        print(f"resnetkit: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("resnetkit: interrupted", file=sys.stderr)
        return 130


def _configure_logging(quiet: bool) -> None:
    """resnetkit's own log lines on stderr, bare; other libraries keep their warnings-only default."""
    logger = logging.getLogger("resnetkit")
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet else logging.INFO)
    # torch.compile on a CPU-only machine warns that no CUDA runtime exists: true, and not the user's problem.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time of each record: a program (or a test) that replaces stderr
    after the first command would otherwise leave the handler writing to a closed stream."""

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:  # StreamHandler.__init__ assigns it; the property decides
        pass
