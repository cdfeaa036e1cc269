"""Presets and the flags every subcommand shares, resolved into explicit dataclasses.

A preset is a whole recipe: network, training schedule and samples per pixel.
Flags given on the command line override single fields of it; whatever was
resolved is written next to each run (run.json), so a result always says how
it was made.
"""

from __future__ import annotations

import argparse
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .blend import InputBlend
from .denoiser import PAIR_MODES
from .errors import UserError
from .features import FEATURE_CHANNELS, FIREFLY_RATIO, FeatureSpec
from .model import ModelConfig
from .precision import Precision, choose_precision
from .session import SessionConfig
from .temporal import TemporalConfig
from .trainer import TrainConfig


PRIORS_DIR = Path(__file__).resolve().parent / "priors"
# Gradient spikes over 4x the recent median are scaled down (Trainer._tame_spike). Cornell-box from the
# prior, 120 s, frames 100-500: +0.16 dB with 2-spp albedo and normal, +0.29 with 8 spp, and with 16 spp
# the frames after the light came into view went from 30.2-38.0 dB back to 36.9-41.7.
SPIKE_RATIO = 4.0
# The hdr loss brings a target over 64x its prediction down to that bound (loss.hdr_loss). glossy-metals,
# 120 s from scratch, same frames 100-400, two runs each way: +0.19 to +0.34 dB, FLIP 0.084 -> 0.082, and
# steps with a loss over 10x the median 25-26 a run -> 0; sunlit-room +0.32 dB, FLIP better at all three.
TARGET_CLIP = 64.0
# Every training crop centred where the two renders differ most (ring.py). 401 frames from the prior,
# --rr-depth 0, frames 100-400 against runs without, two paths of seeds: glossy-metals +0.32 and +0.20 dB
# (7 of 8 frames better, FLIP better at 6), sunlit-room -0.08 and +0.01, cornell-box +0.11. Its noise map
# costs about 2 ms a frame.
CROP_FOCUS = 1.0
# Glossy-metals, 401 frames from the prior, --rr-depth 0, same frames 100-400: following the metals' reflections
# with up to 8 frames +0.54 to +1.20 dB, FLIP better at all four; up to 16 no better (docs/measurements.md).
REFLECT_HISTORY = 8
# Glossy-metals, 401 frames from the prior, --rr-depth 0, same frames 100-400: 6 more samples of each pixel whose
# history restarted +0.18 to +0.79 dB, FLIP better at all four (docs/measurements.md).
TOPUP_SPP = 6
MAX_TOPUP_SPP = 64  # as a colour pass's; more is better spent on the renders themselves


@dataclass(frozen=True)
class Preset:
    name: str
    summary: str
    model: ModelConfig
    train: TrainConfig
    spp: int  # per render of a pair
    prior: str | None = None  # weights live training starts from (priors/), made by scripts/train_prior.sh
    pair: str = "both"  # denoiser.PAIR_MODES: how the displayed image is made from the two renders
    history: int = 1  # temporal reuse: frames in each render's reprojected running mean; 1: none
    rr_depth: int | None = None  # live renders may play Russian roulette from this path depth; None: the scene's
    # The frame time the preset aims at: a loop slower than this after warm-up sheds work in steps, the early
    # Russian roulette above among them (each window of frames is judged; session.py). None: early roulette
    # is on from the start.
    frame_budget_ms: float | None = None
    budget_batch: int | None = None  # crops per training step once the loop is over that budget; None: the same
    aux_spp: int | None = None  # samples per pixel of the albedo/normal pass; None: the renders' spp
    budget_aux_spp: int | None = None  # ... once the loop is over its frame budget; None: the same
    reflect_history: int = 0  # temporal reuse follows metals' reflections, up to this many frames; 0: off
    metal_blend: bool = False  # metals' displayed colour pulled back towards the reused input where it is better
    topup_spp: int = 0  # more samples of each pixel whose history restarted (temporal.py); 0: none


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset("cpu", "2-core CPU: width-16 U-Net, 4-scale 5x5 kernel-predicting head, 1 step of 8 crops per frame "
                  "taken inline, demodulated filtering mixed in on diffuse shapes, 2 spp per render reused over up to 16 frames "
                  "(metals following their reflections, up to 8; a restarted pixel gets 6 more samples), "
                  "albedo and normal at 16 spp "
                  "(over 250 ms a frame after warm-up: 8, then early roulette and 6 crops), starting from the "
                  "shipped prior; "
                  "the mean of the two renders is denoised once (metals' display pulled back towards it where better)",
           ModelConfig(width=16, depth=5, output="kpn", kernel_size=5, scales=4, demod_mix=True),
           TrainConfig(lr=1e-3, batch=8, crop=96, steps_per_frame=1, schedule="inline", spike_ratio=SPIKE_RATIO,
                       target_clip=TARGET_CLIP, crop_focus=CROP_FOCUS),
           spp=2, prior="cpu.pt", pair="mean", history=16, rr_depth=3, frame_budget_ms=250.0, budget_batch=6,
           aux_spp=16, budget_aux_spp=8, reflect_history=REFLECT_HISTORY, metal_blend=True,
           topup_spp=TOPUP_SPP),
    Preset("gpu", "CUDA: the paper's width-48 U-Net with the 3-scale kernel-predicting head, 8 steps per frame",
           ModelConfig(width=48, depth=5, output="kpn", kernel_size=5, scales=3),
           TrainConfig(lr=1e-3, batch=8, crop=128, steps_per_frame=8, spike_ratio=SPIKE_RATIO), spp=8),
    Preset("paper", "Noise2Noise as published: width 48, direct linear output, 8 steps of 256^2 crops, 8 spp",
           ModelConfig(width=48, depth=5, output="direct"),
           TrainConfig(lr=3e-4, batch=4, crop=256, steps_per_frame=8), spp=8),
)}


def resolve_preset(name: str, device_type: str) -> Preset:
    if name == "auto":
        name = "gpu" if device_type == "cuda" else "cpu"
    try:
        return PRESETS[name]
    except KeyError:
        raise UserError(f"--preset {name}: expected auto or one of {', '.join(PRESETS)}") from None


def parse_res(text: str) -> tuple[int, int]:
    """'256' -> (256, 256); '640x360' -> (640, 360)."""
    m = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", text)
    if not m or int(m.group(1)) < 1 or (m.group(2) is not None and int(m.group(2)) < 1):
        raise UserError(f"--res {text}: expected N (square) or WxH, with positive integers")
    w = int(m.group(1))
    return w, int(m.group(2)) if m.group(2) is not None else w


def parse_features(text: str) -> tuple[str, ...]:
    names = tuple(f.strip() for f in text.split(",") if f.strip())
    if not names or names[0] != "color" or any(f not in FEATURE_CHANNELS for f in names) or len(set(names)) != len(names):
        raise UserError(f"--features {text}: expected 'color' followed by any of "
                        f"{', '.join(list(FEATURE_CHANNELS)[1:])} (comma-separated)")
    return names


def add_scene_flags(p: argparse.ArgumentParser, spp_help: str | None = None) -> None:
    """Flags shared, with the same names and meanings, by fly, bench and reference."""
    g = p.add_argument_group("scene and rendering")
    g.add_argument("--scene", default="cornell-box", help="built-in scene name, scene folder or Mitsuba XML file")
    g.add_argument("--path", default=None, help="camera path JSON (default: the scene's path.json, else an orbit)")
    g.add_argument("--res", default="256", help="render resolution: N or WxH (default 256)")
    g.add_argument("--aux-spp", type=int, default=None, metavar="N",
                   help="samples per pixel of the albedo/normal pass (default: preset; the cpu preset's 16 give "
                        "edges the coverage the renders' 2 cannot)")
    g.add_argument("--spp", type=int, default=None,
                   help=spp_help or "samples per pixel of each render of a pair (default: preset)")
    g.add_argument("--variant", default="auto", help="Mitsuba variant: auto, cuda_ad_rgb, llvm_ad_rgb or scalar_rgb")
    g.add_argument("--render-threads", type=int, default=None, help="Mitsuba's CPU threads (default: one per core)")
    g.add_argument("--freeze-renders", choices=["auto", "on", "off"], default="auto",
                   help="record each render pass once with dr.freeze and replay it (auto: on CUDA only)")
    g.add_argument("--path-fps", type=float, default=15.0,
                   help="camera-path seconds advance 1/path-fps per rendered frame (default 15)")


def add_common_flags(p: argparse.ArgumentParser) -> None:
    """Scene flags plus the denoiser and training flags, shared by fly and bench."""
    add_scene_flags(p)
    p.add_argument("--seed", type=int, default=0, help="selects this run's block of render seeds")
    g = p.add_argument_group("denoiser and training")
    g.add_argument("--preset", default="auto", help=f"auto (cpu or gpu by device), or one of {', '.join(PRESETS)}")
    g.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda or cuda:N")
    g.add_argument("--checkpoint", default=None, help="start from these weights (their network replaces the preset's)")
    g.add_argument("--prior", choices=["auto", "none"], default="auto",
                   help="auto: start from the preset's shipped prior when it fits the run; none: random weights")
    g.add_argument("--width", type=int, default=None, help="U-Net encoder width (default: preset)")
    g.add_argument("--depth", type=int, default=None, help="U-Net max-pools (default: preset)")
    g.add_argument("--head", choices=["kpn", "direct"], default=None,
                   help="output head: per-pixel kernels or the paper's direct colour (default: preset)")
    g.add_argument("--kernel-size", type=int, default=None, help="kpn kernel side, odd (default: preset)")
    g.add_argument("--scales", type=int, default=None, help="kpn scales: full, 1/2, 1/4... (default: preset)")
    g.add_argument("--demod-mix", action=argparse.BooleanOptionalAction, default=None,
                   help="kpn: on diffuse shapes, also filter colour / albedo and mix that in per pixel by a "
                        "learnt weight (default: preset; on for cpu)")
    g.add_argument("--features", default="color,albedo,normal",
                   help="network inputs: color, then any of albedo, normal, history (each pixel's noise level "
                        "from the frames temporal reuse averaged), specular (what a mirror would reflect on glossy "
                        "surfaces, from a pass of its own; renderer/guide.py); default color,albedo,normal")
    g.add_argument("--transfer", default="paper", help="input transfer: paper ((v/(1+v))^(1/2.2)), log or linear")
    g.add_argument("--exposure-norm", choices=["none", "auto"], default="none",
                   help="scale each frame to middle grey before the transfer")
    g.add_argument("--firefly-clamp", type=float, default=FIREFLY_RATIO, metavar="R",
                   help="scale down pixels brighter than R x the second brightest of their 8 neighbours before "
                        f"the network and its kernels see them; 0 turns it off (default {FIREFLY_RATIO:g})")
    g.add_argument("--demodulate", type=float, default=0.0, metavar="FLOOR",
                   help="the kernels filter colour / albedo (albedo floored at FLOOR) and multiply it back: "
                        "texture is kept, not averaged with the noise. Pays on textured scenes, costs on plain "
                        "ones (README); 0: off (default)")
    g.add_argument("--loss", default=None,
                   help="hdr (default), l2, l1, l0 (annealed 2 -> 0), or nll (blind-spot likelihood, its default)")
    g.add_argument("--target", default="n2n",
                   help="n2n (default), n2c (clean target), blindspot or gr2r; a comma list compares them (bench)")
    g.add_argument("--target-spp", type=int, default=None, help="n2c: spp of the clean target (default 32x --spp)")
    g.add_argument("--gr2r-gamma", type=float, default=1.0, help="gr2r: weight of its extra terms (default 1)")
    g.add_argument("--anneal-steps", type=int, default=2000, help="l0: steps over which gamma goes 2 -> 0")
    g.add_argument("--lr", type=float, default=None, help="Adam learning rate (default: preset)")
    g.add_argument("--lr-end", type=float, default=None,
                   help="the learning rate glides from --lr towards this one (default: stays at --lr)")
    g.add_argument("--lr-decay-steps", type=int, default=None,
                   help="with --lr-end: steps over which the rate covers 1 - 1/e of the way (default 200)")
    g.add_argument("--ema", type=float, default=None, metavar="DECAY",
                   help="denoise with an exponential moving average of the weights, this decay per step; "
                        "0 turns it off (default: off)")
    g.add_argument("--spike-clip", type=float, default=None, metavar="R",
                   help="scale down a gradient whose norm is over R x the median of the last 64 steps'; "
                        f"0 turns it off (default: preset; {SPIKE_RATIO:g} for cpu and gpu)")
    g.add_argument("--target-clip", type=float, default=None, metavar="R",
                   help="the hdr loss brings a target sample more than R x its prediction above it down to "
                        "that bound, so that one firefly cannot make a step; 0 turns it off (default: preset; "
                        f"{TARGET_CLIP:g} for cpu)")
    g.add_argument("--steps-per-frame", type=int, default=None, help="training steps per new frame (default: preset)")
    g.add_argument("--train-budget-ms", type=float, default=None,
                   help="instead of a step count, train for this many ms per frame")
    g.add_argument("--pair", choices=PAIR_MODES, default=None,
                   help="both: denoise each render and average the results; mean: denoise the renders' mean "
                        "once, half the inference (default: preset; cpu uses mean)")
    g.add_argument("--rr-depth", default="auto",
                   help="live renders start Russian roulette at this path depth (unbiased: more noise, less time); "
                        "0: the scene's own (Mitsuba's default 5); auto (default): the preset's, cpu switches to 3 "
                        "when the loop runs under 4 frames/s after warm-up")
    g.add_argument("--history", type=int, default=None,
                   help="temporal reuse: each render becomes the running mean of its last N frames, "
                        "reprojected to the current view; 1 turns it off (default: preset)")
    g.add_argument("--reflect-history", type=int, default=None, metavar="N",
                   help="temporal reuse on metals follows the reflection (where the previous view saw the same "
                        "reflected direction) instead of the surface, up to N frames; 0 turns it off "
                        "(default: preset)")
    g.add_argument("--metal-blend", action=argparse.BooleanOptionalAction, default=None,
                   help="pull the displayed colour of metals back towards the reused renders' mean where their "
                        "noise says it is the better estimate (default: preset; on for cpu)")
    g.add_argument("--topup-spp", type=int, default=None, metavar="N",
                   help="temporal reuse: render N more samples of each pixel whose history restarted this frame "
                        "(disocclusions, silhouettes); 0 turns it off (default: preset; cpu 6)")
    g.add_argument("--train-schedule", choices=["thread", "inline"], default=None,
                   help="thread: train beside the render loop; inline: in it, after each frame (default: preset)")
    g.add_argument("--crop", type=int, default=None, help="training crop side (default: preset)")
    g.add_argument("--crop-focus", type=float, default=None, metavar="SHARE",
                   help="the share of training crops centred where the two renders differ most, drawn in "
                        "proportion to that noise; the rest are uniform (default: preset; cpu 1, others 0)")
    g.add_argument("--batch", type=int, default=None, help="crops per training step (default: preset)")
    g.add_argument("--ring", type=int, default=16, help="frames kept in the replay ring (default 16)")
    g.add_argument("--torch-threads", type=int, default=None, help="torch's CPU threads (default: torch's own)")
    g.add_argument("--compile", choices=["off", "infer", "train", "all"], default="off",
                   help="torch.compile the network for inference, training or both (default off; the first "
                        "use compiles for about a minute on a 2-core CPU)")
    g.add_argument("--cuda-graphs", action="store_true",
                   help="with --compile: also capture CUDA graphs (torch.compile mode reduce-overhead)")
    g.add_argument("--train-graph", action="store_true",
                   help="CUDA: record each training step's forward and backward passes as a CUDA graph and "
                        "replay it (one launch instead of ~1200); implies bf16 under --precision auto")
    g.add_argument("--precision", default="auto",
                   help="network number format: auto (bf16 where the CPU or GPU has it natively; else fp16 with loss scaling on CUDA, fp32 on the CPU), fp32, bf16, fp16")


@dataclass(frozen=True)
class Resolved:
    preset: Preset
    model: ModelConfig
    features: FeatureSpec
    train: TrainConfig
    spp: int  # of each render; a single-render target's one render already has twice the pair's
    res: tuple[int, int]
    precision: Precision
    renders: int = 2
    target_spp: int | None = None
    pair: str = "both"
    history: int = 1
    rr_depth: int | None = None  # the early Russian roulette's depth; None: the scene's own, always
    frame_budget_ms: float | None = None  # early roulette switches on above this frame time; None: on from the start
    budget_batch: int | None = None  # ... and training takes this many crops a step; None: the same
    aux_spp: int | None = None  # of the albedo/normal pass; None: spp
    budget_aux_spp: int | None = None  # ... once over the frame budget; None: the same
    reflect_history: int = 0  # temporal reuse follows metals' reflections, up to this many frames; 0: off
    metal_blend: bool = False  # metals' displayed colour pulled back towards the reused input (blend.py)
    topup_spp: int = 0  # more samples of each pixel whose history restarted; 0: none

    def to_dict(self) -> dict:
        return {"preset": self.preset.name, "model": self.model.to_dict(), "features": self.features.to_dict(),
                "train": asdict(self.train), "spp": self.spp, "res": list(self.res),
                "precision": asdict(self.precision), "renders": self.renders, "target_spp": self.target_spp,
                "pair": self.pair, "history": self.history, "rr_depth": self.rr_depth,
                "frame_budget_ms": self.frame_budget_ms, "budget_batch": self.budget_batch, "aux_spp": self.aux_spp,
                "budget_aux_spp": self.budget_aux_spp, "reflect_history": self.reflect_history,
                "metal_blend": self.metal_blend, "topup_spp": self.topup_spp}

    def session_config(self, device, ring: int) -> SessionConfig:
        temporal = TemporalConfig(history=self.history, reflect_history=self.reflect_history,
                                  topup_spp=self.topup_spp if self.history > 1 else 0)
        return SessionConfig(self.model, self.features, self.train, str(device), ring, precision=self.precision,
                             pair=self.pair, temporal=temporal,
                             frame_budget_ms=self.frame_budget_ms, budget_batch=self.budget_batch,
                             budget_aux_spp=self.budget_aux_spp,
                             blend=InputBlend() if self.metal_blend and self.renders == 2 else None)


def resolve(args: argparse.Namespace, device) -> Resolved:
    preset = resolve_preset(args.preset, device.type)
    if getattr(args, "cuda_graphs", False) and getattr(args, "compile", "off") == "off":
        raise UserError("--cuda-graphs: CUDA graphs are captured by torch.compile; add --compile infer, train or all")
    train_graph = getattr(args, "train_graph", False)
    precision_name = args.precision
    if train_graph:
        if device.type != "cuda":
            raise UserError(f"--train-graph: CUDA graphs need a CUDA device; this run's torch device is {device}")
        if args.precision == "fp16":
            raise UserError("--train-graph: fp16's loss scaling decides on the host whether to skip a step, which "
                            "a recorded graph cannot; use --precision bf16 (the default with --train-graph) or fp32")
        if getattr(args, "compile", "off") in ("train", "all"):
            raise UserError("--train-graph and --compile train/all both take over the training step; pick one")
        if precision_name == "auto":
            precision_name = "bf16"
    try:
        precision = choose_precision(precision_name, device, getattr(args, "compile", "off"),
                                     getattr(args, "cuda_graphs", False))
    except ValueError as e:
        raise UserError(str(e)) from None
    if precision.compile != "off" and device.type == "cpu" and not any(map(shutil.which, ("g++", "clang++"))):
        raise UserError("--compile: torch.compile builds C++ kernels on the CPU and found no g++ or clang++; "
                        "install one (apt-get install g++) or drop --compile")
    try:
        features = FeatureSpec(parse_features(args.features), args.transfer, args.exposure_norm,
                               args.firefly_clamp, getattr(args, "demodulate", 0.0))
    except ValueError as e:
        flag = ("--firefly-clamp" if "firefly" in str(e) else "--demodulate" if "demodulat" in str(e)
                else "--transfer/--features")
        raise UserError(f"{flag}: {e}") from None
    target = getattr(args, "target", "n2n")
    if "," in target:
        raise UserError(f"--target {target}: several targets can be compared by bench only")
    from .targets import SINGLE_RENDER, TARGETS

    if target not in TARGETS:
        raise UserError(f"--target {target}: expected one of {', '.join(TARGETS)}")
    loss = args.loss or ("nll" if target == "blindspot" else None)
    net = {k: v for k, v in {"width": getattr(args, "width", None), "depth": getattr(args, "depth", None),
                             "output": getattr(args, "head", None), "kernel_size": getattr(args, "kernel_size", None),
                             "scales": getattr(args, "scales", None),
                             "demod_mix": getattr(args, "demod_mix", None)}.items() if v is not None}
    if features.demodulate:
        if net.get("demod_mix"):
            raise UserError("--demod-mix mixes in demodulated filtering where it pays; --demodulate demodulates "
                            "everywhere (pick one)")
        net["demod_mix"] = False
    if net.get("output") == "direct":
        net.setdefault("scales", 1)  # the direct head has no kernel scales
        if net.get("demod_mix"):
            raise UserError("--demod-mix: the kpn head's kernels filter the demodulated colour; the direct "
                            "head has none (drop --head direct or --demod-mix)")
        net["demod_mix"] = False
        if features.demodulate:
            raise UserError("--demodulate: the kernels of the kpn head filter the demodulated colour; the direct "
                            "head has none (drop --head direct or --demodulate)")
    try:
        model = replace(preset.model, in_channels=features.channels, **net)
    except ValueError as e:
        raise UserError(f"network flags (--width/--depth/--head/--kernel-size/--scales): {e}") from None
    if target == "blindspot":
        # The same width and depth as the preset's U-Net; four rotated branches make it ~4x the work.
        model = ModelConfig(in_channels=features.channels, width=model.width, depth=model.depth, arch="blindspot",
                            output="posterior" if loss == "nll" else "mean")
    for flag, value in (("--batch", args.batch), ("--crop", args.crop)):
        if value is not None and value < 1:
            raise UserError(f"{flag} {value}: expected a positive number")
    if args.steps_per_frame is not None and args.steps_per_frame < 0:
        raise UserError(f"--steps-per-frame {args.steps_per_frame}: expected 0 or more")
    lr_end, decay = getattr(args, "lr_end", None), getattr(args, "lr_decay_steps", None)
    if lr_end is not None and not 0 < lr_end < float("inf"):
        raise UserError(f"--lr-end {lr_end:g}: expected a positive learning rate")
    if decay is not None and decay < 1:
        raise UserError(f"--lr-decay-steps {decay}: expected at least 1 step")
    ema = getattr(args, "ema", None)
    if ema is not None and not 0 <= ema < 1:
        raise UserError(f"--ema {ema:g}: expected 0 (off) or a decay per step below 1")
    spike = getattr(args, "spike_clip", None)
    if spike is not None and not (spike == 0 or 1 <= spike < float("inf")):
        raise UserError(f"--spike-clip {spike:g}: expected 0 (off) or a ratio of at least 1")
    overrides = {k: v for k, v in {
        "crop_focus": getattr(args, "crop_focus", None),
        "loss": loss, "lr": args.lr, "lr_end": lr_end, "lr_decay_steps": decay, "steps_per_frame": args.steps_per_frame,
        "budget_ms": args.train_budget_ms, "schedule": getattr(args, "train_schedule", None), "crop": args.crop,
        "batch": args.batch, "target": target,
        "gr2r_gamma": getattr(args, "gr2r_gamma", None), "anneal_steps": getattr(args, "anneal_steps", None),
        "graph": train_graph or None,
    }.items() if v is not None}
    if spike is not None:
        overrides["spike_ratio"] = spike or None
    if ema is not None:
        overrides["ema"] = ema or None
    clip = getattr(args, "target_clip", None)
    if clip is not None and not (clip == 0 or 1 <= clip < float("inf")):
        raise UserError(f"--target-clip {clip:g}: expected 0 (off) or a ratio of at least 1")
    if clip is not None:
        overrides["target_clip"] = clip or None
    elif overrides.get("loss", preset.train.loss) != "hdr":
        overrides["target_clip"] = None  # the preset's bound is the hdr loss's; another loss has none
    try:
        train = replace(preset.train, **overrides)
    except ValueError as e:
        raise UserError(f"training flags: {e}") from None
    spp = args.spp if args.spp is not None else preset.spp
    if spp < 1:
        raise UserError(f"--spp {spp}: expected a positive sample count")
    aux_spp = getattr(args, "aux_spp", None)
    if aux_spp is not None and aux_spp < 1:
        raise UserError(f"--aux-spp {aux_spp}: expected a positive sample count")
    # An explicit --aux-spp, like --batch, is kept whatever the frame time.
    budget_aux_spp = preset.budget_aux_spp if aux_spp is None else None
    aux_spp = aux_spp or preset.aux_spp
    renders, target_spp = 2, None
    if target in SINGLE_RENDER:
        renders, spp = 1, 2 * spp  # the whole render budget on one render: equal cost to a pair
    if target == "n2c":
        target_spp = getattr(args, "target_spp", None) or 32 * spp
        if target_spp < 1:
            raise UserError(f"--target-spp {target_spp}: expected a positive sample count")
    if args.ring < 1:
        raise UserError(f"--ring {args.ring}: expected at least 1 frame")
    if args.path_fps <= 0:
        raise UserError(f"--path-fps {args.path_fps}: expected a positive number")
    pair = getattr(args, "pair", None) or preset.pair
    history = getattr(args, "history", None)
    history = preset.history if history is None else history
    if history < 1:
        raise UserError(f"--history {history}: expected at least 1 frame (1 turns temporal reuse off)")
    reflect = getattr(args, "reflect_history", None)
    reflect = preset.reflect_history if reflect is None else reflect
    if reflect < 0:
        raise UserError(f"--reflect-history {reflect}: expected a number of frames, at least 0 (0 turns it off)")
    blend = getattr(args, "metal_blend", None)
    topup = getattr(args, "topup_spp", None)
    topup = preset.topup_spp if topup is None else topup
    if not 0 <= topup <= MAX_TOPUP_SPP:
        raise UserError(f"--topup-spp {topup}: expected a sample count from 0 (off) to {MAX_TOPUP_SPP}")
    rr_flag = str(getattr(args, "rr_depth", "auto"))
    if rr_flag == "auto":
        rr_depth, budget = preset.rr_depth, preset.frame_budget_ms
    else:
        try:
            rr_depth, budget = int(rr_flag), None
        except ValueError:
            rr_depth = -1
        if rr_depth < 0:
            raise UserError(f"--rr-depth {rr_flag}: expected auto or a path depth (0: the scene's own)")
    # An explicit --batch is kept whatever the frame time.
    budget_batch = preset.budget_batch if getattr(args, "batch", None) is None else None
    return Resolved(preset, model, features, train, spp, parse_res(args.res), precision, renders, target_spp, pair,
                    history, rr_depth or None, budget if rr_depth else None,
                    budget_batch if rr_depth and budget else None, aux_spp,
                    budget_aux_spp if rr_depth and budget else None, reflect_history=reflect,
                    metal_blend=preset.metal_blend if blend is None else blend, topup_spp=topup)


def prior_path(run: "Resolved", choice: str) -> Path | None:
    """The preset's prior, if asked for, shipped, and trained for this run's network and features."""
    if choice == "none" or run.preset.prior is None:
        return None
    path = PRIORS_DIR / run.preset.prior
    return path if path.is_file() else None
