"""The one inference chain, the Denoiser that runs it, and checkpoints.

Chain: exposure -> features (transfer, clamps) -> pad to the network's
alignment -> network -> unpad -> undo exposure. Training runs the same
``run_network`` on crops; the viewer, the headless run, the batch command and
the benchmark all go through ``Denoiser``.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .arrays import pad_to, to_chw, to_hwc_numpy
from .blend import InputBlend, blend_mask, blend_towards_input
from .color import autoexposure
from .errors import UserError
from .features import (FeatureSpec, added_channels, background_mask, build_input, diffuse_mask, emitter_mask, finite,
                       mean_frames, shape_mask, suppress_fireflies)
from .files import atomic_write
from .model import ModelConfig, build_model, init_mix_row, widen_inputs
from .precision import Precision

CHECKPOINT_FORMAT = "online_denoise.checkpoint"
CHECKPOINT_VERSION = 1


# How a frame's two renders become one image: each denoised and the results averaged, or their mean
# denoised once (Denoiser.denoise_pair).
PAIR_MODES = ("both", "mean")
EACH_RENDER = ("", "a", "b", "ab")  # which renders denoise_pair also denoises on their own in "mean" mode


class CheckpointError(UserError):
    pass


def select_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: this torch build sees no CUDA device")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"--device {name}: expected auto, cpu or cuda[:N]") from None


def prepare_input(model: torch.nn.Module, spec: FeatureSpec, color: torch.Tensor, albedo: torch.Tensor | None,
                  normal: torch.Tensor | None, exposure: torch.Tensor | float = 1.0,
                  precision: Precision = Precision(), frames: torch.Tensor | None = None,
                  keep: torch.Tensor | None = None,
                  specular: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
    """Features and colour, padded to the network's alignment, plus the unpadded size.

    The colour has its fireflies suppressed (``spec.firefly``) before both
    the features and the kernels see it; ``keep`` (N x 1 x H x W) marks the
    pixels exempt from that: lights and background.
    """
    color = finite(color) * exposure
    if spec.firefly:
        color = suppress_fireflies(color, spec.firefly, keep)
    x = build_input(spec, color, albedo, normal, frames, specular)
    x, size = pad_to(x, model.alignment)
    c, _ = pad_to(color, model.alignment)
    if precision.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, c, size


def run_network(model: torch.nn.Module, spec: FeatureSpec, color: torch.Tensor,
                albedo: torch.Tensor | None, normal: torch.Tensor | None,
                exposure: torch.Tensor | float = 1.0, precision: Precision = Precision(),
                emitter: torch.Tensor | None = None, frames: torch.Tensor | None = None,
                has_background: bool | None = None, specular: torch.Tensor | None = None,
                diffuse: torch.Tensor | None = None) -> torch.Tensor:
    """Linear HDR prediction, N x 3 x H x W (fp32), for N x 3 x H x W inputs of any size.

    ``frames`` (N x 1 x H x W) counts the frames each pixel of ``color``
    averages under temporal reuse; None: one (``features.noise_level``).

    ``emitter`` (N x 1 x H x W, from ``features.emitter_mask``) marks the
    directly seen emitters that the kernels of other pixels must not gather.
    The kernel head also keeps the pixels whose normal says they hit nothing
    (``features.background_mask``) apart, in training and inference alike.
    Both kinds are spared the firefly clamp. ``has_background`` says whether
    any pixel does, when the caller knows: looking costs a wait for the GPU,
    which a CUDA graph being recorded cannot make (None: look).

    ``diffuse`` (N x 1 x H x W, from ``features.diffuse_mask``) limits a
    ``demod_mix`` network's albedo-demodulated filtering to diffuse shapes;
    None: no pixel is known to be diffuse, and only the plain filtering runs.
    """
    background = None
    if normal is not None:
        background = background_mask(normal)
        if has_background is None:
            has_background = bool(background.any())
        if not has_background:  # most frames and crops see no background: the plain filter is cheaper
            background = None
    direct = [m for m in (emitter, background) if m is not None]
    keep = None if not direct else direct[0] if len(direct) == 1 else torch.maximum(*direct)
    x, c, (h, w) = prepare_input(model, spec, color, albedo, normal, exposure, precision, frames, keep, specular)
    kpn = getattr(model, "config", None) is not None and model.config.output == "kpn"
    masks = {}
    if emitter is not None:
        masks["emitter"] = pad_to(emitter, model.alignment)[0]
    if background is not None and kpn:
        masks["background"] = pad_to(background, model.alignment)[0]
    # Demodulated, the kernels filter irradiance, which is smooth across texture; the albedo, from the
    # aux pass's own samples, puts the texture back (fine-texture, 120 s: +3.25 dB; see docs/measurements.md).
    demodulated = kpn and bool(spec.demodulate) and albedo is not None
    if demodulated:
        a = finite(albedo).clamp(spec.demodulate, 1.0)
        if keep is not None:
            # Lights and the background stay as they are: a light's albedo is 0, and divided by the floor it
            # came back multiplied by its rim's albedo, 50x too bright, in every pixel that gathered it.
            a = torch.where(keep > 0.5, torch.ones_like(a), a)
        a = pad_to(a, model.alignment)[0]
        c = c / a
    elif kpn and model.config.demod_mix:
        a = finite(albedo).clamp(DEMOD_MIX_FLOOR, 1.0)
        if keep is not None:
            a = torch.where(keep > 0.5, torch.ones_like(a), a)
        masks["albedo"] = pad_to(a, model.alignment)[0]
        if diffuse is not None:
            masks["mix_gate"] = pad_to(diffuse, model.alignment)[0]
    with precision.autocast(x.device):
        y = model(x, c, **masks)
    y = y.float()
    if demodulated:
        y = y * a
    return y[..., :h, :w] / exposure


DEMOD_MIX_FLOOR = 0.05


def frame_exposure(spec: FeatureSpec, color) -> float:
    return autoexposure(color) if spec.exposure == "auto" else 1.0


class Denoiser:
    """A network plus its feature spec, with the weights swapped in as training publishes them."""

    def __init__(self, model_config: ModelConfig, spec: FeatureSpec, device: torch.device | str = "cpu",
                 precision: Precision = Precision()):
        if model_config.in_channels != spec.channels:
            raise CheckpointError(
                f"model expects {model_config.in_channels} input channels but {spec.describe()} has {spec.channels}")
        self.model_config = model_config
        self.spec = spec
        self.device = torch.device(device)
        self.precision = precision
        self.model = precision.prepare(build_model(model_config, spec.transfer).to(self.device).eval(), "infer")
        self.version = -1  # weight version last loaded; -1: initial weights

    def load_weights(self, state_dict: dict, version: int) -> None:
        self.model.load_state_dict(state_dict)
        self.version = version

    @torch.inference_mode()
    def denoise_batch(self, color: torch.Tensor, albedo: torch.Tensor | None, normal: torch.Tensor | None,
                      exposure: float = 1.0, emitter: torch.Tensor | None = None,
                      frames: torch.Tensor | None = None, specular: torch.Tensor | None = None,
                      diffuse: torch.Tensor | None = None) -> torch.Tensor:
        y = run_network(self.model, self.spec, color.to(self.device), _opt(albedo, self.device),
                        _opt(normal, self.device), exposure, self.precision, _opt(emitter, self.device),
                        _opt(frames, self.device), specular=_opt(specular, self.device),
                        diffuse=_opt(diffuse, self.device))
        return y.clamp_min(0.0)

    def denoise(self, color, albedo=None, normal=None, emission=None) -> torch.Tensor:
        """Denoise one H x W x 3 image; returns 1 x 3 x H x W linear HDR on the device.

        ``emission`` (H x W x 3, the directly seen emitters; optional) keeps
        lights from bleeding into the surfaces around them.
        """
        dev = self.device
        return self.denoise_batch(to_chw(color, dev), _opt_chw(albedo, dev), _opt_chw(normal, dev),
                                  frame_exposure(self.spec, color), _emitter(emission, dev))

    @torch.inference_mode()
    def denoise_tiled(self, color, albedo=None, normal=None, tile: int = 512, overlap: int = 96, emission=None):
        """Denoise an H x W x 3 numpy image tile by tile; returns H x W x 3 float32 numpy.

        ``emission`` is optional, as in ``denoise``.

        Each output tile is computed from the tile plus ``overlap`` pixels of
        context on every side, with tile origins on the network's pooling grid,
        so the result matches a single pass over the whole image (a test bounds
        the difference) while memory stays bounded by the tile size.
        """
        a = self.model.alignment
        tile = max(a, tile // a * a)
        overlap = -(-overlap // a) * a
        h, w = color.shape[:2]
        exposure = frame_exposure(self.spec, color)  # one exposure for the whole frame, not per tile
        out = np.empty((h, w, 3), np.float32)
        dev = self.device
        for y0 in range(0, h, tile):
            for x0 in range(0, w, tile):
                y1, x1 = min(y0 + tile, h), min(x0 + tile, w)
                cy0, cx0 = max(0, y0 - overlap), max(0, x0 - overlap)
                cy1, cx1 = min(h, y1 + overlap), min(w, x1 + overlap)
                window = (slice(cy0, cy1), slice(cx0, cx1))
                y = self.denoise_batch(to_chw(color[window], dev), _opt_chw(_crop(albedo, window), dev),
                                       _opt_chw(_crop(normal, window), dev), exposure,
                                       _emitter(_crop(emission, window), dev))
                out[y0:y1, x0:x1] = to_hwc_numpy(y[..., y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0])
        return out

    def denoise_pair(self, frame, pair: str = "both", each: str = "", blend: InputBlend | None = None) -> "PairResult":
        """The displayed image of a frame (a single-render frame: that render, denoised).

        pair="both" denoises the two renders in one batch and averages the
        results; they also feed the reference-free error estimate. pair="mean"
        denoises the average of the two renders, once: half the inference, and
        on the Cornell box the same PSNR within 0.12 dB at four poses, from random
        weights and from the prior, because each render's kernels filter a
        2-spp image about as the mean's kernels filter the 4-spp average.
        ``each`` ("a", "b" or "ab") also denoises those renders on their own,
        in the same batch, for the error estimate; the displayed image stays
        the mean's. With ``blend``, the displayed image of metal pixels is then
        pulled back towards the renders' mean where that is the better
        estimate (``blend.py``); the renders denoised on their own are not.
        """
        if pair not in PAIR_MODES:
            raise ValueError(f"pair mode {pair!r}: expected one of {PAIR_MODES}")
        if each not in EACH_RENDER:
            raise ValueError(f"each {each!r}: expected one of {EACH_RENDER}")
        dev = self.device
        colors = [to_chw(frame.color_a, dev)]
        if frame.color_b is not None:
            colors.append(to_chw(frame.color_b, dev))
        single = len(colors) == 1
        mean = not single and pair == "mean"
        frames = _frames(frame, dev, len(colors))
        pair_colors, pair_frames = colors, frames  # the two renders themselves, which the display blend reads
        if mean:
            chosen = [i for i, side in enumerate("ab") if side in each]
            colors = [(colors[0] + colors[1]) / 2] + [colors[i] for i in chosen]
            if frames is not None:
                frames = [mean_frames(*frames)] + [frames[i] for i in chosen]
        color = torch.cat(colors)
        albedo, normal = _opt_chw(frame.albedo, dev), _opt_chw(frame.normal, dev)
        emitter = _emitter(getattr(frame, "emission", None), dev)
        specular = _opt_chw(getattr(frame, "specular", None), dev)
        surface = _opt_chw(getattr(frame, "surface", None), dev)
        diffuse = None if surface is None else diffuse_mask(surface, getattr(frame, "lobes", None))
        n = color.shape[0]
        out = self.denoise_batch(color, _expand(albedo, n), _expand(normal, n),
                                 frame_exposure(self.spec, frame.color_a), _expand(emitter, n),
                                 None if frames is None else torch.cat(frames), _expand(specular, n),
                                 _expand(diffuse, n))
        if single:
            return PairResult(out, out, None, self.version)
        mirrors = getattr(frame, "mirrors", None)
        metal = None
        if blend is not None and surface is not None and mirrors is not None and any(mirrors):
            metal = blend_mask(shape_mask(surface, mirrors), pair_frames, blend)
        shown = lambda x: x if metal is None else blend_towards_input(x, pair_colors[0], pair_colors[1], metal, blend)
        if mean:
            each_out = dict(zip([side for side in "ab" if side in each], out[1:].split(1)))
            return PairResult(shown(out[0:1]), each_out.get("a"), each_out.get("b"), self.version)
        return PairResult(shown(out.mean(dim=0, keepdim=True)), out[0:1], out[1:2], self.version)


@dataclass
class PairResult:
    denoised: torch.Tensor  # 1 x 3 x H x W, what is displayed
    denoised_a: torch.Tensor | None  # each render denoised on its own; None where only their mean was
    denoised_b: torch.Tensor | None  # None also for a single-render frame
    version: int  # weight version that produced it


def _opt(x, device):
    return None if x is None else x.to(device)


def _opt_chw(x, device):
    return None if x is None else to_chw(x, device)


def _emitter(emission, device):
    """The emitter mask, or None when no pixel sees an emitter (the network then filters plainly, faster)."""
    if emission is None:
        return None
    mask = emitter_mask(to_chw(emission, device))
    return mask if bool(mask.any()) else None


def _frames(frame, device, renders: int) -> list[torch.Tensor] | None:
    """Each render's frames-averaged map (temporal reuse), or None for plain renders."""
    maps = [getattr(frame, "frames_a", None), getattr(frame, "frames_b", None)][:renders]
    if any(m is None for m in maps):
        return None
    return [to_chw(m, device) for m in maps]


def _crop(x, window):
    return None if x is None else x[window]


def _expand(x, n):
    return None if x is None else x.expand(n, -1, -1, -1)


# -- checkpoints --------------------------------------------------------------

@dataclass
class Checkpoint:
    model_config: ModelConfig
    spec: FeatureSpec
    state_dict: dict
    meta: dict = field(default_factory=dict)

    def denoiser(self, device: torch.device | str = "cpu", precision: Precision = Precision()) -> Denoiser:
        d = Denoiser(self.model_config, self.spec, device, precision)
        d.load_weights(self.state_dict, int(self.meta.get("weight_version", 0)))
        return d

    def widened(self, spec: FeatureSpec) -> "Checkpoint | None":
        """These weights for a network that also reads the features ``spec`` adds, with zero weights on them,
        so it starts out computing exactly what this one does; None where ``spec`` is not this checkpoint's
        features plus others (``features.added_channels``) or the network's input cannot be widened."""
        added = added_channels(self.spec, spec)
        if added is None or self.model_config.arch != "unet":
            return None
        config = replace(self.model_config, in_channels=spec.channels)
        state = widen_inputs(self.state_dict, self.model_config, added, spec.channels)
        return Checkpoint(config, spec, state, dict(self.meta))


    def with_demod_mix(self) -> "Checkpoint":
        if self.model_config.demod_mix or self.model_config.output != "kpn":
            return self
        state = dict(self.state_dict)
        w, b = state["out.weight"], state["out.bias"]
        w = torch.cat([w, w.new_zeros(1, *w.shape[1:])])
        b = torch.cat([b, b.new_zeros(1)])
        init_mix_row(w, b)
        state["out.weight"], state["out.bias"] = w, b
        return Checkpoint(replace(self.model_config, demod_mix=True), self.spec, state, dict(self.meta))


def save_checkpoint(path: str | Path, model: torch.nn.Module, model_config: ModelConfig,
                    spec: FeatureSpec, meta: dict | None = None) -> Path:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    from . import __version__

    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "model_config": model_config.to_dict(),
        "features": spec.to_dict(),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "meta": {"created": datetime.datetime.now().isoformat(timespec="seconds"),
                 "online_denoise_version": __version__, **(meta or {})},
    }
    return atomic_write(path, lambda f: torch.save(payload, f))


def load_checkpoint(path: str | Path, expect: FeatureSpec | None = None) -> Checkpoint:
    """Load with ``weights_only=True``; refuse files that are not ours or were trained on other features."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle with code in it, plain garbage...
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable online_denoise checkpoint ({reason[:160]})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not an online_denoise checkpoint (no '{CHECKPOINT_FORMAT}' header)")
    if data.get("format_version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {data.get('format_version')} is not supported "
                              f"(this version reads {CHECKPOINT_VERSION})")
    try:
        spec = FeatureSpec.from_dict(data["features"])
        config = ModelConfig.from_dict(data["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: damaged checkpoint header ({e})") from None
    if expect is not None and (spec.features, spec.transfer) != (expect.features, expect.transfer):
        raise CheckpointError(
            f"{path}: trained on {spec.describe()}, but this run uses {expect.describe()}; "
            f"use a checkpoint trained on the same features or drop --checkpoint")
    ckpt = Checkpoint(config, spec, data["state_dict"], data.get("meta", {}))
    try:
        build_model(config, spec.transfer).load_state_dict(ckpt.state_dict)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the model config it declares ({str(e)[:160]})") from None
    return ckpt
