"""Ctrl-C during training: the first one finishes the step, checkpoints and stops; a second one stops at once."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class InterruptFlag:
    """Set by the SIGINT handler of `graceful_interrupt`; the training loop reads it after every step."""

    def __init__(self) -> None:
        self.requested = False


@contextmanager
def graceful_interrupt() -> Iterator[InterruptFlag]:
    """Install the two-stage SIGINT handler for the duration of the block (the previous one is restored).

    Outside the main thread Python cannot install handlers: Ctrl-C then behaves as usual (KeyboardInterrupt)."""
    flag = InterruptFlag()

    def handler(signum: int, frame: Any) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread
        yield flag
        return
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
