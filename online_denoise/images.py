"""Saving what a run produced: tonemapped PNGs, linear EXRs, side-by-side strips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .color import to_uint8
from .files import atomic_write


def save_png(path: str | Path, linear: np.ndarray, exposure: float = 0.0) -> Path:
    """Tonemap a linear H x W x 3 image (the viewer's curve) and write an 8-bit PNG atomically."""
    image = Image.fromarray(to_uint8(linear, exposure), "RGB")
    return atomic_write(path, lambda f: image.save(f, format="PNG"))


def strip(images: list[np.ndarray], gap: int = 2) -> np.ndarray:
    """Lay equally tall H x W x 3 images side by side with a thin black gap."""
    h = images[0].shape[0]
    parts = []
    for i, im in enumerate(images):
        if im.shape[0] != h:
            raise ValueError("strip() needs images of equal height")
        if i:
            parts.append(np.zeros((h, gap, 3), im.dtype))
        parts.append(im)
    return np.concatenate(parts, axis=1)
