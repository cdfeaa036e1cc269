import numpy as np
import pytest

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
