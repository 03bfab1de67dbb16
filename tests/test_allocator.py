"""Retained host memory (evopose_pl.allocator): a large tensor freed and allocated again reuses the same pages
instead of faulting fresh ones in from the kernel. Each case runs in its own process (malloc's settings are
the process's)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from evopose_pl.allocator import _glibc

# A training loop's pattern: each step allocates and fills float32 tensors of 32-160 MiB (352 MiB), then frees them.
# Prints the page faults of the last five of ten steps (malloc settles in the first few).
STEPS = """
import resource, sys, torch
from evopose_pl.allocator import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
torch.set_num_threads(1)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    tensors = [torch.ones(n * 2**20) for n in (24, 16, 40, 8)]
    return sum(float(t[0]) for t in tensors)
for i in range(10):
    if i == 5:
        before = faults()
    step()
print(faults() - before)
"""


def _faults(root, mode: str) -> int:
    run = subprocess.run([sys.executable, "-c", STEPS, mode], cwd=root, capture_output=True, text=True, check=True)
    return int(run.stdout.split()[-1])


@pytest.mark.skipif(_glibc() is None, reason="malloc's settings are glibc's")
def test_freed_memory_is_reused_without_page_faults(root):
    pages = 5 * 88 * 2**20 * 4 // 4096  # five steps' tensors, in 4 KiB pages
    system = _faults(root, "system")
    assert system > pages // 2  # glibc maps blocks this large afresh each time
    assert _faults(root, "retain") < system // 5  # retained: the same pages again, once malloc has settled


def test_retain_freed_memory_setting_is_checked(compose):
    from session import ConfigError, retain_memory

    assert compose("train").retain_freed_memory is True and compose("evolve").retain_freed_memory is True
    with pytest.raises(ConfigError, match="retain_freed_memory='yes': must be true or false"):
        retain_memory(compose("train", "retain_freed_memory=yes"))
