"""OpenEXR input and output."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import OpenEXR

from .files import atomic_path


def read_exr_rgb(path: str | Path) -> np.ndarray:
    """The RGB channels of a single-layer EXR as H x W x 3 float32 (the files this program writes)."""
    with OpenEXR.File(str(path)) as f:
        channels = f.channels()
        if "RGB" in channels:
            rgb = channels["RGB"].pixels
        else:
            rgb = np.stack([channels[c].pixels for c in "RGB"], axis=-1)
    return np.asarray(rgb, np.float32)[..., :3]


def write_exr(path: str | Path, rgb: np.ndarray, half: bool = False, header: dict | None = None) -> Path:
    """Write a linear H x W x 3 image atomically, ZIP-compressed, in float32 or half."""
    dtype = np.float16 if half else np.float32
    hdr = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage, **(header or {})}
    pixels = np.ascontiguousarray(rgb, dtype=dtype)
    with atomic_path(path) as tmp:
        with OpenEXR.File(hdr, {"RGB": pixels}) as f:
            f.write(str(tmp))
    return Path(path)
