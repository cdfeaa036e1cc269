import os
import subprocess
import sys

import numpy as np
import pytest

from online_denoise import memory
from online_denoise.memory import drift_mb_per_10min, peak_rss_mb, rss_mb


def test_rss_sees_memory_the_process_touches():
    before = rss_mb()
    block = np.ones(64 * 2**20 // 8)  # 64 MiB, written so that it is resident
    grown = rss_mb() - before
    del block
    assert 48 < grown < 96
    assert peak_rss_mb() >= before + 48


def test_drift_is_the_slope_of_the_later_half():
    t = list(np.linspace(0, 1800, 200))
    # Caches fill in the first minutes (+300 MiB), then memory holds with a slow 2 MiB/10 min creep.
    rss = [700 + 300 * min(s / 300, 1.0) + 2 * s / 600 for s in t]
    assert drift_mb_per_10min(t, rss) == pytest.approx(2.0, abs=1e-6)
    assert drift_mb_per_10min(t, [900.0] * 200) == pytest.approx(0.0, abs=1e-9)


def test_drift_needs_samples_over_minutes():
    assert np.isnan(drift_mb_per_10min([0, 1, 2], [1, 2, 3]))
    assert np.isnan(drift_mb_per_10min([5.0] * 8, list(range(8))))
    two_minutes = list(np.linspace(0, 120, 500))
    assert np.isnan(drift_mb_per_10min(two_minutes, [600 + (i % 7) * 10 for i in range(500)]))


_FAULTS_PER_REUSE = """
import resource, sys
import numpy as np
from online_denoise.memory import keep_freed_blocks
if sys.argv[1] == "keep":
    assert keep_freed_blocks(), "mallopt refused"
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
block, count = 8 << 20, 6  # a training step's activations: a few dozen MiB in blocks of 4-9 MiB
np.ones(block // 8)  # freed once, which lifts glibc's adaptive mmap threshold above the block size
start = faults()
for _ in range(10):
    arrays = [np.empty(block // 8) for _ in range(count)]
    for a in arrays:
        a.fill(1.0)
    del arrays, a  # all freed at once, as at the end of a step
print((faults() - start) / 10 / (count * block // 4096))
"""


def _faults_per_page(mode: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    out = subprocess.run([sys.executable, "-c", _FAULTS_PER_REUSE, mode], capture_output=True, text=True, env=env,
                         check=True)
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_blocks_come_back_without_page_faults():
    # By default the step's blocks come from the heap, but freeing them all leaves more free memory at its
    # top than the trim threshold (twice the mmap threshold), so malloc hands much of it back to the kernel
    # and the next step faults those pages in again.
    assert _faults_per_page("default") > 0.15
    assert _faults_per_page("keep") < 0.05


def test_keep_freed_blocks_leaves_a_tuned_malloc_alone(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert memory.keep_freed_blocks() is False
