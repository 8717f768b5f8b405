"""What the CPU is: its model name and feature flags, read once from /proc/cpuinfo (what `lscpu` shows); and the
process's memory allocator, set for tensor work."""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
from pathlib import Path

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_KEEP_BYTES = 1 << 30


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and its flags (empty where /proc/cpuinfo is missing: not Linux)."""
    name, flags = "", frozenset()
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        field, _, value = line.partition(":")
        if field.strip() == "model name" and not name:
            name = value.strip()
        elif field.strip() == "flags" and not flags:
            flags = frozenset(value.split())
    return name or platform.processor() or platform.machine() or "unknown CPU", flags


def cpu_flags() -> frozenset[str]:
    return cpu_info()[1]


@functools.cache
def keep_freed_memory() -> bool:
    """Lets glibc's malloc reuse freed tensor memory instead of returning it to the system: large blocks come from
    the heap (not a fresh mmap each time) and up to 1 GiB of freed heap is kept. Every fresh mmap'd page is a page
    fault that the kernel zeroes: normalising a 224 px batch ran 3.2x faster with this and ResNet-18 training steps
    at 224 px 1.25x (ResNet-20 at 32 px 1.02x), for a peak memory a few hundred MB higher (benchmarks/RESULTS.md,
    "The allocator setting"). Inherited by forked DataLoader workers. Not applied with RESNETKIT_KEEP_FREED_MEMORY=0,
    where the user chose the allocator (MALLOC_* variables, LD_PRELOAD) or off glibc; True when applied."""
    chosen = any(k.startswith("MALLOC_") for k in os.environ) or os.environ.get("LD_PRELOAD")
    if chosen or os.environ.get("RESNETKIT_KEEP_FREED_MEMORY") == "0" or platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        applied = all(libc.mallopt(option, _KEEP_BYTES) == 1 for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
    log.debug("malloc keeps freed memory for reuse: %s", applied)
    return applied


def release_free_memory() -> None:
    """Returns the heap's free pages to the system (glibc's malloc_trim) where `keep_freed_memory` kept them. Called
    before forking worker processes: a child shares its parent's pages, and once the parent reuses a kept free page
    the child is left holding the old copy — measured, 2 decoding workers held ~0.7 GB more each without this."""
    if keep_freed_memory.cache_info().currsize and keep_freed_memory():
        ctypes.CDLL("libc.so.6").malloc_trim(0)
