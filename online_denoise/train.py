"""Offline Noise2Noise training on rendered pairs: how the shipped prior is made.

Renders frames along the camera paths of the given scenes (two independent
renders per pose, plus albedo and normal, exactly as the live loop does), keeps
them in a ring buffer sized to hold them all, and runs the live trainer's own
``Trainer.step`` on them with a cosine learning-rate decay. No clean image is
rendered or used. The checkpoint records everything needed to retrain it.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .denoiser import save_checkpoint
from .features import FeatureSpec
from .model import ModelConfig, build_model
from .precision import Precision
from .progress import Progress
from .ring import RingBuffer
from .trainer import TrainConfig, Trainer


@dataclass
class OfflineOptions:
    out: Path
    frames_per_scene: int = 48
    spp_mix: tuple[int, ...] = ()  # cycle through these spp so the network sees many noise levels; () = preset
    steps: int = 4000
    lr_final: float = 0.05  # the cosine decay ends at this fraction of the preset's learning rate
    save_every: int = 1000
    record: dict = field(default_factory=dict)  # how this run was made, stored in the checkpoint


def render_dataset(renderers: list, frames_per_scene: int, ring: RingBuffer, spp_mix: tuple[int, ...] = ()
                   ) -> None:
    """Render every scene's poses into the ring.

    A render at k times the renderers' own spp holds what a still camera's
    running mean of k live frames holds, so it is stored as worth k frames:
    with ``spp_mix`` the network's history feature then sees the noise levels
    that temporal reuse makes live.
    """
    progress = Progress(len(renderers) * frames_per_scene, "rendering pairs", unit="frames")
    for r in renderers:
        for j in range(frames_per_scene):
            pose = r.path.pose(r.path.duration * j / frames_per_scene)
            spp = spp_mix[j % len(spp_mix)] if spp_mix else None
            frame = r.render_pair(pose, j, spp)
            span = np.full((*frame.shape, 1), frame.spp / r.config.spp, np.float32)
            ring.push(replace(frame, frames_a=span, frames_b=span))
            progress.update(1, r.scene_info.name)
    progress.close()


def train_offline(renderers: list, model_config: ModelConfig, spec: FeatureSpec, train: TrainConfig,
                  options: OfflineOptions, device: torch.device, precision: Precision,
                  init_state: dict | None = None) -> Path:
    h, w = renderers[0].shape
    ring = RingBuffer(len(renderers) * options.frames_per_scene, h, w, device, seed=1,
                      with_specular="specular" in spec.features, focus=train.crop_focus)
    render_dataset(renderers, options.frames_per_scene, ring, options.spp_mix)
    model = build_model(model_config, spec.transfer)
    if init_state is not None:
        model.load_state_dict(init_state)
    trainer = Trainer(model, spec, ring, train, device, precision)
    base_lr = train.lr
    progress = Progress(options.steps, "training", unit="steps")
    start = time.perf_counter()
    losses: list[float] = []
    meta = {"offline": {**options.record, "frames": len(renderers) * options.frames_per_scene}}
    for step in range(options.steps):
        lr = base_lr * (options.lr_final + (1 - options.lr_final) * 0.5 * (1 + math.cos(math.pi * step / options.steps)))
        for group in trainer.optimizer.param_groups:
            group["lr"] = lr
        trainer.step()
        losses.append(trainer.last_loss)
        if (step + 1) % 50 == 0:
            recent = sum(losses[-50:]) / 50
            progress.update(50, f"loss {recent:.4f} lr {lr:.1e}")
        if (step + 1) % options.save_every == 0 or step + 1 == options.steps:
            save_checkpoint(options.out, trainer.model, model_config, spec,
                            {**meta, "steps": trainer.steps, "weight_version": trainer.steps,
                             "train_config": asdict(train), "seconds": time.perf_counter() - start,
                             "final_loss": sum(losses[-200:]) / len(losses[-200:])})
    progress.close()
    print(f"trained {trainer.steps} steps in {time.perf_counter() - start:.0f} s "
          f"({trainer.skipped_nonfinite} skipped), loss {sum(losses[-200:]) / len(losses[-200:]):.4f} "
          f"-> {options.out}", file=sys.stderr)
    return options.out
