"""This process's resident memory, for the benchmark's memory target: RSS bounded, and flat over a long run."""

from __future__ import annotations

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


# RSS swings by tens of MiB from frame to frame (the allocator returns large blocks to the OS and takes
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
