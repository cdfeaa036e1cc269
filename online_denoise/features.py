"""What the network sees: the feature set, sanitising, and the input tensor.

Every pixel that reaches the network or the loss is finite. Inputs may be
clamped, since they only condition the network; the training target never is,
apart from replacing NaN and Inf (which no estimator can average away) with 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .color import get_transfer

FEATURE_CHANNELS = {"color": 3, "albedo": 3, "normal": 3, "history": 1}
EXPOSURE_MODES = ("none", "auto")


@dataclass(frozen=True)
class FeatureSpec:
    features: tuple[str, ...] = ("color", "albedo", "normal")
    transfer: str = "paper"  # curve applied to the colour input (color.TRANSFERS)
    exposure: str = "none"  # "auto" scales each frame to middle grey before the transfer

    def __post_init__(self):
        if not self.features or self.features[0] != "color":
            raise ValueError(f"features must start with 'color', got {self.features}")
        unknown = [f for f in self.features if f not in FEATURE_CHANNELS]
        if unknown:
            raise ValueError(f"unknown features {unknown}; expected some of {list(FEATURE_CHANNELS)}")
        get_transfer(self.transfer)
        if self.exposure not in EXPOSURE_MODES:
            raise ValueError(f"exposure {self.exposure!r}: expected one of {EXPOSURE_MODES}")

    @property
    def channels(self) -> int:
        return sum(FEATURE_CHANNELS[f] for f in self.features)

    def to_dict(self) -> dict:
        return {"features": list(self.features), "transfer": self.transfer, "exposure": self.exposure}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(tuple(d["features"]), d["transfer"], d.get("exposure", "none"))

    def describe(self) -> str:
        return f"{'+'.join(self.features)} ({self.transfer} transfer, exposure {self.exposure})"


def finite(x: torch.Tensor) -> torch.Tensor:
    """NaN and +-Inf become 0: a firefly that overflowed carries no usable estimate."""
    return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)


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
                normal: torch.Tensor | None, frames: torch.Tensor | None = None) -> torch.Tensor:
    """N x C x H x W network input from N x 3 x H x W linear colour and aux buffers.

    ``frames`` (N x 1 x H x W) is what each pixel of ``color`` averages, for
    the history feature (``noise_level``).
    """
    parts = [get_transfer(spec.transfer).forward(finite(color).clamp_min(0.0))]
    for name in spec.features[1:]:
        if name == "history":
            parts.append(noise_level(frames, color).to(parts[0].dtype))
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
