"""Transfer functions, exposure and the display tonemap.

Every function here takes numpy arrays or torch tensors alike, so that the
network's input path, the metrics and the viewer's shader reference all share
one definition of each curve.
"""

from __future__ import annotations

import math

import numpy as np

PAPER_GAMMA = 2.2  # Noise2Noise feeds (v / (1 + v)) ** (1 / 2.2) to the network
LOG_SCALE = 1.0 / math.log1p(1024.0)  # maps [0, 1024] linear onto [0, 1]
AUTOEXPOSURE_KEY = 0.18  # middle grey
AUTOEXPOSURE_EPS = 1e-8


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _log1p(x):
    return x.log1p() if _is_torch(x) else np.log1p(x)


def _expm1(x):
    return x.expm1() if _is_torch(x) else np.expm1(x)


def _where(cond, a, b):
    if _is_torch(cond):
        import torch

        return torch.where(cond, a, b)
    return np.where(cond, a, b)


class Transfer:
    """A curve applied to linear HDR colour before it enters the network."""

    name = "abstract"

    def forward(self, x):
        raise NotImplementedError

    def inverse(self, y):
        raise NotImplementedError


class Linear(Transfer):
    name = "linear"

    def forward(self, x):
        return x

    def inverse(self, y):
        return y


class PaperTonemap(Transfer):
    """(v / (1 + v)) ** (1/2.2): Reinhard then gamma, the Noise2Noise MC input."""

    name = "paper"

    def forward(self, x):
        x = x.clip(0.0, None)
        return (x / (1.0 + x)) ** (1.0 / PAPER_GAMMA)

    def inverse(self, y):
        u = y.clip(0.0, 1.0 - 1e-7) ** PAPER_GAMMA
        return u / (1.0 - u)


class LogTransfer(Transfer):
    """log(1 + v), scaled so that 1024 maps to 1; resolves highlights better than Reinhard."""

    name = "log"

    def forward(self, x):
        return _log1p(x.clip(0.0, None)) * LOG_SCALE

    def inverse(self, y):
        return _expm1(y.clip(0.0, None) / LOG_SCALE)


TRANSFERS: dict[str, Transfer] = {t.name: t for t in (PaperTonemap(), LogTransfer(), Linear())}


def get_transfer(name: str) -> Transfer:
    try:
        return TRANSFERS[name]
    except KeyError:
        raise ValueError(f"unknown transfer {name!r}; expected one of {', '.join(TRANSFERS)}") from None


def luminance(x):
    """Rec. 709 luminance of an ... x 3 array."""
    return 0.2126 * x[..., 0] + 0.7152 * x[..., 1] + 0.0722 * x[..., 2]


def autoexposure(color) -> float:
    """Scale that brings the log-average luminance to middle grey (OIDN's approach).

    Black pixels are left out of the average so that a mostly empty frame is not
    blown up; an all-black frame gets a scale of 1.
    """
    from .arrays import to_numpy

    lum = luminance(to_numpy(color).astype(np.float64))
    lum = lum[np.isfinite(lum) & (lum > AUTOEXPOSURE_EPS)]
    if lum.size == 0:
        return 1.0
    return float(AUTOEXPOSURE_KEY / math.exp(np.mean(np.log(lum))))


# -- display ----------------------------------------------------------------

def srgb_encode(x):
    """Linear [0, 1] to sRGB-encoded [0, 1] (IEC 61966-2-1)."""
    x = x.clip(0.0, 1.0)
    return _where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1.0 / 2.4) - 0.055)


def srgb_decode(y):
    y = y.clip(0.0, 1.0)
    return _where(y <= 0.04045, y / 12.92, ((y + 0.055) / 1.055) ** 2.4)


def tonemap(x, exposure: float = 0.0):
    """The display tonemap: scale by 2**exposure stops, clip to [0, 1], sRGB-encode.

    The viewer's shader (shaders/tonemap.glsl) implements the same curve, and
    PSNR, SSIM and the PNGs use it too, so a number always describes what the
    user sees.
    """
    x = x * (2.0 ** exposure)
    if _is_torch(x):
        x = x.nan_to_num(0.0, 1e30, 0.0)
    else:  # NaN shows black and +Inf white, as a float texture does after clamping
        x = np.nan_to_num(x, nan=0.0, posinf=1e30, neginf=0.0)
    return srgb_encode(x)


def to_uint8(x, exposure: float = 0.0) -> np.ndarray:
    """Tonemapped 8-bit image of a linear HDR numpy array."""
    return np.round(np.asarray(tonemap(np.asarray(x, np.float32), exposure)) * 255.0).astype(np.uint8)
