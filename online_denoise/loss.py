"""Training losses. Each takes (prediction, target) in linear HDR and returns a scalar."""

from __future__ import annotations

from typing import Callable

import torch

HDR_EPS = 0.01


def hdr_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = HDR_EPS) -> torch.Tensor:
    """Noise2Noise's relative MSE: (f - y)^2 / (sg(f) + eps)^2.

    The denominator is detached, as in the paper, so the gradient is
    2 (f - y) / (sg(f) + eps)^2 and the loss stays an unbiased Noise2Noise target
    in expectation over y. An untrained network outputs negative values; with
    f = -eps the denominator would vanish and one pixel would dominate the
    step, which is how an unguarded prototype diverged. The prediction is
    therefore clamped at 0 inside the denominator only.
    """
    denom = (pred.detach().clamp_min(0.0) + eps) ** 2
    return ((pred - target) ** 2 / denom).mean()


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hdr": hdr_loss,
    "l2": l2_loss,
    "l1": l1_loss,
}


def get_loss(name: str):
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"--loss {name}: expected one of {', '.join(LOSSES)}") from None
