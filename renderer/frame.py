"""The plain object a render hands to the rest of the program."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .camera import Pose


@dataclass
class Frame:
    """Two independent renders of one pose, plus the auxiliary buffers.

    The arrays are H x W x 3 float32: numpy arrays on the CPU variants, drjit
    CUDA tensors (which speak DLPack, so torch takes them without a copy) on
    ``cuda_ad_rgb``. Colours are linear HDR and unclamped.
    """

    color_a: Any
    color_b: Any
    albedo: Any
    normal: Any
    pose: Pose
    index: int
    seeds: tuple[int, int, int]  # color_a, color_b, auxiliary pass
    spp: int
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.color_a.shape[:2])
