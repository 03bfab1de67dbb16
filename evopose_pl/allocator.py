"""Host memory that stays with the process: training on the CPU allocates and frees the same large activations
every step, and glibc's malloc maps each block over its mmap threshold (at most 32 MiB) afresh from the kernel
and unmaps it when freed, so every step pays the page faults and the zeroing of every large tensor again.
On EvoPose2D-S at 256x192, batch 32, that is a tenth to a sixth of a training step (BENCHMARKS.md). Told to
serve every block from its heap and to keep what is freed, malloc hands the same pages back step after step; the
process keeps its peak memory (about 10% more resident memory there) instead of returning it between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

#: glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
#: The largest trim threshold mallopt takes (an int): free memory at the heap's top is never given back.
NEVER = 2**31 - 1


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc (whose malloc these settings are for), else None (musl, macOS, Windows)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - glibc alone has it
    except (OSError, AttributeError):
        return None
    return libc


def retain_freed_memory() -> bool:
    """Have glibc's malloc serve large blocks from its heap and keep freed memory for the next allocation, for
    the rest of the process (its loader workers included: there is no going back, as setting any of these
    turns off glibc's own adaptive mmap threshold); True when applied, False where malloc is not glibc's."""
    libc = _glibc()
    if libc is None:
        return False
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, NEVER) == 1
