"""OpenEXR input and output: whole files with their layers, headers and pixel types.

Channels are named ``layer.channel`` (``albedo.R``, ``ViewLayer.Noisy Image.G``)
or bare (``R``); multi-part files are flattened into one set of channels, with
a part's name put in front of its channels' names when they lack it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import OpenEXR

from .errors import UserError
from .files import atomic_path

# Header fields that describe storage; everything else is metadata we may copy.
_STORAGE_KEYS = {"channels", "type", "chunkCount", "tiles", "name", "version", "view"}


class ExrError(UserError):
    pass


@dataclass
class ExrImage:
    path: Path
    header: dict  # of the first part: compression, dataWindow, displayWindow, metadata...
    channels: dict[str, np.ndarray] = field(default_factory=dict)  # name -> H x W, data-window sized

    @property
    def shape(self) -> tuple[int, int]:
        first = next(iter(self.channels.values()))
        return first.shape[:2]

    def layers(self) -> dict[str, list[str]]:
        """Layer name ('' for bare channels) -> its channel suffixes, in file order."""
        out: dict[str, list[str]] = {}
        for name in self.channels:
            layer, _, suffix = name.rpartition(".")
            out.setdefault(layer, []).append(suffix)
        return out

    def describe_layers(self) -> str:
        return ", ".join(f"{layer or '(bare)'} [{''.join(s)}]" for layer, s in self.layers().items())


def read_exr(path: str | Path) -> ExrImage:
    """Read every channel of every part. A corrupt, truncated or empty file raises ExrError naming it."""
    path = Path(path)
    try:
        with OpenEXR.File(str(path), separate_channels=True) as f:
            parts = f.parts
            header = dict(parts[0].header)
            channels: dict[str, np.ndarray] = {}
            for part in parts:
                prefix = part.name() if len(parts) > 1 and part.name() else ""
                for name, ch in part.channels.items():
                    full = f"{prefix}.{name}" if prefix and not name.startswith(prefix + ".") else name
                    if ch.xSampling != 1 or ch.ySampling != 1:
                        raise ExrError(f"{path}: channel {full} is subsampled ({ch.xSampling}x{ch.ySampling}), "
                                       f"which this tool does not handle")
                    channels[full] = np.asarray(ch.pixels)
    except ExrError:
        raise
    except Exception as e:  # OpenEXR raises plain exceptions with the library's message
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExrError(f"{path}: not a readable OpenEXR file ({reason[:200]})") from None
    if not channels:
        raise ExrError(f"{path}: the file has no channels")
    return ExrImage(path, header, channels)


def read_exr_rgb(path: str | Path) -> np.ndarray:
    """The bare RGB channels as H x W x 3 float32 (the single-layer files this program writes)."""
    image = read_exr(path)
    try:
        return np.stack([image.channels[c] for c in "RGB"], axis=-1).astype(np.float32)
    except KeyError:
        raise ExrError(f"{path}: no R, G, B channels (it has {image.describe_layers()})") from None


def write_channels(path: str | Path, channels: dict[str, np.ndarray], like: dict | None = None,
                   metadata: dict | None = None) -> Path:
    """Write named channels atomically, keeping ``like``'s compression, windows and metadata."""
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    if like:
        header.update({k: v for k, v in like.items() if k not in _STORAGE_KEYS})
    header.update(metadata or {})
    data = {name: np.ascontiguousarray(px) for name, px in channels.items()}
    with atomic_path(path) as tmp:
        with OpenEXR.File(header, data) as f:
            f.write(str(tmp))
    return Path(path)


def write_exr(path: str | Path, rgb: np.ndarray, half: bool = False, header: dict | None = None) -> Path:
    """Write a linear H x W x 3 image atomically, ZIP-compressed, in float32 or half."""
    dtype = np.float16 if half else np.float32
    rgb = np.asarray(rgb)
    return write_channels(path, {c: rgb[..., i].astype(dtype) for i, c in enumerate("RGB")}, metadata=header)
