"""This process's resident memory, for the benchmark's memory target: RSS bounded, and flat over a long run."""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

try:
    import resource
except ImportError:  # Windows
    resource = None


def peak_rss_mb() -> float:
    """The process's peak resident set size so far, in MiB (NaN where the OS does not say)."""
    if resource is None:
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def rss_mb() -> float:
    """The current resident set size in MiB; without /proc, the peak so far (an upper bound)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return peak_rss_mb()


# glibc's ceiling for M_MMAP_THRESHOLD on 64-bit; every tensor of the cpu preset's loop is smaller.
KEEP_BLOCKS_UP_TO_MB = 32
KEEP_FREE_MB = 256  # free memory at the top of the heap that malloc keeps instead of handing back


def keep_freed_blocks(up_to_mb: int = KEEP_BLOCKS_UP_TO_MB, keep_mb: int = KEEP_FREE_MB) -> bool:
    """Have glibc's malloc reuse freed blocks of up to ``up_to_mb`` instead of unmapping them; whether it took.

    By default glibc maps blocks over its adaptive mmap threshold (the
    largest block freed so far, from 128 KiB) straight from the kernel, and
    hands free memory at the top of its heap back once there is more than
    twice that threshold. A training step frees all its activations at once,
    so the next step's arrived as fresh pages: a page fault and a zero-fill
    per 4 KiB. In one profile zero-filling a 6 x 26 x 96^2 tensor took 19 ms
    a step. Kept, the same blocks come back already mapped: median training
    step 89 -> 70-78 ms and inference 38-40 -> 30-34 ms at 256^2 on 2 cores
    (two processes each way), at the same peak RSS. In the live loop, whose
    other allocations keep more of the heap in use, it saves less: over 40 s
    of cornell-box, 958 k page faults became 140 k and system time 2.7 s ->
    0.9 s, while frames/s stayed within the runs' spread (3.8-4.3).
    Leaves malloc alone where the user tuned it (MALLOC_* in the environment)
    and off glibc, where there is no ``mallopt``.
    """
    if not sys.platform.startswith("linux") or any(k.startswith("MALLOC_") for k in os.environ):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another libc (musl) or none under that name
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mmap_ok = mallopt(m_mmap_threshold, up_to_mb << 20) == 1
    trim_ok = mallopt(m_trim_threshold, keep_mb << 20) == 1
    return mmap_ok and trim_ok


# RSS swung by tens of MiB from frame to frame (before keep_freed_blocks the allocator returned blocks to the OS and took
# them back), so a slope fitted over a minute or two extrapolates that noise: 2-minute runs gave
# anything from +26 to +281 MiB per 10 min, and 30 minutes of the same loop gave +2.6.
MIN_DRIFT_SPAN_S = 300.0


def drift_mb_per_10min(seconds: list[float], rss: list[float]) -> float:
    """Least-squares slope of RSS against time over the later half of the samples, in MiB per 10 minutes.

    The first half is left out because caches fill there (compiled kernels,
    oneDNN primitives, the allocator's pools): growth that stops is not a leak,
    and what the target asks is whether memory keeps growing. NaN when the
    later half spans less than MIN_DRIFT_SPAN_S.
    """
    n = len(seconds)
    if n < 4:
        return float("nan")
    t = np.asarray(seconds[n // 2:], float)
    y = np.asarray(rss[n // 2:], float)
    if t[-1] - t[0] < MIN_DRIFT_SPAN_S:
        return float("nan")
    slope = np.polyfit(t, y, 1)[0]
    return float(slope * 600.0)
