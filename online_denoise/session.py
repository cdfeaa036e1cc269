"""The live loop: render a pair, denoise it with the latest weights, feed the ring, let the trainer learn.

One ``Session.step(pose)`` is one frame. The trainer runs in its own thread,
so its steps overlap the next frame's render, or inline after the push (the
CPU preset: on 2 cores the overlap only oversubscribes them). The stage times
are wall-clock milliseconds of each stage, and ``frame`` is the whole iteration.

Order matters for the error estimate: a frame is denoised *before* it is
pushed, so the weights that denoise it have never trained on it, and its two
renders are independent of the network (see metrics.error_estimate).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .arrays import to_chw
from .budget import FrameBudget
from .blend import InputBlend
from .denoiser import PAIR_MODES, Checkpoint, Denoiser, PairResult, frame_exposure, save_checkpoint
from .features import FeatureSpec
from .metrics import error_estimate
from .model import ModelConfig, build_model
from .precision import Precision
from .ring import RingBuffer
from .temporal import TemporalConfig, TemporalReuse
from .trainer import TrainConfig, Trainer

# The share of a colour render that early Russian roulette from depth 3 saves, for judging whether that step
# is enough: measured 20% on sunlit-room (59.5 -> 47.9 ms) and 18% on cornell-box, so a little less is assumed.
ROULETTE_SAVING = 0.15


class _FewerAuxSamples:
    """The albedo/normal pass at fewer spp: on sunlit-room 16 -> 8 saved 11 ms a frame at equal quality."""

    name = "aux"

    def __init__(self, renderer, spp: int | None):
        self.renderer, self.spp, self.full = renderer, spp, None

    def shed(self, window: dict[str, float]) -> float | None:
        current = getattr(self.renderer, "aux_spp", None)
        if self.spp is None or current is None or self.spp >= current:
            return None
        self.full = current
        self.renderer.set_aux_spp(self.spp)
        return window.get("render_aux", 0.0) * (1 - self.spp / current)

    def restore_cost(self, window: dict[str, float]) -> float:
        return window.get("render_aux", 0.0) * (self.full / self.renderer.aux_spp - 1)

    def restore(self) -> None:
        self.renderer.set_aux_spp(self.full)


class _CheaperRendersAndSteps:
    """Early Russian roulette in the live renders, and fewer crops a training step."""

    name = "roulette and crops"

    def __init__(self, renderer, trainer, batch: int | None):
        self.renderer, self.trainer, self.batch = renderer, trainer, batch
        self.roulette, self.full_batch = False, None

    def shed(self, window: dict[str, float]) -> float | None:
        saving = None
        switch = getattr(self.renderer, "set_early_roulette", None)
        self.roulette = (switch is not None and not getattr(self.renderer, "early_roulette", False)
                         and switch(True))
        if self.roulette:
            saving = ROULETTE_SAVING * self._colour(window)
        self.full_batch = None
        batch = self.trainer.config.batch
        if self.batch is not None and self.batch < batch:
            self.full_batch = batch
            self.trainer.config = replace(self.trainer.config, batch=self.batch)
            saving = (saving or 0.0) + window.get("train", 0.0) * (1 - self.batch / batch)
        return saving

    def restore_cost(self, window: dict[str, float]) -> float:
        cost = ROULETTE_SAVING / (1 - ROULETTE_SAVING) * self._colour(window) if self.roulette else 0.0
        if self.full_batch is not None:
            cost += window.get("train", 0.0) * (self.full_batch / self.trainer.config.batch - 1)
        return cost

    def restore(self) -> None:
        if self.roulette:
            self.renderer.set_early_roulette(False)
        if self.full_batch is not None:
            self.trainer.config = replace(self.trainer.config, batch=self.full_batch)

    @staticmethod
    def _colour(window: dict[str, float]) -> float:
        return max(window.get("render", 0.0) - window.get("render_aux", 0.0), 0.0)


@dataclass(frozen=True)
class SessionConfig:
    model: ModelConfig
    features: FeatureSpec
    train: TrainConfig
    device: str = "cpu"
    ring_capacity: int = 16  # frames kept for replay
    train_enabled: bool = True
    precision: Precision = Precision()
    pair: str = "both"  # denoiser.PAIR_MODES: denoise each render and average, or denoise their mean once
    # With pair="mean", every this many frames one render, a and b in turn, is also denoised on its own
    # (the display still shows the mean's result), because the reference-free error estimate needs a
    # result independent of the other render; frames in between keep the last estimate.
    estimate_every: int = 10
    # Each render's running mean over its reprojected past (temporal.py); history 1 turns it off. The
    # denoiser, the ring and the error estimate all see the reused renders.
    temporal: TemporalConfig = TemporalConfig()
    # The frame time the loop aims at. While the median frame of a window (budget.BUDGET_FRAMES, then each
    # window after it) is slower, the loop sheds work in steps (budget.FrameBudget): the aux pass's samples
    # first, then early Russian roulette in the live renders (unbiased, cheaper, noisier) and fewer crops a
    # step; a window well under budget takes the last step back. None: never shed.
    frame_budget_ms: float | None = None
    # Over that budget the trainer also takes this many crops a step instead of train.batch (None: keeps
    # its batch). On sunlit-room, 6 crops instead of 8 took the step from 100 to 71 ms and the loop from
    # 3.70 to 4.10-4.18 frames/s, at +0.07 and -0.15 dB over two runs (same frames); forced on scenes
    # under budget it cost cornell 0.25 dB, so it waits for the budget.
    budget_batch: int | None = None
    # ...and the renderer's albedo/normal pass takes this many spp (None: keeps its own). On sunlit-room
    # 16 spp cost 11 ms a frame over 8 (with coherent camera rays; 16 ms before) for the same quality; on
    # cornell-box they were worth 0.28 dB.
    budget_aux_spp: int | None = None
    # The displayed colour of metals pulled back towards the reused renders' mean where that estimates it
    # better (blend.py); None: the denoiser's output as it is.
    blend: InputBlend | None = None

    def __post_init__(self):
        if self.pair not in PAIR_MODES:
            raise ValueError(f"pair mode {self.pair!r}: expected one of {PAIR_MODES}")
        if self.estimate_every < 1:
            raise ValueError(f"estimate_every {self.estimate_every}: expected at least 1")
        if self.frame_budget_ms is not None and not self.frame_budget_ms > 0:
            raise ValueError(f"frame_budget_ms {self.frame_budget_ms}: expected a positive time")
        if self.budget_batch is not None and self.budget_batch < 1:
            raise ValueError(f"budget_batch {self.budget_batch}: expected at least 1 crop")
        if self.budget_aux_spp is not None and self.budget_aux_spp < 1:
            raise ValueError(f"budget_aux_spp {self.budget_aux_spp}: expected at least 1 sample per pixel")


@dataclass
class FrameResult:
    frame: object  # renderer.Frame: what was denoised and trained on (the renders after temporal reuse)
    result: PairResult
    timings: dict[str, float]  # ms: render, reuse (when on), infer, train, frame
    estimate: dict[str, float]
    steps: int
    loss: float
    skipped_nonfinite: int
    rendered: object  # renderer.Frame: the renders as they came out of the renderer (``frame`` without reuse)
    history: float  # mean frames per pixel in the reused renders' running means (1 without reuse)
    early_roulette: bool = False  # rendered with the early Russian roulette that keeps to the frame budget

    @property
    def denoised(self) -> torch.Tensor:
        return self.result.denoised

    def record(self) -> dict:
        """The metrics.jsonl line for this frame."""
        return {
            "frame": self.frame.index,
            "pose": self.frame.pose.to_json(),
            "ms": {k: round(v, 2) for k, v in self.timings.items()},
            "loss": None if self.loss != self.loss else round(self.loss, 6),
            "steps": self.steps,
            "weight_version": self.result.version,
            "estimate_mse": self.estimate.get("mse"),
            "noisy_mse_estimate": self.estimate.get("noisy_mse"),
            "estimate_frame": self.estimate.get("frame"),
            "skipped_nonfinite": self.skipped_nonfinite,
            "history": round(self.history, 3),
            "early_roulette": self.early_roulette,
        }


class Session:
    def __init__(self, renderer, config: SessionConfig, checkpoint: Checkpoint | None = None):
        self.renderer = renderer
        self.config = config
        device = torch.device(config.device)
        self.device = device
        model_config = checkpoint.model_config if checkpoint is not None else config.model
        self.model_config = model_config
        model = build_model(model_config, config.features.transfer)
        if checkpoint is not None:
            model.load_state_dict(checkpoint.state_dict)
        h, w = renderer.shape
        rc = renderer.config
        with_target = rc.target_spp is not None
        edge_targets = (config.temporal.enabled and config.temporal.raw_edge_targets and rc.renders == 2
                        and not with_target)
        self.ring = RingBuffer(config.ring_capacity, h, w, device, renders=rc.renders, with_target=with_target,
                               edge_targets=edge_targets, with_specular="specular" in config.features.features,
                               focus=config.train.crop_focus)
        self.trainer = Trainer(model, config.features, self.ring, config.train, device, config.precision)
        self.denoiser = Denoiser(model_config, config.features, device, config.precision)
        self.reuse = TemporalReuse(config.temporal, device) if config.temporal.enabled else None
        self._load_latest()
        self.frames = 0
        # Pixel passes need a JIT variant; on scalar_rgb (already a fallback with a warning) there are none.
        self._tops_up = (self.reuse is not None and config.temporal.topup_spp > 0
                         and not renderer.variant.startswith("scalar"))
        self.topped_up: list[int] = []  # pixels per render given more samples in the last frame
        self._estimate: dict[str, float] = {}  # the latest error estimate, with the frame it was made on
        self._last_end = time.perf_counter()
        self._closed = False
        self._aux_step = _FewerAuxSamples(renderer, config.budget_aux_spp)
        self._cheaper_step = _CheaperRendersAndSteps(renderer, self.trainer, config.budget_batch)
        self.budget = (FrameBudget(config.frame_budget_ms, [self._aux_step, self._cheaper_step])
                       if config.frame_budget_ms is not None else None)
        self.early_roulette_from: int | None = None  # the first frame the live renders rouletted early
        self.budget_batch_from: int | None = None  # the first frame training took the smaller batch
        self.budget_aux_from: int | None = None  # the first frame the aux pass took fewer samples
        if config.train_enabled:
            self.trainer.start()

    def _load_latest(self) -> None:
        snap = self.trainer.snapshot()
        if snap.version != self.denoiser.version:
            self.denoiser.load_weights(snap.state_dict, snap.version)

    def _sync(self) -> None:
        # The loop's own stream, not the whole device: a device-wide sync is refused while the trainer
        # thread records a CUDA graph (--train-graph), and the loop's timings need only its own work.
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()

    def restart_clock(self) -> None:
        """Start the next frame's wall-clock time now (e.g. after a long pause outside the loop)."""
        self._last_end = time.perf_counter()

    def step(self, pose) -> FrameResult:
        self.trainer.check()
        # While the trainer records a CUDA graph no other thread may make the GPU wait; the frame waits
        # for the recording instead (a few hundred ms, once per batch layout).
        with self.trainer.gpu_turns.frame():
            return self._step(pose)

    def _step(self, pose) -> FrameResult:
        rendered = self.renderer.render_pair(pose, self.frames)
        frame, history = rendered, 1.0
        t_reuse = time.perf_counter()
        topup_ms = 0.0
        if self.reuse is not None:
            frame, history = self.reuse.apply(rendered)
            if self._tops_up:
                topup_ms = self._top_up(frame)
            self._sync()
        t0 = time.perf_counter()
        self._load_latest()
        each = ""
        if self.config.pair == "mean" and self.frames % self.config.estimate_every == 0:
            # One render on its own is enough for an estimate, and a third image in the batch made every
            # estimate frame 77 ms slower (cornell); the renders take turns.
            each = "ab"[(self.frames // self.config.estimate_every) % 2]
        result = self.denoiser.denoise_pair(frame, self.config.pair, each=each, blend=self.config.blend)
        self._sync()
        t1 = time.perf_counter()
        if frame.color_b is not None and (result.denoised_a is not None or result.denoised_b is not None):
            a, b = to_chw(frame.color_a, self.device), to_chw(frame.color_b, self.device)
            self._estimate = {**error_estimate(result.denoised_a, result.denoised_b, a, b), "frame": frame.index}
        estimate = self._estimate
        self.ring.push(frame, frame_exposure(self.config.features, frame.color_a))
        self.trainer.notify_frame()  # inline schedule: the training steps run here
        end = time.perf_counter()
        timings = {
            "render": rendered.timings["render"] + topup_ms,
            **({"reuse": (t0 - t_reuse) * 1000 - topup_ms} if self.reuse is not None else {}),
            "infer": (t1 - t0) * 1000,
            "train": self.trainer.take_busy_ms(),
            "frame": (end - self._last_end) * 1000,
        }
        roulette = bool(getattr(self.renderer, "early_roulette", False))
        self._last_end = end
        self._keep_to_budget({**timings, "render_aux": rendered.timings.get("render_aux", 0.0)})
        self.frames += 1
        return FrameResult(frame, result, timings, estimate, self.trainer.steps, self.trainer.last_loss,
                           self.trainer.skipped_nonfinite, rendered, history, roulette)

    def _top_up(self, frame) -> float:
        """More samples of the pixels whose history restarted, both renders in one pass; its time in ms.

        One pass for both keeps one launch's overhead (3-9 ms on 2 cores), and its
        lanes are independent samples, so a and b stay independent of each other.
        """
        t = time.perf_counter()
        index = self.reuse.restarted()
        counts = [len(i) for i in index]
        if sum(counts):
            spp = self.config.temporal.topup_spp
            colors = self.renderer.render_pixels(torch.cat(index).cpu().numpy(), spp)
            start = 0
            for render, (pixels, n) in enumerate(zip(index, counts)):
                self.reuse.add_samples(render, pixels, torch.from_numpy(colors[start:start + n]), spp, frame.spp)
                start += n
        self.topped_up = counts
        return (time.perf_counter() - t) * 1000

    @property
    def budget_events(self) -> list[tuple[int, str, str]]:
        """(first frame it applies to, "shed" or "restored", step) for each change the frame budget made."""
        return list(self.budget.events) if self.budget is not None else []

    def _keep_to_budget(self, timings: dict[str, float]) -> None:
        """Shed work while the loop runs over its frame budget, and take it back when well under (budget.py).

        Over budget, the next step follows in the same window where the first
        step's expected saving (from the window's stage times) leaves the frame
        over. (On sunlit-room the first window ran at 322 ms a frame; the aux
        pass's fewer samples save about 15 ms, so the step after it waited
        another window, 20 frames at 70 ms over budget, for nothing.) Every
        window is judged for as long as the loop runs, since a camera path can
        get heavier later (glossy-metals from the prior was under budget at
        frames 25-44 with the aux pass at 8 spp and ran at 277 ms a frame after
        them), and lighter: glossy-metals from scratch shed both steps after
        one window at 277 ms and then ran at 180-210 ms a frame for 400 frames.
        """
        if self.budget is None:
            return
        seen = len(self.budget.events)
        self.budget.observe(self.frames, timings)
        for frame, what, name in self.budget.events[seen:]:
            if what != "shed":
                continue
            if name == self._aux_step.name and self.budget_aux_from is None:
                self.budget_aux_from = frame
            if name == self._cheaper_step.name:
                if self._cheaper_step.roulette and self.early_roulette_from is None:
                    self.early_roulette_from = frame
                if self._cheaper_step.full_batch is not None and self.budget_batch_from is None:
                    self.budget_batch_from = frame

    def set_training(self, enabled: bool) -> None:
        self.trainer.set_paused(not enabled)

    def close(self, checkpoint_path: str | Path | None = None, meta: dict | None = None) -> Path | None:
        """Stop the trainer and, if asked, save its weights atomically. Safe to call twice."""
        if self._closed:
            return None
        self._closed = True
        self.trainer.stop()
        if checkpoint_path is None:
            return None
        info = {"steps": self.trainer.steps, "frames": self.frames, "weight_version": self.trainer.steps,
                "train_config": self.config.train.to_dict(), **(meta or {})}
        return save_checkpoint(checkpoint_path, self.trainer.model, self.model_config, self.config.features, info)
