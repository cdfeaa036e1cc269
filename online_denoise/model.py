"""The Noise2Noise U-Net (Lehtinen et al. 2018, Table 2) with width and depth as parameters.

With ``width=48, depth=5`` this is the paper's network: two 3x3 convolutions
of 48 channels, then ``depth`` max-pools each followed by one more, decoder
stages of two 96-channel convolutions after nearest upsampling and a skip
concatenation, and a 64 -> 32 -> 3 head, all with leaky ReLU 0.1 and He
initialisation. The output is linear HDR.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from .arrays import dilate3

LEAKY_SLOPE = 0.1
OUTPUTS = ("direct", "kpn", "posterior", "mean")  # the last two are the blind-spot net's
ARCHS = ("unet", "blindspot")


@dataclass(frozen=True)
class ModelConfig:
    in_channels: int = 9  # tonemapped colour, albedo, normal
    width: int = 48  # encoder channels
    depth: int = 5  # number of max-pools; inputs are padded to a multiple of 2**depth
    decoder_width: int | None = None  # None: 2 * width, as in the paper
    head: tuple[int, int] | None = None  # None: (64, 32) scaled by width / 48
    output: str = "direct"  # unet: "direct" (the paper's 3 linear channels) or "kpn" (per-pixel kernels);
    #                         blindspot: "posterior" (Gaussian, trained by likelihood) or "mean" (prior mean only)
    kernel_size: int = 5  # side of the kpn kernel
    scales: int = 1  # kpn: filter at this many scales (full, 1/2, 1/4...) and composite them
    arch: str = "unet"  # "unet": the paper's network; "blindspot": Laine et al.'s (blindspot.py)
    demod_mix: bool = False  # kpn: also filter colour / albedo, mixed in per pixel by one more learnt logit

    def __post_init__(self):
        if self.width < 1 or self.depth < 1 or self.in_channels < 1:
            raise ValueError(f"invalid model config {self}")
        if self.arch not in ARCHS:
            raise ValueError(f"model arch {self.arch!r}: expected one of {ARCHS}")
        allowed = OUTPUTS[:2] if self.arch == "unet" else OUTPUTS[2:]
        if self.output not in allowed:
            raise ValueError(f"model output {self.output!r}: a {self.arch} net has one of {allowed}")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size {self.kernel_size}: expected an odd positive number")
        if not 1 <= self.scales <= self.depth:
            raise ValueError(f"scales {self.scales}: expected 1 to depth ({self.depth})")
        if self.scales > 1 and self.output != "kpn":
            raise ValueError("scales > 1 needs the kpn output")
        if self.demod_mix and self.output != "kpn":
            raise ValueError("demod_mix needs the kpn output")

    @property
    def out_channels(self) -> int:
        """Channels of the full-resolution head: colour, or kernel logits (plus a blend weight if multi-scale)."""
        if self.output == "direct":
            return 3
        return self.kernel_size ** 2 + (1 if self.scales > 1 else 0) + (1 if self.demod_mix else 0)

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


def build_model(config: ModelConfig, transfer: str = "paper") -> nn.Module:
    """The network a config describes; the transfer matters to the blind-spot net's posterior."""
    if config.arch == "blindspot":
        from .blindspot import BlindSpotNet

        return BlindSpotNet(config, transfer)
    return UNet(config)


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
        # Coarser kpn scales read the decoder's 1/2, 1/4... outputs: kernel logits, plus a blend
        # weight for every scale that has a coarser one below it.
        k2 = config.kernel_size ** 2
        self.scale_heads = nn.ModuleList(
            nn.Conv2d(dw, k2 + (1 if s < config.scales - 1 else 0), 3, padding=1) for s in range(1, config.scales))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        for head in (self.out, *self.scale_heads):
            nn.init.kaiming_normal_(head.weight, nonlinearity="linear")
        if self.config.demod_mix:
            init_mix_row(self.out.weight.data, self.out.bias.data)

    @staticmethod
    def _act(x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x, LEAKY_SLOPE)

    def forward(self, x: torch.Tensor, color: torch.Tensor | None = None,
                emitter: torch.Tensor | None = None, background: torch.Tensor | None = None,
                albedo: torch.Tensor | None = None, mix_gate: torch.Tensor | None = None) -> torch.Tensor:
        """Linear HDR N x 3 x H x W from features x, N x in_channels x H x W (multiples of ``alignment``).

        ``color`` is the noisy linear colour, N x 3 x H x W; the kpn head filters
        it, the direct head ignores it. ``emitter`` (N x 1 x H x W, 1 on pixels
        that see a bright emitter directly) and ``background`` (1 on pixels that
        hit nothing) keep those pixels out of the kpn kernels of the surfaces
        (``filter_around_emitters``).
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
        decoded = []  # decoder outputs from coarse to fine; the last ones feed the coarse kpn scales
        for stage in self.dec:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            x = torch.cat([x, skips.pop()], dim=1)
            x = act(stage[1](act(stage[0](x))))
            decoded.append(x)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        # Under autocast x is bf16 while the input skip is fp32: concatenated as they are, the 41 channels
        # became fp32, the next convolution cast them back, and backward converted their gradient twice.
        x = torch.cat([x, skips.pop().to(x.dtype)], dim=1)
        x = act(self.dec1[1](act(self.dec1[0](x))))
        x = self.out(x)
        if self.config.output == "direct":
            return x
        # Under autocast the logits arrive in bf16/fp16; softmax and filtering run in fp32.
        k = self.config.kernel_size
        mix = None
        if self.config.demod_mix:
            x, mix = x[:, :-1], x[:, -1:]
            # Without an albedo there is nothing to demodulate by, and without the gate nothing says where a
            # pixel's colour is albedo times irradiance: its logit learnt only on diffuse shapes, and on a metal
            # it is untrained. Both leave the plain filtering.
            if albedo is None or mix_gate is None:
                mix = None
        heads = [_logits(x)] + [_logits(head(decoded[-s])) for s, head in enumerate(self.scale_heads, start=1)]

        def kernels(images: torch.Tensor) -> torch.Tensor:
            return apply_kernels(images, heads[0], k) if len(heads) == 1 else composite_scales(images, heads, k)

        color = color.float()
        if mix is not None:
            color = torch.cat([color, color / albedo], dim=1)
        if emitter is None and background is None:
            out = kernels(color)
        else:
            out = filter_around_emitters(kernels, color, None if emitter is None else emitter.float(),
                                         None if background is None else background.float())
        if mix is None:
            return out
        weight = torch.sigmoid(mix.float()) * mix_gate.float()
        return torch.lerp(out[:, :3], out[:, 3:] * albedo, weight)


MIX_BIAS = -3.0


def init_mix_row(weight: torch.Tensor, bias: torch.Tensor) -> None:
    weight[-1].zero_()
    bias[-1] = MIX_BIAS


def _logits(x: torch.Tensor) -> torch.Tensor:
    """Kernel logits in fp32; in inference under autocast, also in NCHW for the softmax over channels.

    A softmax over the channels of a channels_last tensor is slow on the CPU: the width-16 network's
    inference at 256^2 (bf16) took 17.4 ms at best with it, 14.8 with the one copy to fp32 NCHW first.
    In training that copy made the step slower (bf16 46.4 -> 47.9 ms, fp32 77.3 -> 87.8), the gradient
    coming back in NCHW to a channels_last convolution, and in fp32 inference it bought nothing.
    """
    if x.dtype != torch.float32 and not torch.is_grad_enabled():
        return x.to(torch.float32, memory_format=torch.contiguous_format)
    return x.float()


def apply_kernels(color: torch.Tensor, logits: torch.Tensor, k: int) -> torch.Tensor:
    """Filter ``color`` with a k x k kernel per pixel, the softmax of ``logits`` (N x k^2 x H x W).

    Softmax weights are positive and sum to one, so the output is a convex
    combination of noisy neighbours: it cannot go negative, cannot create
    energy, and starts out as a box-ish blur instead of random values.
    """
    r = k // 2
    padded = F.pad(color, (r, r, r, r), mode="replicate")
    return _ShiftedFilter.apply(padded, logits.softmax(dim=1), k)


class _ShiftedFilter(torch.autograd.Function):
    """One shifted multiply-add per tap, with a backward pass written for it.

    Unfolding the k^2 neighbourhoods into a tensor took 6.6x longer at 256^2
    (37 against 5.7 ms for 2 images). Left to autograd, the shifted loop
    kept every product for backward and sliced the weights tap by tap, and
    each slice's backward zero-filled a gradient the size of all k^2 taps:
    on 6 crops of 96^2 with 7 channels, forward and backward took 17 ms,
    and 8 ms as written here.
    """

    @staticmethod
    def forward(ctx, padded: torch.Tensor, weights: torch.Tensor, k: int) -> torch.Tensor:
        h, w = weights.shape[-2:]
        out = padded.new_zeros(padded.shape[0], padded.shape[1], h, w)
        for t in range(k * k):
            dy, dx = divmod(t, k)
            out.addcmul_(padded[:, :, dy:dy + h, dx:dx + w], weights[:, t:t + 1])
        ctx.save_for_backward(padded, weights)
        ctx.k = k
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        padded, weights = ctx.saved_tensors
        k = ctx.k
        h, w = weights.shape[-2:]
        grad_padded = grad_weights = None
        if ctx.needs_input_grad[1]:
            # Channel by channel over all k^2 taps at once, through a strided view of the padded colour as
            # N x k x k x H x W: a product and a sum per tap made 2 k^2 passes over the colour's size and
            # a temporary each (8 crops of 96^2, 7 channels: 4.0 -> 1.65 ms).
            grad_weights = torch.zeros_like(weights, memory_format=torch.contiguous_format)
            taps = grad_weights.view(weights.shape[0], k, k, h, w)
            padded = padded.contiguous()
            s_n, s_c, s_y, s_x = padded.stride()
            for c in range(padded.shape[1]):
                window = padded.as_strided((padded.shape[0], k, k, h, w), (s_n, s_y, s_x, s_y, s_x),
                                           padded.storage_offset() + c * s_c)
                taps.addcmul_(window, grad[:, c:c + 1].unsqueeze(1))
        if ctx.needs_input_grad[0]:
            grad_padded = torch.zeros_like(padded)
            for t in range(k * k):
                dy, dx = divmod(t, k)
                grad_padded[:, :, dy:dy + h, dx:dx + w].addcmul_(grad, weights[:, t:t + 1])
        return grad_padded, grad_weights, None


def _down(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


def _up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def composite_scales(color: torch.Tensor, heads: list[torch.Tensor], k: int) -> torch.Tensor:
    """Multi-scale kernel prediction with Vogels et al.'s (2018) scale compositor.

    heads[s] holds k^2 kernel logits for the colour box-downsampled s times,
    plus, for every scale but the coarsest, one blend-weight logit a. From the
    coarsest up:  out_s = f_s - a * U(D(f_s)) + a * U(out_{s+1}),  i.e. the
    low frequencies of the fine filtering are swapped for the coarser result,
    so that wide flat regions get wide filters while edges keep fine ones.
    Every f_s is a convex combination of noisy pixels and the blend preserves
    the weights' sum of one, so the output stays an energy-conserving
    (affine) combination of the input.
    """
    colors = [color]
    for _ in heads[1:]:
        colors.append(_down(colors[-1]))
    out = apply_kernels(colors[-1], heads[-1][:, : k * k], k)
    for s in range(len(heads) - 2, -1, -1):
        # One split, not two slices: each slice's backward zero-filled a gradient of all the head's
        # channels and copied its part in (8 crops of 96^2: 2 x 26 channels, about 4 ms a step).
        logits, blend = heads[s].split([k * k, heads[s].shape[1] - k * k], dim=1)
        f = apply_kernels(colors[s], logits, k)
        a = torch.sigmoid(blend)
        out = f + a * _up(out - _down(f))  # U is linear: one upsampling instead of two
    return out


MIN_SURFACE_WEIGHT = 0.05  # below this share of surface taps, a surface pixel keeps its own colour


def filter_around_emitters(kernels, color: torch.Tensor, emitter: torch.Tensor | None,
                           background: torch.Tensor | None = None) -> torch.Tensor:
    """Filter ``color`` so that no surface pixel gathers from a bright emitter or from the background.

    A directly seen light is 20-100x brighter than the surface beside it, so
    any kernel weight on it lights up a halo, and the HDR loss, whose
    denominator is the prediction, charges too bright much less than too dark.
    Where the camera sees past the scene (the black outside an open Cornell
    box, a sky through a window) the kernels smeared the walls into the black,
    and the black into the walls. The kernels are linear in what they filter,
    so one pass over [colour * surface, surface] gives a normalised
    convolution over surface pixels only, K(c s) / K(s); with lights in view,
    a third part, colour off the surfaces, also gives their plain K(c).
    Surface pixels take the first (their own colour if nearly all their
    weight sat off the surfaces), lights keep the plain filtering, and the
    background keeps its own colour: it is what the environment looks like,
    without noise.

    The one-pixel ring of surface around a light is filtered like any surface
    but feeds no surface's kernel: the aux pass's few samples decide the
    mask, so a colour sample in the ring may still have hit the light, and
    such a pixel, gathered by its neighbours, made a tinted halo of every
    fairy-lights bulb (25.91 -> 27.88 dB there once it no longer was).
    """
    direct = [m for m in (emitter, background) if m is not None]
    surface = 1.0 - (direct[0] if len(direct) == 1 else torch.maximum(*direct))
    source = surface
    if emitter is not None:
        source = surface * (1.0 - dilate3(emitter))
    c = color.shape[1]
    parts = [color * source, source] + ([color * (1.0 - source)] if emitter is not None else [])
    out = kernels(torch.cat(parts, dim=1))
    on_surfaces, weight = out[:, 0:c], out[:, c:c + 1]
    masked = on_surfaces / weight.clamp_min(MIN_SURFACE_WEIGHT)
    result = torch.where((surface > 0.5) & (weight > MIN_SURFACE_WEIGHT), masked, color)
    if emitter is not None:
        result = torch.where(emitter > 0.5, on_surfaces + out[:, c + 1:2 * c + 1], result)
    if background is not None and emitter is not None:
        result = torch.where(background > 0.5, color, result)  # a sun in the sky is background too
    return result


def light_ring(emitter: torch.Tensor) -> torch.Tensor:
    """1 on the pixels beside a directly seen light (``filter_around_emitters``'s ring), else 0."""
    return dilate3(emitter) * (1.0 - emitter)


def widen_inputs(state_dict: dict, config: ModelConfig, new_channels: list[int], in_channels: int) -> dict:
    """A U-Net's weights for an input of ``in_channels``, the channels at ``new_channels`` (in the new input's
    order) added with zero weights, and the old ones, in their order, at the remaining places.

    The input enters two convolutions, the first one and, as the last skip, the full-resolution decoder's
    (after the upsampled decoder channels). With zeros there, the widened network computes exactly what
    the old one did, whatever the new channels hold, and training then learns how much to use them.
    """
    if config.arch != "unet":
        raise ValueError(f"only the unet's inputs can be widened, not a {config.arch} net's")
    new = set(new_channels)
    old = [c for c in range(in_channels) if c not in new]
    if len(old) != config.in_channels or not all(0 <= c < in_channels for c in new):
        raise ValueError(f"{config.in_channels} input channels plus {len(new)} new ones "
                         f"do not make {in_channels}")
    out = dict(state_dict)
    for key, offset in (("enc_conv0.weight", 0), ("dec1.0.weight", state_dict["dec1.0.weight"].shape[1] - len(old))):
        w = state_dict[key]
        wide = w.new_zeros(w.shape[0], offset + in_channels, *w.shape[2:])
        wide[:, :offset] = w[:, :offset]
        wide[:, [offset + c for c in old]] = w[:, offset:]
        out[key] = wide
    return out


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
