"""Image quality metrics, and the reference-free error estimate of the live denoiser."""

from __future__ import annotations

import math

import numpy as np
import torch

from .color import tonemap
from .features import finite

RELMSE_EPS = 0.01  # relMSE = mean((x - ref)^2 / (ref^2 + eps)), per channel
SSIM_SIGMA, SSIM_TAPS = 1.5, 11  # Wang et al. 2004
SSIM_C1, SSIM_C2 = 0.01 ** 2, 0.03 ** 2  # for a data range of 1


def _np(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32)
        if x.dim() == 4:  # 1 x C x H x W
            x = x[0].permute(1, 2, 0)
        x = x.numpy()
    return np.asarray(x, np.float64)


def psnr(image, reference, exposure: float = 0.0) -> float:
    """PSNR in dB of the display-tonemapped images (the viewer's curve, peak 1)."""
    a = np.asarray(tonemap(_np(image), exposure))
    b = np.asarray(tonemap(_np(reference), exposure))
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * math.log10(1.0 / mse)


def relmse(image, reference, eps: float = RELMSE_EPS) -> float:
    a = np.nan_to_num(_np(image), nan=0.0, posinf=0.0, neginf=0.0)
    ref = _np(reference)
    return float(np.mean((a - ref) ** 2 / (ref ** 2 + eps)))


def ssim(image, reference, exposure: float = 0.0) -> float:
    """Mean SSIM of the display-tonemapped images, per channel, 11-tap Gaussian window (sigma 1.5)."""
    # float64: E[x^2] - E[x]^2 loses the variance of nearly flat regions in float32.
    a = torch.from_numpy(np.asarray(tonemap(_np(image), exposure))).permute(2, 0, 1)[None].double()
    b = torch.from_numpy(np.asarray(tonemap(_np(reference), exposure))).permute(2, 0, 1)[None].double()
    c = a.shape[1]
    x = torch.arange(SSIM_TAPS, dtype=torch.float64) - SSIM_TAPS // 2
    g = torch.exp(-x ** 2 / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()

    def blur(t):  # separable, valid region only, as in the reference implementation
        t = torch.nn.functional.conv2d(t, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return torch.nn.functional.conv2d(t, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / ((mu_a ** 2 + mu_b ** 2 + SSIM_C1) * (var_a + var_b + SSIM_C2))
    return float(s.mean())


def _flip_input(x, name: str) -> np.ndarray:
    """FLIP's own checks end the process (sys.exit), so everything it could reject is caught here."""
    x = np.ascontiguousarray(_np(x), dtype=np.float32)
    if x.ndim != 3 or x.shape[2] != 3 or min(x.shape[:2]) < 1:
        raise ValueError(f"FLIP {name}: expected an H x W x 3 image, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"FLIP {name}: has non-finite pixels")
    return np.maximum(x, 0.0)  # HDR-FLIP wants non-negative radiance


def _aces_x(t: float = 0.85) -> float:
    # The exposure at which FLIP's ACES curve reaches t (its compute_exposure_params).
    k0, k1, k2, k3, k4, k5 = 0.6 * 0.6 * 2.51, 0.6 * 0.03, 0.0, 0.6 * 0.6 * 2.43, 0.6 * 0.59, 0.14
    c0 = (k1 - k4 * t) / (k0 - k3 * t)
    c1 = (k2 - k5 * t) / (k0 - k3 * t)
    return -0.5 * c0 + math.sqrt((0.5 * c0) ** 2 - c1)


def _flip_exposures(reference: np.ndarray) -> dict:
    """An explicit exposure range when FLIP's automatic one would be empty or infinite.

    FLIP spans log2(x / max luminance) to log2(x / median luminance) and exits
    the process when that is empty: a black or flat reference. A median of 0
    (mostly black) would make it infinite. Those cases use the non-black pixels,
    and at least one stop; every other reference keeps FLIP's own range.
    """
    lum = 0.2126 * reference[..., 0] + 0.7152 * reference[..., 1] + 0.0722 * reference[..., 2]
    hi, lo = float(lum.max()), float(np.median(lum))
    if 0.0 < lo < hi:
        return {}
    lit = lum[lum > 0]
    hi = float(lit.max()) if lit.size else 1.0
    lo = float(np.median(lit)) if lit.size else hi
    lo = min(lo, hi / 2)
    x = _aces_x()
    return {"startExposure": math.log2(x / hi), "stopExposure": math.log2(x / lo)}


def hdr_flip(image, reference) -> float:
    """Mean HDR-FLIP error (NVIDIA's flip-evaluator, default viewing conditions, ACES exposures)."""
    import flip_evaluator

    test = _flip_input(np.nan_to_num(_np(image), nan=0.0, posinf=0.0, neginf=0.0), "test image")
    ref = _flip_input(reference, "reference")
    if test.shape != ref.shape:
        raise ValueError(f"FLIP: test image {test.shape} and reference {ref.shape} differ in shape")
    _, mean, _ = flip_evaluator.evaluate(ref, test, "HDR", applyMagma=False, parameters=_flip_exposures(ref))
    return float(mean)


def all_metrics(image, reference) -> dict[str, float]:
    return {"psnr": psnr(image, reference), "relmse": relmse(image, reference), "ssim": ssim(image, reference),
            "flip": hdr_flip(image, reference)}


def temporal_change(frames: list) -> float:
    """Mean absolute change between consecutive display-tonemapped frames (0 for a still image)."""
    mapped = [np.asarray(tonemap(_np(f))) for f in frames]
    if len(mapped) < 2:
        return float("nan")
    return float(np.mean([np.abs(b - a).mean() for a, b in zip(mapped, mapped[1:])]))


def error_estimate(denoised_a: torch.Tensor | None, denoised_b: torch.Tensor | None, color_a: torch.Tensor,
                   color_b: torch.Tensor) -> dict[str, float | None]:
    """Estimate the denoiser's MSE against the clean image, without a clean image.

    With a and b independent and unbiased renders of the clean image c, and f
    trained on neither:
        E[(f(a) - b)^2] = E[(f(a) - c)^2] + Var(b)       (the cross term vanishes)
        E[(a - b)^2]    = Var(a) + Var(b) = 2 Var(b)
    so mean((f(a) - b)^2) - mean((a - b)^2) / 2 estimates MSE(f(a), c), and
    symmetrically for f(b). Either side alone is an estimate; ``mse`` is the
    mean of those given (None: that render was not denoised on its own), and
    the displayed average (f(a) + f(b)) / 2 has an error no larger than the
    mean of both (convexity). All terms are linear-HDR pixel means over all
    channels.
    """
    if denoised_a is None and denoised_b is None:
        raise ValueError("error_estimate needs at least one render denoised on its own")
    a, b = finite(color_a), finite(color_b)
    missing = a.new_zeros(())
    cross = lambda f, other: missing if f is None else ((f - other) ** 2).mean()
    # One stack, one transfer: on CUDA each .item() would wait for the GPU on its own.
    half_var, cross_a, cross_b = torch.stack([((a - b) ** 2).mean() / 2, cross(denoised_a, b),
                                              cross(denoised_b, a)]).tolist()
    mse_a = None if denoised_a is None else cross_a - half_var
    mse_b = None if denoised_b is None else cross_b - half_var
    given = [m for m in (mse_a, mse_b) if m is not None]
    return {"mse": sum(given) / len(given), "mse_a": mse_a, "mse_b": mse_b, "noisy_mse": half_var}
