"""Intel Open Image Denoise, for comparison: the same frames, the same albedo and normal."""

from __future__ import annotations

import numpy as np

from .arrays import to_numpy
from .features import finite

OIDN_QUALITY = "balanced"


def require_oidn() -> None:
    """Fail before a benchmark's live loop, not after it, when OIDN cannot be loaded."""
    from .errors import UserError

    try:
        import pyoidn  # noqa: F401
    except Exception as e:  # ImportError, or OSError from a missing shared library of OIDN's
        raise UserError(f"OIDN (the pyoidn package) cannot be loaded: {e}. bench compares against it; install it "
                        "(scripts/setup.sh does) or pass --no-oidn to judge against the references alone") from None


def oidn_denoise(color, albedo=None, normal=None, quality: str = OIDN_QUALITY) -> np.ndarray:
    """Denoise a linear HDR H x W x 3 image with OIDN's RT filter (hdr=True).

    Inputs are made finite and in range first, as OIDN expects: colour >= 0,
    albedo in [0, 1], normal in [-1, 1].
    """
    import pyoidn
    import torch

    def prep(x, lo, hi):
        if x is None:
            return None
        t = finite(torch.from_numpy(np.ascontiguousarray(to_numpy(x))))
        return np.ascontiguousarray(t.clamp(lo, hi).numpy(), dtype=np.float32)

    return pyoidn.denoise(prep(color, 0.0, None), prep(albedo, 0.0, 1.0), prep(normal, -1.0, 1.0),
                          hdr=True, quality=quality)
