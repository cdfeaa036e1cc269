"""Metrics against hand-computed values on synthetic images."""

import math
import subprocess
import sys

import numpy as np
import pytest

from online_denoise.color import tonemap
from online_denoise.metrics import (RELMSE_EPS, SSIM_C1, all_metrics, hdr_flip, psnr, relmse, ssim,
                                    temporal_change)


def flat(value, h=32, w=32):
    return np.full((h, w, 3), value, np.float32)


def test_psnr_by_hand():
    # 0.5 and 0.25 in linear: tonemapped values are the sRGB encodings.
    a, b = flat(0.5), flat(0.25)
    ta, tb = tonemap(np.array(0.5)), tonemap(np.array(0.25))
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / (ta - tb) ** 2), rel=1e-5)
    assert psnr(a, a) == float("inf")


def test_psnr_rises_as_noise_falls():
    rng = np.random.default_rng(0)
    clean = rng.uniform(0.1, 0.8, (64, 64, 3)).astype(np.float32)
    noisy = [clean + s * rng.standard_normal(clean.shape).astype(np.float32) for s in (0.2, 0.1, 0.05)]
    values = [psnr(n, clean) for n in noisy]
    assert values[0] < values[1] < values[2]


def test_relmse_by_hand():
    ref = flat(2.0)
    img = flat(3.0)
    assert relmse(img, ref) == pytest.approx(1.0 / (4.0 + RELMSE_EPS))
    assert relmse(flat(np.nan), flat(1.0)) == pytest.approx(1.0 / (1.0 + RELMSE_EPS))


def test_ssim_by_hand():
    # Flat images: no variance, so SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1) on tonemapped values.
    a, b = float(tonemap(np.array(0.5))), float(tonemap(np.array(0.2)))
    assert ssim(flat(0.5), flat(0.2)) == pytest.approx((2 * a * b + SSIM_C1) / (a * a + b * b + SSIM_C1), rel=1e-5)
    rng = np.random.default_rng(1)
    img = rng.uniform(0, 1, (40, 40, 3)).astype(np.float32)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-6)
    assert ssim(img, img[::-1]) < 0.2


def test_flip():
    rng = np.random.default_rng(2)
    ref = rng.uniform(0, 2, (48, 48, 3)).astype(np.float32)
    assert hdr_flip(ref, ref) == 0.0
    small = hdr_flip(ref * 1.05, ref)
    large = hdr_flip(ref * 1.5, ref)
    assert 0 < small < large <= 1


def test_flip_inputs_are_validated_instead_of_exiting():
    ref = flat(1.0)
    with pytest.raises(ValueError, match="non-finite"):
        hdr_flip(ref, flat(np.inf))
    with pytest.raises(ValueError, match="H x W x 3"):
        hdr_flip(np.ones((8, 8), np.float32), np.ones((8, 8), np.float32))
    with pytest.raises(ValueError, match="differ in shape"):
        hdr_flip(flat(1.0, 8, 8), flat(1.0, 8, 9))


@pytest.mark.parametrize("case", ["black", "flat", "mostly black", "negative"])
def test_flip_survives_references_that_make_it_exit(case):
    """flip-evaluator ends the process on an empty exposure range; run in a subprocess to see it fail cleanly."""
    code = f"""
import numpy as np
from online_denoise.metrics import hdr_flip
ref = np.zeros((32, 32, 3), np.float32)
case = {case!r}
if case == "flat":
    ref += 0.5
elif case == "mostly black":
    ref[:4] = 2.0
elif case == "negative":
    ref -= 1.0
value = hdr_flip(ref + 0.1, ref)
assert 0.0 <= value <= 1.0, value
print("ok", value)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("ok"), out.stdout + out.stderr


def test_temporal_change_by_hand():
    frames = [flat(0.0), flat(1.0), flat(1.0)]
    assert temporal_change(frames) == pytest.approx(0.5)  # |1 - 0| then 0, tonemapped 0 -> 1
    assert math.isnan(temporal_change([flat(1.0)]))


def test_all_metrics_has_the_four():
    assert set(all_metrics(flat(0.5), flat(0.4))) == {"psnr", "relmse", "ssim", "flip"}
