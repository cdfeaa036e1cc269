"""The Noise2Noise U-Net (Lehtinen et al. 2018, Table 2) with width and depth as parameters.

With ``width=48, depth=5`` this is the paper's network: two 3x3 convolutions
of 48 channels, then ``depth`` max-pools each followed by one more, decoder
stages of two 96-channel convolutions after nearest upsampling and a skip
concatenation, and a 64 -> 32 -> 3 head, all with leaky ReLU 0.1 and He
initialisation. The output is linear HDR.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn.functional as F
from torch import nn

LEAKY_SLOPE = 0.1
OUTPUTS = ("direct", "kpn")


@dataclass(frozen=True)
class ModelConfig:
    in_channels: int = 9  # tonemapped colour, albedo, normal
    width: int = 48  # encoder channels
    depth: int = 5  # number of max-pools; inputs are padded to a multiple of 2**depth
    decoder_width: int | None = None  # None: 2 * width, as in the paper
    head: tuple[int, int] | None = None  # None: (64, 32) scaled by width / 48
    output: str = "direct"  # "direct": the paper's 3 linear channels; "kpn": per-pixel filter kernels
    kernel_size: int = 5  # side of the kpn kernel

    def __post_init__(self):
        if self.width < 1 or self.depth < 1 or self.in_channels < 1:
            raise ValueError(f"invalid model config {self}")
        if self.output not in OUTPUTS:
            raise ValueError(f"model output {self.output!r}: expected one of {OUTPUTS}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size {self.kernel_size}: expected an odd positive number")

    @property
    def out_channels(self) -> int:
        return 3 if self.output == "direct" else self.kernel_size ** 2

    @property
    def decoder_channels(self) -> int:
        return self.decoder_width or 2 * self.width

    @property
    def head_channels(self) -> tuple[int, int]:
        if self.head is not None:
            return tuple(self.head)
        return max(4, round(64 * self.width / 48)), max(4, round(32 * self.width / 48))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["head"] = list(self.head) if self.head is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config keys: {sorted(unknown)}")
        d = dict(d)
        if d.get("head") is not None:
            d["head"] = tuple(d["head"])
        return cls(**d)


def _conv(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1)


class UNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        w, dw, d = config.width, config.decoder_channels, config.depth
        h1, h2 = config.head_channels
        self.alignment = 2 ** d

        self.enc_conv0 = _conv(config.in_channels, w)
        # enc[0] is ENC_CONV1 at full resolution; enc[i] (i >= 1) follows pool i,
        # and the last one is the bottleneck, ENC_CONV6 in the paper.
        self.enc = nn.ModuleList([_conv(w, w) for _ in range(d + 1)])
        # dec[i] serves the stage that upsamples to pool level d-1-i and concatenates its skip.
        self.dec = nn.ModuleList()
        for i in range(d - 1):
            cin = (w if i == 0 else dw) + w
            self.dec.append(nn.ModuleList([_conv(cin, dw), _conv(dw, dw)]))
        cin = (w if d == 1 else dw) + config.in_channels
        self.dec1 = nn.ModuleList([_conv(cin, h1), _conv(h1, h2)])
        self.out = nn.Conv2d(h2, config.out_channels, 3, padding=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        nn.init.kaiming_normal_(self.out.weight, nonlinearity="linear")

    @staticmethod
    def _act(x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, LEAKY_SLOPE)

    def forward(self, x: torch.Tensor, color: torch.Tensor | None = None) -> torch.Tensor:
        """Linear HDR N x 3 x H x W from features x, N x in_channels x H x W (multiples of ``alignment``).

        ``color`` is the noisy linear colour, N x 3 x H x W; the kpn head filters
        it, the direct head ignores it.
        """
        act = self._act
        skips = [x]  # input
        x = act(self.enc_conv0(x))
        x = act(self.enc[0](x))
        for i in range(1, self.config.depth + 1):
            x = F.max_pool2d(x, 2)
            if i < self.config.depth:
                skips.append(x)  # pool i: the paper skips the pooled tensor, before the next conv
            x = act(self.enc[i](x))  # the last one is the bottleneck
        for stage in self.dec:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = torch.cat([x, skips.pop()], dim=1)
            x = act(stage[1](act(stage[0](x))))
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        x = torch.cat([x, skips.pop()], dim=1)
        x = act(self.dec1[1](act(self.dec1[0](x))))
        x = self.out(x)
        if self.config.output == "kpn":
            return apply_kernels(color, x, self.config.kernel_size)
        return x


def apply_kernels(color: torch.Tensor, logits: torch.Tensor, k: int) -> torch.Tensor:
    """Filter ``color`` with a k x k kernel per pixel, the softmax of ``logits`` (N x k^2 x H x W).

    Softmax weights are positive and sum to one, so the output is a convex
    combination of noisy neighbours: it cannot go negative, cannot create
    energy, and starts out as a box-ish blur instead of random values.
    """
    n, c, h, w = color.shape
    r = k // 2
    weights = logits.softmax(dim=1)
    padded = F.pad(color, (r, r, r, r), mode="replicate")
    patches = F.unfold(padded, k).view(n, c, k * k, h, w)
    return torch.einsum("nckhw,nkhw->nchw", patches, weights)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
