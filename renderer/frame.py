"""The plain object a render hands to the rest of the program."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .camera import Pose


@dataclass
class Frame:
    """Independent renders of one pose, plus the auxiliary buffers.

    The arrays are H x W x 3 float32: numpy arrays on the CPU variants, drjit
    CUDA tensors (which speak DLPack, so torch takes them without a copy) on
    ``cuda_ad_rgb``. Colours are linear HDR and unclamped. ``color_b`` is None
    when the frame is a single render, and ``target`` is a high-spp render for
    clean-target training, when asked for.

    ``position`` (world space, H x W x 3) and ``surface`` (the shape index,
    H x W x 1) come from the aux pass and let a later frame find this one's
    pixels. Both are pixel averages: 0 where nothing was hit, and a fractional
    shape index where a pixel straddles two shapes.

    ``emission`` (H x W x 3, also from the aux pass) is the radiance of the
    emitters the camera sees directly, lights and the environment: nonzero
    wherever any aux sample of the pixel hit one.

    ``specular`` (H x W x 3, from ``guide.py``'s pass) is what a perfect mirror
    would show on surfaces with a glossy or smooth lobe, 0 elsewhere: the edges
    of a reflection, without noise. None when the run asked for no guide.

    ``lobes`` is the scene's table of view-dependent lobe widths in radians,
    indexed by the shape index (``renderer.lobes``): inf for diffuse shapes,
    0 for smooth ones. None when the variant writes no shape ids. ``mirrors``,
    indexed alike, says which shapes show only a reflection (metals: no
    diffuse lobe, no transmission; ``renderer.lobes.bsdf_mirrors``).

    ``frames_a`` and ``frames_b`` (H x W x 1) are never set by the renderer:
    temporal reuse, downstream, replaces each colour with a running mean over
    past frames and records there how many frames each pixel's mean spans.
    None: a plain render, one frame. Reuse also keeps the renders' own samples
    as ``raw_a`` and ``raw_b``: the training targets take them where
    reprojection mixes the two sides of an edge.
    """

    color_a: Any
    color_b: Any | None
    albedo: Any
    normal: Any
    pose: Pose
    index: int
    seeds: dict[str, int]  # the seed of each pass: color_a, color_b, aux, target
    spp: int
    timings: dict[str, float] = field(default_factory=dict)  # milliseconds
    target: Any | None = None
    target_spp: int = 0
    position: Any | None = None
    surface: Any | None = None
    emission: Any | None = None
    specular: Any | None = None
    lobes: tuple[float, ...] | None = None
    mirrors: tuple[bool, ...] | None = None
    frames_a: Any | None = None
    frames_b: Any | None = None
    raw_a: Any | None = None
    raw_b: Any | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.color_a.shape[:2])
