"""The blind-spot network of Laine et al. 2019, "High-Quality Self-Supervised Deep Image Denoising".

One U-Net branch whose every convolution and pooling is shifted so that an
output pixel sees only rows strictly above it. The input is rotated by 0, 90,
180 and 270 degrees, run through the same branch, and rotated back: four
half-plane receptive fields whose union is every pixel but the centre. 1x1
convolutions combine them, together with the centre pixel's albedo and normal.
Those come from the independent auxiliary pass, so they carry none of the
colour's noise and may be seen.

The head predicts, per pixel, a Gaussian prior over the clean colour (mean and
a full 3x3 covariance through its Cholesky factor) and the noise variance.

Noise model for Monte Carlo noise: the colour is compared in the input
transfer's tonemapped domain, where fireflies are compressed and the noise is
far closer to Gaussian than in linear radiance; there the noise is modelled as
zero-mean Gaussian, independent across channels, with a per-pixel variance
predicted from the context. Per-pixel because Monte Carlo variance follows the
lighting and the materials and changes across the frame, and from the context
because the centre pixel must stay unseen; the context sees it well, since the
variance varies smoothly. This is the paper's "unknown noise parameters" case
with a spatially varying parameter. At inference the posterior mean combines
the prior with the observed pixel:

    mu_post = mu + S_p (S_p + S_n)^-1 (y - mu)

and is mapped back to linear HDR by the inverse transfer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .color import get_transfer

LEAKY_SLOPE = 0.1
MAX_RADIANCE = 1e4  # cap on the linear output
MIN_VARIANCE = 1e-4  # floor on predicted variances, in the [0, 1] tonemapped domain


def _shift_down(x: torch.Tensor) -> torch.Tensor:
    """Move every row one down (row 0 becomes zeros): an output then sees strictly older rows."""
    return F.pad(x, (0, 0, 1, 0))[..., :-1, :]


class _UpConv(nn.Conv2d):
    """3x3 convolution that looks only at its own row and the two above."""

    def __init__(self, cin: int, cout: int):
        super().__init__(cin, cout, 3)

    def forward(self, x):
        return super().forward(F.pad(x, (1, 1, 2, 0)))


class HalfPlaneUNet(nn.Module):
    """A U-Net whose output at (y, x) depends only on input rows < y."""

    def __init__(self, cin: int, width: int, depth: int):
        super().__init__()
        self.depth = depth
        self.enc0 = _UpConv(cin, width)
        self.enc = nn.ModuleList(_UpConv(width, width) for _ in range(depth + 1))
        self.dec = nn.ModuleList(
            nn.ModuleList([_UpConv((width if i == 0 else 2 * width) + width, 2 * width), _UpConv(2 * width, 2 * width)])
            for i in range(depth))
        self.out_channels = 2 * width

    def forward(self, x):
        act = lambda t: F.leaky_relu(t, LEAKY_SLOPE)  # noqa: E731
        x = act(self.enc0(x))
        x = act(self.enc[0](x))
        skips = [x]
        for i in range(1, self.depth + 1):
            # Shift before pooling, so a pooled row only summarises rows at or above its own.
            x = F.max_pool2d(_shift_down(x), 2)
            x = act(self.enc[i](x))
            if i < self.depth:
                skips.append(x)
        for stage in self.dec:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = torch.cat([x, skips.pop()], dim=1)
            x = act(stage[1](act(stage[0](x))))
        return _shift_down(x)  # the last shift takes the pixel's own row out of its view


class BlindSpotNet(nn.Module):
    """Prior mean (3), Cholesky factor of the prior covariance (6) and noise variance (3) per pixel."""

    def __init__(self, config, transfer: str = "paper"):
        super().__init__()
        self.config = config
        self.transfer = transfer  # the posterior lives in this transfer's tonemapped domain
        w, d = config.width, config.depth
        self.alignment = 2 ** d
        self.color_channels = 3
        self.aux_channels = config.in_channels - 3
        self.branch = HalfPlaneUNet(3, w, d)
        c = 4 * self.branch.out_channels + self.aux_channels
        self.combine = nn.ModuleList([nn.Conv2d(c, 4 * w, 1), nn.Conv2d(4 * w, 2 * w, 1), nn.Conv2d(2 * w, 12, 1)])
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)

    def gaussian(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: N x C x H x W features (tonemapped colour first). Everything returned is fp32."""
        color, aux = x[:, :3], x[:, 3:]
        views = []
        for k in range(4):
            rotated = torch.rot90(color, k, dims=(2, 3))
            views.append(torch.rot90(self.branch(rotated), -k, dims=(2, 3)))
        h = torch.cat(views + [aux], dim=1)
        for i, conv in enumerate(self.combine):
            h = conv(h)
            if i < len(self.combine) - 1:
                h = F.leaky_relu(h, LEAKY_SLOPE)
        h = h.float()
        mean = h[:, 0:3]
        # Colours live in [0, 1] after the transfer, so no (co)variance can exceed 1: bounding the
        # Cholesky factor keeps S_p + S_n well conditioned (unbounded, it grew until the
        # factorisation failed in float32 after ~2 minutes of live training).
        diag = F.softplus(h[:, 3:6]).clamp(max=1.0) + MIN_VARIANCE ** 0.5
        off = torch.tanh(h[:, 6:9])
        noise_var = F.softplus(h[:, 9:12]).clamp(max=1.0) + MIN_VARIANCE
        n, _, hh, ww = h.shape
        chol = torch.zeros(n, hh, ww, 3, 3, device=h.device)
        chol[..., 0, 0], chol[..., 1, 1], chol[..., 2, 2] = (diag[:, i] for i in range(3))
        chol[..., 1, 0], chol[..., 2, 0], chol[..., 2, 1] = (off[:, i] for i in range(3))
        prior_cov = chol @ chol.transpose(-1, -2)
        return {"mean": mean, "prior_cov": prior_cov, "noise_var": noise_var}

    def forward(self, x: torch.Tensor, color: torch.Tensor | None = None) -> torch.Tensor:
        """Linear HDR, so the network drops into the same inference chain: the posterior mean,
        or the prior mean alone when the net was trained without the likelihood."""
        g = self.gaussian(x)
        estimate = g["mean"] if self.config.output == "mean" else posterior_mean(g, x[:, :3].float())
        # A tonemapped estimate at 1.0 maps back to infinite radiance: cap it far above any real pixel.
        linear = get_transfer(self.transfer).inverse(estimate.clamp(0.0, 1.0))
        return torch.nan_to_num(linear, nan=0.0, posinf=MAX_RADIANCE).clamp(0.0, MAX_RADIANCE)


def _pixels_last(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 2, 3, 1).unsqueeze(-1)  # N x H x W x 3 x 1


def posterior_mean(g: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    mean, prior, noise = g["mean"], g["prior_cov"], g["noise_var"]
    total = prior + torch.diag_embed(noise.permute(0, 2, 3, 1))
    delta = torch.linalg.solve(total, _pixels_last(y - mean))
    post = _pixels_last(mean) + prior @ delta
    return post.squeeze(-1).permute(0, 3, 1, 2)


def gaussian_nll(g: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the noisy observation y under N(mu, S_p + S_n) (constants dropped)."""
    # float64 for the 3x3 algebra. A factorisation that still fails makes the loss NaN (without a
    # host sync), and the trainer skips and counts that step instead of dying.
    total = (g["prior_cov"] + torch.diag_embed(g["noise_var"].permute(0, 2, 3, 1))).double()
    chol, info = torch.linalg.cholesky_ex(total)
    r = _pixels_last(y.double() - g["mean"].double())
    z = torch.linalg.solve_triangular(chol, r, upper=False)
    mahalanobis = (z ** 2).sum(dim=(-2, -1))
    logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    failed = torch.where((info != 0).any(), float("nan"), 0.0)
    return (0.5 * (mahalanobis + logdet).mean() + failed).float()
