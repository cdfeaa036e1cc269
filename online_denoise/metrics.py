"""Image quality metrics, and the reference-free error estimate of the live denoiser."""

from __future__ import annotations

import math

import numpy as np
import torch

from .color import tonemap
from .features import finite

RELMSE_EPS = 0.01  # relMSE = mean((x - ref)^2 / (ref^2 + eps)), per channel


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


def error_estimate(denoised_a: torch.Tensor, denoised_b: torch.Tensor, color_a: torch.Tensor,
                   color_b: torch.Tensor) -> dict[str, float]:
    """Estimate the denoiser's MSE against the clean image, without a clean image.

    With a and b independent and unbiased renders of the clean image c, and f
    trained on neither:
        E[(f(a) - b)^2] = E[(f(a) - c)^2] + Var(b)       (the cross term vanishes)
        E[(a - b)^2]    = Var(a) + Var(b) = 2 Var(b)
    so mean((f(a) - b)^2) - mean((a - b)^2) / 2 estimates MSE(f(a), c), and
    symmetrically for f(b). Their mean is reported as ``mse``; the displayed
    average (f(a) + f(b)) / 2 has an error no larger than that (convexity).
    All terms are linear-HDR pixel means over all channels.
    """
    a, b = finite(color_a), finite(color_b)
    half_var = ((a - b) ** 2).mean() / 2
    cross_a = ((denoised_a - b) ** 2).mean()
    cross_b = ((denoised_b - a) ** 2).mean()
    values = torch.stack([cross_a - half_var, cross_b - half_var, half_var]).tolist()
    mse_a, mse_b, noise_var = values
    return {"mse": 0.5 * (mse_a + mse_b), "mse_a": mse_a, "mse_b": mse_b, "noisy_mse": noise_var}
