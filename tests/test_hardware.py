"""The process's allocator setting (hardware.keep_freed_memory): freed tensor memory is reused without new page
faults, unless the user chose the allocator. Each case runs in its own Python process (the setting is
process-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = """
import json, resource, torch
from resnetkit.hardware import keep_freed_memory
applied = keep_freed_memory()
for _ in range(3):  # a steady state, as in a training loop (glibc's aligned blocks need a few rounds to coalesce)
    torch.ones(16 * 2**20)  # 64 MiB filled, then freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 * 2**20)  # the same size again
print(json.dumps({"applied": applied, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""
PAGES = 64 * 2**20 // 4096


def _probe(**env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def _huge_pages_always() -> bool:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and "[always]" in path.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_is_reused_without_page_faults() -> None:
    kept = _probe()
    assert kept["applied"] is True
    assert kept["faults"] < PAGES // 20  # the freed blocks are reused: no fresh pages
    chosen = _probe(MALLOC_ARENA_MAX="2")  # the user set malloc up: left alone
    assert chosen["applied"] is False
    if not _huge_pages_always():  # 4 KiB pages: glibc maps a fresh 64 MiB block, and every page faults
        assert chosen["faults"] > PAGES // 2
