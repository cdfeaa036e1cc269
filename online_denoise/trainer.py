"""The trainer thread: Noise2Noise steps on crops from the ring, weights published as versioned snapshots.

The render loop calls ``notify_frame()`` after each push; the thread then
takes ``steps_per_frame`` steps, or as many as fit ``budget_ms``, and goes back
to waiting. Steps never pile up: a trainer that falls behind does at most one
frame's worth of steps when it catches up, because the newest frames are the
ones worth learning from. With ``schedule="inline"`` there is no thread:
``notify_frame()`` itself takes that frame's worth of steps, in the caller's thread.
"""

from __future__ import annotations

import collections
import math
import statistics
import threading
import time
from dataclasses import asdict, dataclass

import torch

from .features import FeatureSpec
from .loss import get_loss
from .precision import Precision
from .ring import RingBuffer
from .step_graph import GpuTurns, StepGraphs
from .targets import make_objective


SCHEDULES = ("thread", "inline")
GRAPH_TARGETS = ("n2n", "n2c")  # the targets whose step can be recorded as a CUDA graph
SPIKE_WINDOW = 64  # recent gradient norms whose median sets the spike bound
SPIKE_WARMUP = 16  # steps before the bound applies: the first steps' norms say little about later ones


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 3e-4  # Adam, as in the paper
    # When set, the learning rate glides from lr towards lr_end, exp(-step / lr_decay_steps) of the way
    # left each step: the first steps learn fast, the later ones settle. No horizon, since a live session
    # has no last step.
    lr_end: float | None = None
    lr_decay_steps: int = 200
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-8
    batch: int = 4  # crops per step
    crop: int = 128  # crop side in pixels (clipped to the frame)
    # The share of crops centred where the two renders differ most, drawn in proportion to that noise
    # (ring.py); the rest are uniform. 0: all uniform.
    crop_focus: float = 0.0
    steps_per_frame: int = 1  # k steps after each new frame...
    budget_ms: float | None = None  # ...or, when set, as many steps as fit in this many ms per frame
    # Where the steps run. "thread": a trainer thread, overlapping the next render (a GPU, or many
    # cores). "inline": in the frame loop after the push. On 2 cores the two compete for the same
    # cores and each stage's threads oversubscribe them: inline measured 4.13 frames/s vs 3.68 with
    # the thread, and a step for every frame (Cornell box, 256^2, cpu preset).
    schedule: str = "thread"
    loss: str = "hdr"
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    # A step whose gradient norm is over this many times the median of the last SPIKE_WINDOW steps' is
    # scaled down to that bound; None: never. See Trainer._tame_spike.
    spike_ratio: float | None = None
    # The hdr loss brings a target over this many times its prediction down to that bound (loss.hdr_loss);
    # None: never.
    target_clip: float | None = None
    ema: float | None = None  # publish an exponential moving average of the weights with this decay
    target: str = "n2n"  # what the network learns from (targets.py)
    gr2r_gamma: float = 1.0  # weight of GR2R's regular and pseudo-supervised terms
    anneal_steps: int = 2000  # the l0 loss's gamma reaches its floor after this many steps
    # Record the forward and backward passes as CUDA graphs and replay them (step_graph.py). CUDA only,
    # without loss scaling, for the targets whose batches the ring holds whole (n2n, n2c).
    graph: bool = False

    def __post_init__(self):
        from .targets import TARGETS

        get_loss(self.loss, target_clip=self.target_clip)
        if self.target_clip is not None and not 1 <= self.target_clip < math.inf:
            raise ValueError(f"target clip {self.target_clip}: expected a ratio of at least 1, or None for none")
        if self.target not in TARGETS:
            raise ValueError(f"--target {self.target}: expected one of {', '.join(TARGETS)}")
        if self.loss == "nll" and self.target != "blindspot":
            raise ValueError("--loss nll is the blind-spot net's likelihood; use it with --target blindspot")
        if self.lr_end is not None and not 0 < self.lr_end < math.inf:
            raise ValueError(f"lr_end {self.lr_end}: expected a positive learning rate")
        if self.lr_decay_steps < 1:
            raise ValueError(f"lr_decay_steps {self.lr_decay_steps}: expected at least 1 step")
        if not 0.0 <= self.crop_focus <= 1.0:
            raise ValueError(f"--crop-focus {self.crop_focus:g}: expected a share of the crops between 0 and 1")
        if self.batch < 1 or self.crop < 1 or self.steps_per_frame < 0:
            raise ValueError(f"invalid training config {self}")
        if self.ema is not None and not 0 < self.ema < 1:
            raise ValueError(f"ema decay {self.ema}: expected a decay per step between 0 and 1, or None for none")
        if self.spike_ratio is not None and not 1 <= self.spike_ratio < math.inf:
            raise ValueError(f"spike ratio {self.spike_ratio}: expected a number >= 1, or None for no spike clip")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--train-schedule {self.schedule}: expected one of {', '.join(SCHEDULES)}")
        if self.graph and self.target not in GRAPH_TARGETS:
            raise ValueError(f"--train-graph: recorded steps take the ring's pairs as they are; --target "
                             f"{self.target} makes its own inputs each step (use {' or '.join(GRAPH_TARGETS)})")
        if self.graph and self.loss == "l0":
            raise ValueError("--train-graph: the l0 loss changes with the step count, which a recorded graph "
                             "would freeze; use --loss hdr, l2 or l1")

    def to_dict(self) -> dict:
        return asdict(self)


class TrainerError(RuntimeError):
    """The trainer thread died; the original exception is the __cause__."""


@dataclass
class Snapshot:
    version: int  # optimizer steps taken when these weights were published
    state_dict: dict


class Trainer:
    def __init__(self, model: torch.nn.Module, spec: FeatureSpec, ring: RingBuffer, config: TrainConfig,
                 device: torch.device | str = "cpu", precision: Precision = Precision()):
        self.precision = precision
        self.model = precision.prepare(model.to(device).train(), "train")
        self.spec = spec
        self.ring = ring
        self.config = config
        self.device = torch.device(device)
        self.loss_fn = get_loss(config.loss, config.anneal_steps, config.target_clip)
        self.objective = make_objective(config.target, config.gr2r_gamma)
        # On CUDA a step is bound by kernel launches, not arithmetic: the width-48 step on 8 x 128^2 crops
        # launched 1210 kernels and kept an H100 busy 12 of its 29 ms. The fused Adam, with the weights copied
        # once a frame in snapshot() instead of after every step, took it to 18.9 ms.
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas, eps=config.eps,
                                          fused=self.device.type == "cuda")
        # fp16 gradients underflow without loss scaling; the scaler also skips steps with inf/NaN gradients.
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision.needs_loss_scaling)
        self.graphs = None
        if config.graph:
            if self.device.type != "cuda":
                raise ValueError(f"--train-graph records CUDA graphs; the trainer runs on {self.device}")
            if precision.needs_loss_scaling:
                raise ValueError("--train-graph: loss scaling decides on the host whether to skip a step, which "
                                 "a CUDA graph cannot; use --precision bf16 or fp32")
            self.graphs = StepGraphs(self)

        self.steps = 0
        self.skipped_nonfinite = 0
        self.spikes_tamed = 0
        self._norms: collections.deque[float] = collections.deque(maxlen=SPIKE_WINDOW)
        self.last_loss = float("nan")
        self.losses: collections.deque[float] = collections.deque(maxlen=512)  # recent step losses
        self.error: BaseException | None = None

        self._busy_ms = 0.0  # time spent stepping since the last take_busy_ms()
        self._credit = 0
        self._paused = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        # Held while the weights change (the optimizer step) and while snapshot() copies them, so a copy is
        # never of a half-updated network.
        self._weights_lock = threading.Lock()
        self.gpu_turns = GpuTurns()  # the render loop's frames and this trainer's graph recordings
        self._ema: dict[str, torch.Tensor] | None = self._clone_state() if config.ema else None
        self._snapshot = Snapshot(0, self._clone_state())
        self._thread: threading.Thread | None = None
        self._started = False

    # -- control (any thread) ---------------------------------------------

    def start(self) -> "Trainer":
        self._started = True
        if self.config.schedule == "inline":
            return self  # notify_frame() trains in the loop's thread
        self._thread = threading.Thread(target=self._run, name="trainer", daemon=True)
        self._thread.start()
        return self

    def notify_frame(self) -> None:
        """A frame was pushed: train on it now (inline) or wake the thread. Nothing before start()."""
        if self.config.schedule == "inline":
            if self._started:
                self.train_inline()
            return
        with self._cond:
            self._credit = max(self._credit, 1)
            self._cond.notify()

    def train_inline(self) -> None:
        """One frame's worth of steps in the caller's thread (the inline schedule)."""
        if self._paused or self._stop.is_set():
            return
        try:
            self._train_one_frame()
        except Exception as e:  # reported like the thread's, so callers handle one kind of failure
            self.error = e
        self.check()

    def set_paused(self, paused: bool) -> None:
        with self._cond:
            self._paused = paused
            self._cond.notify()

    @property
    def paused(self) -> bool:
        return self._paused

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the step under way, then end the thread. Safe to call twice."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TrainerError(f"trainer thread did not stop within {timeout:.0f} s")

    def check(self) -> None:
        """Re-raise, in the caller's thread, an exception that ended the trainer thread."""
        if self.error is not None:
            raise TrainerError(f"trainer thread failed: {type(self.error).__name__}: {self.error}") from self.error

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def snapshot(self) -> Snapshot:
        """The weights as of the latest step, copied only when a step was taken since the last call.

        The copy is made here, on demand, rather than after every step: the
        loop asks once a frame, and the trainer may take 8 steps in that frame.
        """
        with self._weights_lock:
            if self._snapshot.version != self.steps:
                self._snapshot = Snapshot(self.steps, self._clone_state(self._ema))
            return self._snapshot

    def take_busy_ms(self) -> float:
        with self._cond:
            ms, self._busy_ms = self._busy_ms, 0.0
        return ms

    # -- the thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                with self._cond:
                    while not self._stop.is_set() and (self._credit == 0 or self._paused):
                        self._cond.wait(0.1)
                    self._credit = 0
                if self._stop.is_set():
                    break
                self._train_one_frame()
        except BaseException as e:  # surfaced to the caller by check()
            self.error = e

    def _train_one_frame(self) -> None:
        cfg = self.config
        start = time.perf_counter()
        steps = 0
        while not self._stop.is_set():
            if cfg.budget_ms is None and steps >= cfg.steps_per_frame:
                break
            if cfg.budget_ms is not None and (time.perf_counter() - start) * 1000 >= cfg.budget_ms:
                break
            t0 = time.perf_counter()
            if not self.step():
                break
            steps += 1
            with self._cond:
                self._busy_ms += (time.perf_counter() - t0) * 1000

    def step(self) -> bool:
        """One optimizer step on a fresh batch. False when the ring holds nothing yet."""
        batch = self.ring.sample(self.config.batch, self.config.crop)
        if batch is None:
            return False
        if hasattr(self.loss_fn, "set_step"):
            self.loss_fn.set_step(self.steps)
        if self.graphs is not None:
            loss, grad_norm = self.graphs.run(batch)  # the norm is always computed there: it costs no launch
            if self.config.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), self.config.grad_clip, grad_norm)
        else:
            loss = self.objective.loss(self, batch)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            if self.config.grad_clip is not None:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            elif self.config.spike_ratio is not None:
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters()
                                                           if p.grad is not None])
            else:
                grad_norm = torch.zeros((), device=loss.device)
        # The one host sync per step: skipping a step needs the verdict on the host.
        loss_value, norm_value = torch.stack([loss.detach(), grad_norm.detach().float()]).tolist()
        if not (math.isfinite(loss_value) and math.isfinite(norm_value)):
            self.skipped_nonfinite += 1
            # A recorded graph owns its gradient tensors: its next replay overwrites them, and dropping
            # them here would leave the parameters without gradients.
            self.optimizer.zero_grad(set_to_none=self.graphs is None)
            self.scaler.update()  # lets fp16's scale back off after an overflow
            return True
        if self.config.grad_clip is not None:
            norm_value = min(norm_value, self.config.grad_clip)  # clip_grad_norm_ reports the norm before clipping
        self._tame_spike(norm_value)
        if self.config.lr_end is not None:
            for group in self.optimizer.param_groups:
                group["lr"] = self.learning_rate()
        with self._weights_lock:
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self._ema is not None:
                self._update_ema()
            self.steps += 1
        self.last_loss = loss_value
        self.losses.append(loss_value)
        return True

    def learning_rate(self) -> float:
        """The learning rate of the next step."""
        c = self.config
        if c.lr_end is None:
            return c.lr
        return c.lr_end + (c.lr - c.lr_end) * math.exp(-self.steps / c.lr_decay_steps)

    def _tame_spike(self, norm: float) -> None:
        """Scale a gradient far larger than the recent ones down to ``spike_ratio`` x their median.

        The HDR loss divides by the prediction, so one target pixel that is
        100x its neighbours (a sample that hit a light from a pixel beside it,
        a firefly) can outweigh the rest of the batch by 1000:1. Adam then
        takes a full-size step in that one pixel's direction, and the spike
        fills its second-moment estimate, which decays by 1% a step, so for
        hundreds of steps every update is shrunk. The direction is kept; only
        the size is bounded.
        """
        ratio = self.config.spike_ratio
        if ratio is not None and len(self._norms) >= SPIKE_WARMUP:
            bound = ratio * statistics.median(self._norms)
            if norm > bound > 0:
                torch.nn.utils.clip_grads_with_norm_(self.model.parameters(), bound, torch.tensor(norm))
                self.spikes_tamed += 1
        self._norms.append(norm)

    def _clone_state(self, state: dict | None = None) -> dict:
        return {k: v.detach().clone() for k, v in (state or self.model.state_dict()).items()}

    @torch.no_grad()
    def _update_ema(self) -> None:
        # Ramp the decay up over the first steps, so that the average does not drag the
        # random initial weights along (as TensorFlow's ExponentialMovingAverage does).
        decay = min(self.config.ema, (1 + self.steps) / (10 + self.steps))
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                self._ema[k].lerp_(v, 1.0 - decay)
            else:
                self._ema[k].copy_(v)
