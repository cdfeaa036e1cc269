"""Training losses. Each takes (prediction, target) in linear HDR and returns a scalar."""

from __future__ import annotations

import functools
from typing import Callable

import torch

HDR_EPS = 0.01


def hdr_loss(pred: torch.Tensor, target: torch.Tensor, eps: float = HDR_EPS,
             clip: float | None = None) -> torch.Tensor:
    """Noise2Noise's relative MSE: (f - y)^2 / (sg(f) + eps)^2.

    The denominator is detached, as in the paper, so the gradient is
    2 (f - y) / (sg(f) + eps)^2 and the loss stays an unbiased Noise2Noise target
    in expectation over y. An untrained network outputs negative values; with
    f = -eps the denominator would vanish and one pixel would dominate the
    step, which is how an unguarded prototype diverged. The prediction is
    therefore clamped at 0 inside the denominator only.

    ``clip`` brings a target more than ``clip`` x (sg(f) + eps) above the
    prediction down to that bound, so that no pixel's loss exceeds clip^2.
    On glossy-metals single target samples of 200-325 against a prediction
    of 0.1 (a path that found the sun through a metal) were 97-99% of the
    loss of the steps they fell in, and being stored in the ring, the same
    sample came back step after step. The bound gives up the rarest paths'
    energy, which no network learns from a few samples anyway.
    """
    floor = pred.detach().clamp_min(0.0)
    scale = floor + eps
    if clip is not None:
        target = torch.minimum(target, floor + clip * scale)
    return ((pred - target) ** 2 / scale ** 2).mean()


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return ((pred - target) ** 2).mean()


def l1_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


L0_EPS = 1e-8
L0_GAMMA_FLOOR = 0.05  # gamma = 0 would make the loss constant and every gradient zero


class L0Loss:
    """Noise2Noise's annealed mode-seeking loss (|f - y| + 1e-8)^gamma, gamma from 2 down to 0.

    Gamma falls linearly over ``anneal_steps`` optimizer steps and then stays at
    a small floor, since a live run has no last step to reach 0 at.
    """

    def __init__(self, anneal_steps: int = 2000):
        self.anneal_steps = max(1, anneal_steps)
        self.gamma = 2.0

    def set_step(self, step: int) -> None:
        self.gamma = max(L0_GAMMA_FLOOR, 2.0 * (1.0 - step / self.anneal_steps))

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((pred - target).abs() + L0_EPS).pow(self.gamma).mean()


LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hdr": hdr_loss,
    "l2": l2_loss,
    "l1": l1_loss,
}
LOSS_NAMES = ("hdr", "l2", "l1", "l0", "nll")  # nll: the blind-spot net's Gaussian likelihood


def get_loss(name: str, anneal_steps: int = 2000, target_clip: float | None = None):
    if target_clip is not None and name != "hdr":
        raise ValueError(f"--target-clip bounds the hdr loss's relative error; --loss {name} has none")
    if name == "l0":
        return L0Loss(anneal_steps)
    if name == "nll":
        return None  # computed by the blind-spot objective itself
    if name == "hdr" and target_clip is not None:
        return functools.partial(hdr_loss, clip=target_clip)
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"--loss {name}: expected one of {', '.join(LOSS_NAMES)}") from None
