"""What the network sees: the feature set, sanitising, and the input tensor.

Every pixel that reaches the network or the loss is finite. Inputs may be
clamped, since they only condition the network; the training target never is,
apart from replacing NaN and Inf (which no estimator can average away) with 0.
The one clamp on the colour that the kernels filter is ``suppress_fireflies``:
it trades a little energy for much less variance, as every production
denoiser's firefly filter does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .arrays import dilate3
from .color import get_transfer, luminance

FEATURE_CHANNELS = {"color": 3, "albedo": 3, "normal": 3, "history": 1, "specular": 3}
EXPOSURE_MODES = ("none", "auto")
# Live 120-s runs from the prior, same frames 100-500: glossy-metals +0.88 dB (FLIP better at all five),
# cornell -0.33 at 2 but +0.06 at 4. At 2 an ordinary 2-spp pixel is often twice its neighbours and the
# whole image darkened; at 4 mostly the isolated spikes are caught.
FIREFLY_RATIO = 4.0


@dataclass(frozen=True)
class FeatureSpec:
    features: tuple[str, ...] = ("color", "albedo", "normal")
    transfer: str = "paper"  # curve applied to the colour input (color.TRANSFERS)
    exposure: str = "none"  # "auto" scales each frame to middle grey before the transfer
    firefly: float = FIREFLY_RATIO  # suppress_fireflies' ratio; 0: off
    # The kpn kernels filter colour / max(albedo, demodulate) and the result is multiplied back, so texture
    # is not averaged away with the noise; the value is the albedo floor. 0: off (the kernels filter colour).
    demodulate: float = 0.0

    def __post_init__(self):
        if not self.features or self.features[0] != "color":
            raise ValueError(f"features must start with 'color', got {self.features}")
        unknown = [f for f in self.features if f not in FEATURE_CHANNELS]
        if unknown:
            raise ValueError(f"unknown features {unknown}; expected some of {list(FEATURE_CHANNELS)}")
        get_transfer(self.transfer)
        if self.exposure not in EXPOSURE_MODES:
            raise ValueError(f"exposure {self.exposure!r}: expected one of {EXPOSURE_MODES}")
        if not (self.firefly == 0 or 1 <= self.firefly < float("inf")):
            raise ValueError(f"firefly ratio {self.firefly}: expected 0 (off) or a number >= 1")
        if not 0 <= self.demodulate < 1:
            raise ValueError(f"demodulation floor {self.demodulate}: expected 0 (off) or an albedo in (0, 1)")
        if self.demodulate and "albedo" not in self.features:
            raise ValueError("demodulation divides by the albedo, which the features leave out")

    @property
    def channels(self) -> int:
        return sum(FEATURE_CHANNELS[f] for f in self.features)

    def to_dict(self) -> dict:
        return {"features": list(self.features), "transfer": self.transfer, "exposure": self.exposure,
                "firefly": self.firefly, "demodulate": self.demodulate}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        # Checkpoints from before the firefly clamp or demodulation were trained and used without them.
        return cls(tuple(d["features"]), d["transfer"], d.get("exposure", "none"), float(d.get("firefly", 0.0)),
                   float(d.get("demodulate", 0.0)))

    def describe(self) -> str:
        clamp = f", fireflies over {self.firefly:g}x clamped" if self.firefly else ""
        demod = f", filtered over albedo (floor {self.demodulate:g})" if self.demodulate else ""
        return f"{'+'.join(self.features)} ({self.transfer} transfer, exposure {self.exposure}{clamp}{demod})"


def added_channels(old: FeatureSpec, new: FeatureSpec) -> list[int] | None:
    """The input channels of ``new`` that ``old`` has no feature for, or None where ``new`` drops one of
    old's features, reorders them or changes how the colour is read (transfer, exposure)."""
    if (old.transfer, old.exposure) != (new.transfer, new.exposure):
        return None
    kept = [f for f in new.features if f in old.features]
    if kept != list(old.features):
        return None
    added, start = [], 0
    for name in new.features:
        if name not in old.features:
            added.extend(range(start, start + FEATURE_CHANNELS[name]))
        start += FEATURE_CHANNELS[name]
    return added


def finite(x: torch.Tensor) -> torch.Tensor:
    """NaN and +-Inf become 0: a firefly that overflowed carries no usable estimate."""
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


def suppress_fireflies(color: torch.Tensor, ratio: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Scale down each pixel brighter than ``ratio`` x the second brightest of its 8 neighbours.

    A firefly is a rare path of huge weight, alone in its neighbourhood. The
    kernels are convex, so they cannot drop one: they spread it into a blob,
    which costs more (tonemapped) than the spike did, and the coarse scales
    make it a square. The *second* brightest neighbour is the bound, so that
    two fireflies side by side do not shelter each other, while a line or an
    edge, which has a bright neighbour on each side, keeps its pixels. The
    colour keeps its hue. ``keep`` (N x 1 x H x W, 1 to exempt) spares the
    directly seen lights and the background, whose small bright features,
    a far bulb say, are real and noiseless.
    """
    lum = luminance(color.permute(0, 2, 3, 1)).unsqueeze(1)
    h, w = lum.shape[-2:]
    padded = F.pad(lum, (1, 1, 1, 1), mode="replicate")
    first = second = None
    # A running top-two over the shifted maps: sorting the 8 neighbours took 4.4 ms at 256^2, against
    # 0.5-0.9 ms.
    for dy in range(3):
        for dx in range(3):
            if dy == dx == 1:
                continue
            v = padded[:, :, dy:dy + h, dx:dx + w]
            if first is None:
                first, second = v, torch.full_like(v, -float("inf"))
            else:
                second = torch.maximum(second, torch.minimum(first, v))
                first = torch.maximum(first, v)
    # The floor keeps a spike on black (all neighbours 0) from being scaled to exactly 0.
    limit = ratio * second.clamp_min(0.0) + 1e-4
    scale = torch.where(lum > limit, limit / lum.clamp_min(1e-12), torch.ones_like(lum))
    if keep is not None:
        scale = torch.where(keep > 0, torch.ones_like(scale), scale)
    return color * scale


def noise_level(frames: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W: each pixel's noise, in standard deviations of one render, from the frames it averages.

    Temporal reuse makes a pixel the running mean of 1 to 16 frames, and a
    disocclusion, a texture edge or a stale glossy block restarts it at 1, so
    one image mixes noise levels 4x apart that the colour alone hardly tells
    from texture. None (no reuse, or an image from a file) is one frame.
    """
    if frames is None:
        return torch.ones_like(like[:, :1])
    return finite(frames).clamp_min(1.0).rsqrt()


def mean_frames(frames_a: torch.Tensor, frames_b: torch.Tensor) -> torch.Tensor:
    """The frames that the mean of two independent running means is worth: its variance is (1/a + 1/b) / 4."""
    return 4.0 / (1.0 / frames_a.clamp_min(1.0) + 1.0 / frames_b.clamp_min(1.0))


def build_input(spec: FeatureSpec, color: torch.Tensor, albedo: torch.Tensor | None,
                normal: torch.Tensor | None, frames: torch.Tensor | None = None,
                specular: torch.Tensor | None = None) -> torch.Tensor:
    """N x C x H x W network input from N x 3 x H x W linear colour and aux buffers.

    ``frames`` (N x 1 x H x W) is what each pixel of ``color`` averages, for
    the history feature (``noise_level``). ``specular`` is the renderer's
    mirror guide (radiance, through the colour's transfer); None, as for an
    image from a file, is a guide of 0: what a diffuse surface has.
    """
    transfer = get_transfer(spec.transfer)
    parts = [transfer.forward(finite(color).clamp_min(0.0))]
    for name in spec.features[1:]:
        if name == "history":
            parts.append(noise_level(frames, color).to(parts[0].dtype))
            continue
        if name == "specular":
            parts.append(torch.zeros_like(parts[0]) if specular is None
                         else transfer.forward(finite(specular).clamp_min(0.0)).to(parts[0].dtype))
            continue
        buf = albedo if name == "albedo" else normal
        if buf is None:
            raise ValueError(f"the feature set {spec.describe()} needs a {name} buffer")
        lo = 0.0 if name == "albedo" else -1.0
        parts.append(finite(buf).clamp(lo, 1.0))
    return torch.cat(parts, dim=1)


# Emission at or below this (linear, any channel) is not masked: such an emitter is in the range of
# the surfaces around it, like the 0.9 sky of the glossy and sunlit scenes. Masking that sky cost the
# glossy scene 9% of its frame rate (the masked filter runs on 7 channels, not 3) for -0.1 dB.
EMITTER_THRESHOLD = 1.0


def emitter_mask(emission: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W: 1 where a pixel sees a bright emitter directly, else 0.

    Emission is a pixel average, so an edge pixel of a light is in the mask
    when its share of the light's radiance is over ``EMITTER_THRESHOLD``.
    """
    return (finite(emission).amax(dim=1, keepdim=True) > EMITTER_THRESHOLD).float()


def background_mask(normal: torch.Tensor) -> torch.Tensor:
    """N x 1 x H x W: 1 where every sample of a pixel missed the scene, else 0.

    Such a pixel shows the environment behind the scene, or black, and that
    has no Monte Carlo noise to filter. The aux pass, Blender's Denoising
    Normal and OIDN's normal buffers all write a zero normal there, and a
    surface's shading normal is never zero (a pixel that is only partly
    covered averages to a shorter, non-zero one).
    """
    return (normal == 0).all(dim=1, keepdim=True).float()


# A shape index this far from a whole number is a pixel straddling two shapes: neither's material holds there.
STRADDLE = 0.05


def shape_mask(surface: torch.Tensor, picked: tuple[bool, ...]) -> torch.Tensor:
    """N x 1 x H x W, boolean: pixels wholly on one shape whose entry of ``picked`` (indexed by the aux pass's shape
    index, as ``Frame.lobes``) is True; shape ids past the table's end (shapes inside instances) are not picked."""
    table = torch.tensor([*picked, False], dtype=torch.bool, device=surface.device)
    index = surface.round()
    whole = (surface - index).abs() < STRADDLE
    return whole & table[index.long().clamp(0, table.numel() - 1)] & (surface > 0)


def diffuse_mask(surface: torch.Tensor, lobes: tuple[float, ...] | None) -> torch.Tensor | None:
    """N x 1 x H x W: 1 where a pixel lies on one shape whose BSDF has no view-dependent lobe, else 0.

    ``surface`` is the aux pass's shape index (N x 1 x H x W) and ``lobes``
    the scene's lobe widths by that index (``Frame.lobes``: inf for diffuse
    shapes). Only there is a pixel's colour its albedo times the irradiance,
    so only there may a kernel filter the two apart. None: no table, or no
    diffuse shape in it (id 0 is a miss), so no pixel may be demodulated and
    the network need not filter colour / albedo at all: a scene of metals and
    plastics (glossy-metals) then trains and infers on 3 channels, not 6.
    """
    if lobes is None or not any(math.isinf(v) for v in lobes[1:]):
        return None
    return shape_mask(surface, tuple(math.isinf(v) for v in lobes)).float()


EDGE_JUMP = 0.1  # summed absolute change of albedo or normal between neighbours that counts as an edge


def edge_mask(albedo: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
    """1 on pixels within one pixel of a jump in the albedo or normal buffer (N x 1 x H x W float), else 0.

    Both pixels of a jumping pair count, and the band is widened by one on
    each side: the four-pixel strip where reprojected history mixes the two
    sides of an edge.
    """
    jump = torch.zeros_like(albedo[:, :1])
    for buf in (albedo, normal):
        dx = ((buf[..., :, 1:] - buf[..., :, :-1]).abs().sum(1, keepdim=True) > EDGE_JUMP).to(jump.dtype)
        dy = ((buf[..., 1:, :] - buf[..., :-1, :]).abs().sum(1, keepdim=True) > EDGE_JUMP).to(jump.dtype)
        jump[..., :, 1:] = torch.maximum(jump[..., :, 1:], dx)
        jump[..., :, :-1] = torch.maximum(jump[..., :, :-1], dx)
        jump[..., 1:, :] = torch.maximum(jump[..., 1:, :], dy)
        jump[..., :-1, :] = torch.maximum(jump[..., :-1, :], dy)
    return dilate3(jump)
