"""The displayed colour of metals pulled back towards the reused input where the kernels blurred it.

Temporal reuse follows a metal's reflection, so there the reused input holds
up to 8 frames of samples and shows the reflected edges (a softbox, the
horizon, a neighbouring ball) sharply; the kernels, which learnt mostly on
noisier pixels, still soften them. The two renders of a pair are independent
estimates of one image, so per pixel, over a small window and in the
network's input transfer (where the squared errors are closer to what a
display shows than in linear HDR):

    v = mean((a - b)^2) / 4          the variance of their mean x
    B = max(mean((ours - x)^2) - v, 0)   the squared bias left in ours

and x with weight B / (B + gamma v) is the mix of the two with the least
squared error. Over the floor and other noisy pixels those estimates are too
noisy to trust (every pixel mixed cost glossy-metals 0.3-4.8 dB, measured
before reflections were followed), so only metal pixels mix, and only where
both renders' histories span ``min_history`` frames: where a history has
just restarted, as everywhere on the first frame, the input is a 2-spp
render and the window's estimates are as noisy as it (the first frame lost
0.36 dB without that gate).

Measured on glossy-metals (401 frames from the prior, `--rr-depth 0`, same
frames 50-400 against a run without; window 5, gamma 4): +0.03 to +0.61 dB
(mean +0.21), HDR-FLIP better at five of eight and equal at two; the first
frame unchanged. Display only: the error estimate and training never see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .color import PaperTonemap

_TRANSFER = PaperTonemap()


@dataclass(frozen=True)
class InputBlend:
    window: int = 5  # side of the window the variance and bias are averaged over, odd
    gamma: float = 4.0  # weight of the input's variance against the denoiser's bias: larger keeps more of ours
    min_history: int = 2  # frames both renders' running means must span where a pixel mixes

    def __post_init__(self):
        if not isinstance(self.window, int) or self.window < 3 or self.window % 2 == 0:
            raise ValueError(f"blend window {self.window!r}: expected an odd number of pixels, at least 3")
        if not 0 < self.gamma < float("inf"):
            raise ValueError(f"blend gamma {self.gamma!r}: expected a positive weight")
        if not isinstance(self.min_history, int) or self.min_history < 1:
            raise ValueError(f"blend min_history {self.min_history!r}: expected a whole number of frames, at least 1")


def blend_mask(metal: torch.Tensor, frames: list[torch.Tensor] | None, config: InputBlend) -> torch.Tensor | None:
    """The pixels that may mix: on a metal (``metal``, 1 x 1 x H x W boolean) with both renders' histories
    (``frames``, each render's frames-averaged map) at least ``min_history`` long; None: no such pixel, or no
    histories (renders without temporal reuse)."""
    if frames is None or len(frames) != 2:
        return None
    mask = metal & (torch.minimum(frames[0], frames[1]) >= config.min_history)
    return mask if bool(mask.any()) else None


def blend_towards_input(denoised: torch.Tensor, a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor,
                        config: InputBlend = InputBlend()) -> torch.Tensor:
    """``denoised`` (1 x 3 x H x W, linear) mixed with the mean of ``a`` and ``b`` where ``mask`` (1 x 1 x H x W) is set."""
    r = config.window // 2
    box = lambda q: F.avg_pool2d(F.pad(q, (r, r, r, r), mode="replicate"), config.window, 1)
    ours = denoised.float()
    # Only the masked pixels' box, and the window around it, is computed: the transfer's powers are most of the
    # cost, and the metals are a part of the frame.
    rows, cols = mask[0, 0].any(1).nonzero(), mask[0, 0].any(0).nonzero()
    if not rows.numel():
        return ours
    h, w = mask.shape[-2:]
    y0, y1 = max(int(rows[0]) - r, 0), min(int(rows[-1]) + r + 1, h)
    x0, x1 = max(int(cols[0]) - r, 0), min(int(cols[-1]) + r + 1, w)
    crop = lambda x: x[..., y0:y1, x0:x1]
    o, a, b = crop(ours), crop(a).float(), crop(b).float()
    ea, eb, eo, ex = (_TRANSFER.forward(x) for x in (a, b, o, (a + b) / 2))
    variance = box(((ea - eb) ** 2).mean(1, keepdim=True)) / 4
    bias = (box(((eo - ex) ** 2).mean(1, keepdim=True)) - variance).clamp_min(0)
    weight = bias / (bias + config.gamma * variance).clamp_min(1e-12)
    mixed = _TRANSFER.inverse(eo + weight * (ex - eo))
    out = ours.clone()
    out[..., y0:y1, x0:x1] = torch.where(crop(mask) & (weight > 0), mixed, o)
    return out
