"""The process's allocator setting (hardware.keep_freed_memory): freed tensor memory is reused without new page
faults, unless the user chose the allocator. Each case runs in its own Python process (the setting is
process-wide)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import procs

PROBE = """
import json, resource, torch
from resnetkit.hardware import keep_freed_memory, release_free_memory
rss_mb = lambda: int(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmRSS:"))) / 1024
applied = keep_freed_memory()
for _ in range(3):  # a steady state, as in a training loop (glibc's aligned blocks need a few rounds to coalesce)
    torch.ones(16 * 2**20)  # 64 MiB filled, then freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 * 2**20)  # the same size again
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
held = rss_mb()
release_free_memory()  # what a loader does before forking its workers
print(json.dumps({"applied": applied, "faults": faults, "released_mb": held - rss_mb()}))
"""
PAGES = 64 * 2**20 // 4096


def _probe(**env: str) -> dict:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("MALLOC_") and k not in ("LD_PRELOAD", "RESNETKIT_KEEP_FREED_MEMORY")
    }
    out = procs.run([sys.executable, "-c", PROBE], timeout=120, env={**clean, **env})
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _huge_pages_always() -> bool:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and "[always]" in path.read_text()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_tensor_memory_is_reused_without_page_faults() -> None:
    kept = _probe()
    assert kept["applied"] is True
    assert kept["faults"] < PAGES // 20  # the freed blocks are reused: no fresh pages
    assert kept["released_mb"] > 48  # the kept 64 MiB block(s) go back before workers are forked
    for env in ({"MALLOC_ARENA_MAX": "2"}, {"RESNETKIT_KEEP_FREED_MEMORY": "0"}):  # the user's choice: left alone
        chosen = _probe(**env)
        assert chosen["applied"] is False and abs(chosen["released_mb"]) < 30
        if not _huge_pages_always():  # 4 KiB pages: glibc maps a fresh 64 MiB block, and every page faults
            assert chosen["faults"] > PAGES // 2
