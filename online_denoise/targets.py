"""Training targets: what the network is asked to predict, from what, with which loss.

n2n        Noise2Noise: input one render, target the other (the ring picks a
           random direction per crop).
n2c        The paper's clean-target baseline: input a render, target a
           high-spp render rendered live with its own seed.
gr2r       Generative Recorrupted-to-Recorrupted, from one render y. The noise
           is generated from the network's own residual, n = (y - f(y)) * m
           with m = +-1 at random and no gradient through f(y); the input is
           y + n and the target y - n. Our reading of the paper's two further
           terms, weighted by gamma: a regular term, the same recorruption the
           other way round (input y - n, target y + n), and a pseudo-supervised
           term that takes the detached f(y) as the label for input y + n.
blindspot  Laine et al.'s blind-spot network (blindspot.py): a Gaussian
           prior over the clean pixel from its surroundings, fitted by the
           likelihood of the noisy pixel itself.
"""

from __future__ import annotations

import torch

from .blindspot import gaussian_nll
from .denoiser import prepare_input, run_network
from .model import light_ring

TARGETS = ("n2n", "n2c", "blindspot", "gr2r")
SINGLE_RENDER = ("blindspot", "gr2r")  # one render per frame, at twice the spp of each render of a pair


class Objective:
    name = "?"

    def loss(self, trainer, batch) -> torch.Tensor:
        raise NotImplementedError


def reachable(model, batch, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target, with the pixels the kernels cannot reach set to the prediction (no loss, no gradient).

    The kernel head fills the ring of surface pixels beside a light from
    surface pixels only (``model.filter_around_emitters``), so whatever its
    weights, a ring pixel cannot show the light. At 2 spp one of its target's
    samples often hits the light all the same, 9 against a prediction of
    0-0.05: on cornell-box every step whose loss spiked to 20-500x the median
    had one to five such pixels, holding 97-99% of the loss, and they had
    nothing to teach. Without them no step went over 3x the median.
    """
    if batch.emitter is None or getattr(getattr(model, "config", None), "output", None) != "kpn":
        return target
    return torch.where(light_ring(batch.emitter) > 0.5, pred.detach(), target)


class Paired(Objective):
    """n2n and n2c: the ring's batch already holds the target."""

    def __init__(self, name: str):
        self.name = name

    def loss(self, trainer, batch) -> torch.Tensor:
        if batch.target is None:
            raise RuntimeError(f"target {self.name} needs a second render or a clean render in the ring")
        pred = run_network(trainer.model, trainer.spec, batch.input, batch.albedo, batch.normal, batch.exposure,
                           trainer.precision, batch.emitter, batch.history, batch.has_background,
                           specular=batch.specular, diffuse=batch.diffuse)
        return trainer.loss_fn(pred, reachable(trainer.model, batch, pred, batch.target))


class GR2R(Objective):
    name = "gr2r"

    def __init__(self, gamma: float):
        self.gamma = gamma

    def recorrupt(self, y: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """n = (y - f(y)) * m, m = +-1 per value: zero-mean given y, whatever f is."""
        m = torch.randint(0, 2, y.shape, device=y.device, dtype=y.dtype) * 2 - 1
        return (y - fy) * m

    def loss(self, trainer, batch) -> torch.Tensor:
        def f(color):
            return run_network(trainer.model, trainer.spec, color, batch.albedo, batch.normal, batch.exposure,
                               trainer.precision, batch.emitter, batch.history, specular=batch.specular,
                               diffuse=batch.diffuse)

        y = batch.input
        with torch.no_grad():
            fy = f(y)
        n = self.recorrupt(y, fy)
        plus = f(y + n)
        loss = trainer.loss_fn(plus, reachable(trainer.model, batch, plus, y - n))
        if self.gamma > 0:
            minus = f(y - n)
            regular = trainer.loss_fn(minus, reachable(trainer.model, batch, minus, y + n))
            pseudo = trainer.loss_fn(plus, fy)
            loss = loss + self.gamma * (regular + pseudo)
        return loss


class BlindSpot(Objective):
    """Gaussian likelihood of the noisy pixel under the predicted prior plus noise ('nll'),
    or, with another --loss, that loss between the prior mean and the noisy pixel (Noise2Void-style)."""

    name = "blindspot"

    def loss(self, trainer, batch) -> torch.Tensor:
        model = trainer.model
        if model.config.output == "mean":
            pred = run_network(model, trainer.spec, batch.input, batch.albedo, batch.normal, batch.exposure,
                               trainer.precision, frames=batch.history, specular=batch.specular)
            return trainer.loss_fn(pred, batch.input)
        x, _, (h, w) = prepare_input(model, trainer.spec, batch.input, batch.albedo, batch.normal, batch.exposure,
                                     trainer.precision, batch.history, specular=batch.specular)
        with trainer.precision.autocast(x.device):
            g = model.gaussian(x)
        g = {k: v[..., :h, :w] if v.dim() == 4 and k != "prior_cov" else v[:, :h, :w] for k, v in g.items()}
        return gaussian_nll(g, x[:, :3, :h, :w].float())


def make_objective(name: str, gr2r_gamma: float = 1.0) -> Objective:
    if name in ("n2n", "n2c"):
        return Paired(name)
    if name == "gr2r":
        return GR2R(gr2r_gamma)
    if name == "blindspot":
        return BlindSpot()
    raise ValueError(f"--target {name}: expected one of {', '.join(TARGETS)}")
