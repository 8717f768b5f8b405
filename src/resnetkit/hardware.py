"""What the CPU is: its model name and feature flags, read once from /proc/cpuinfo (what `lscpu` shows)."""

from __future__ import annotations

import functools
import platform
from pathlib import Path


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
