"""Every process a test starts goes through here, and is reaped on success, failure and timeout.

torchrun starts its workers in sessions of their own, uvicorn's supervisor starts worker processes and Selenium
starts chromedriver and Chromium: neither a process group nor the death of the parent reaches all of them, so the
reaper walks /proc for the descendants and SIGKILLs them too. `spawned` reaps when its block ends; whatever is
still alive when the test session ends (a fixture that never got to its teardown) is reaped by `reap_all`, which
conftest calls from `pytest_sessionfinish`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

_STARTED: list[subprocess.Popen] = []


def descendants(pid: int) -> list[int]:
    """The processes `pid` started, and theirs (read from /proc: no `pgrep` needed)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):  # a process that ended meanwhile
            children.setdefault(int(stat.read_text().rsplit(")", 1)[1].split()[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def reap(proc: subprocess.Popen) -> None:
    """SIGKILL a process that is still running and every process it started, then collect its exit status."""
    if proc.poll() is None:
        started = descendants(proc.pid)
        proc.kill()  # first, so that it starts (or restarts) nothing more
        for pid in started:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    proc.wait()
    if proc in _STARTED:
        _STARTED.remove(proc)


def reap_all() -> None:
    """Reap every process started through this module that is still registered (session end)."""
    for proc in list(_STARTED):
        reap(proc)


def start(cmd: list[str], log: Path | None = None, **popen) -> subprocess.Popen:
    """Start `cmd` and register it for reaping. Its output goes to the file `log` when given (never a pipe that
    could fill up while nobody reads it)."""
    if log is not None:
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, **popen)
    else:
        proc = subprocess.Popen(cmd, **popen)
    _STARTED.append(proc)
    return proc


@contextlib.contextmanager
def spawned(cmd: list[str], log: Path | None = None, **popen) -> Iterator[subprocess.Popen]:
    """`start(cmd)` for the length of the block; reaped (with its descendants) however the block ends."""
    proc = start(cmd, log, **popen)
    try:
        yield proc
    finally:
        reap(proc)


def run(cmd: list[str], timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """`subprocess.run(cmd, capture_output=True, text=True)` whose process and descendants are reaped, even when
    the timeout or the test's own timeout ends the wait."""
    with spawned(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen) as proc:
        out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def resnetkit(*args: str, timeout: float = 300, **popen) -> subprocess.CompletedProcess:
    """`python -m resnetkit ARGS` in a subprocess, for the tests where the separate interpreter is the point."""
    return run([sys.executable, "-m", "resnetkit", *args], timeout=timeout, **popen)
