"""The live loop without a window: follow the scene's path, train, and write what happened.

Writes into the output folder:
  frames/denoised_NNNN.png|.exr  every --save-every frames (tonemapped PNG, linear EXR)
  metrics.jsonl                  one line per frame (stage ms, loss, steps, weight version, error estimate)
  strip.png                      noisy | denoised (| reference) of the last frame; "noisy" is the
                                 average of the pair, the very samples the denoiser saw
  model.pt                       the final checkpoint, written atomically
  run.json                       the resolved configuration and the summary
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from .arrays import pair_average, to_hwc_numpy, to_numpy
from .exr import write_exr
from .files import atomic_write_json
from .images import save_png, strip
from .metrics import psnr
from .session import FrameResult, Session


@dataclass
class HeadlessOptions:
    frames: int = 300
    out: Path = Path("runs/demo")
    save_every: int = 50  # 0: only the final strip
    path_fps: float = 15.0  # frame i shows the path at i / path_fps seconds
    reference_spp: int = 1024  # final reference render for the strip and PSNR; 0: none
    exposure: float = 0.0  # display exposure of the PNGs, in stops
    config: dict = field(default_factory=dict)  # the resolved run configuration, for run.json


RECENT_STEPS = 50  # the summary's loss is their median


@dataclass
class Summary:
    frames: int
    seconds: float
    interrupted: bool
    stage_ms: dict[str, float]  # mean over steady-state frames
    steps: int
    loss: float  # median of the last RECENT_STEPS steps' losses: one step's can spike 100x (a light in view)
    skipped_nonfinite: int
    estimate_mse: float
    psnr_denoised: float | None = None
    psnr_noisy: float | None = None
    reference_spp: int = 0
    # Every change the frame budget made: [first frame it applies to, "shed" | "restored", step].
    budget_events: list = field(default_factory=list)
    out: str = ""

    @property
    def fps(self) -> float:
        return 1000.0 / self.stage_ms["frame"] if self.stage_ms.get("frame") else 0.0

    def line(self, scene: str) -> str:
        ms = self.stage_ms
        frame = ms.get("frame", float("nan"))
        shares = ", ".join(f"{k} {ms[k]:.0f} ms ({100 * ms[k] / frame:.0f}%)"
                           for k in ("render", "reuse", "train", "infer") if k in ms)
        quality = ""
        if self.psnr_denoised is not None:
            quality = (f" | PSNR {self.psnr_denoised:.2f} dB denoised vs {self.psnr_noisy:.2f} dB noisy "
                       f"({self.reference_spp}-spp reference)")
        head = "interrupted after " if self.interrupted else ""
        return (f"{scene}: {head}{self.frames} frames in {self.seconds:.1f} s, {self.fps:.2f} frames/s "
                f"[{shares} of {frame:.0f} ms] | {self.steps} steps, loss {self.loss:.4f} (median of the last "
                f"{RECENT_STEPS}), "
                f"est. MSE {self.estimate_mse:.3g}{quality} | wrote {self.out}")


def _recent_estimate(records: list[dict], count: int = 10) -> float:
    """Mean of the last ``count`` distinct error estimates (frames in between repeat the latest one)."""
    latest = {r["estimate_frame"]: r["estimate_mse"] for r in records if r.get("estimate_frame") is not None}
    return _mean_of([latest[f] for f in sorted(latest)[-count:]])


def _median_of(values: list) -> float:
    return statistics.median(values) if values else float("nan")


def _mean_of(values: list) -> float:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else float("nan")


def _stage_means(records: list[dict]) -> dict[str, float]:
    # The first frames compile kernels and fill the ring; they are not the loop's steady state.
    steady = records[min(len(records) - 1, max(1, len(records) // 10)):] if records else []
    reusing = bool(steady) and "reuse" in steady[0]["ms"]  # the stage exists only with temporal reuse on
    keys = ("render",) + (("reuse",) if reusing else ()) + ("train", "infer", "frame")
    return {k: statistics.fmean(r["ms"][k] for r in steady) if steady else float("nan") for k in keys}


def live_frames(session: Session, frames: int, path_fps: float, seconds: float | None = None
                ) -> Iterator[tuple[int, FrameResult]]:
    """The live loop, shared by ``fly --headless`` and ``bench``: frame i shows the path at i / path_fps.

    Stops after ``frames`` frames, or when ``seconds`` of wall-clock time have passed.
    """
    start = time.perf_counter()
    session.restart_clock()
    for i in range(frames):
        if seconds is not None and time.perf_counter() - start >= seconds:
            return
        yield i, session.step(session.renderer.path.pose(i / path_fps))


def run_headless(session: Session, options: HeadlessOptions, checkpoint_name: str = "model.pt") -> Summary:
    out = options.out
    frames_dir = out / "frames"
    if options.save_every:
        frames_dir.mkdir(parents=True, exist_ok=True)
    renderer = session.renderer
    records: list[dict] = []
    last: FrameResult | None = None
    interrupted = False
    start = time.perf_counter()
    with open(out / "metrics.jsonl", "w", buffering=1) as log:
        try:
            for i, last in live_frames(session, options.frames, options.path_fps):
                record = last.record()
                records.append(record)
                log.write(json.dumps(record) + "\n")
                if options.save_every and (i + 1) % options.save_every == 0:
                    image = to_hwc_numpy(last.denoised)
                    save_png(frames_dir / f"denoised_{i + 1:04d}.png", image, options.exposure)
                    write_exr(frames_dir / f"denoised_{i + 1:04d}.exr", image)
        except KeyboardInterrupt:
            interrupted = True
    seconds = time.perf_counter() - start
    session.close(out / checkpoint_name, meta={"scene": str(renderer.scene_info.xml)})

    summary = Summary(
        frames=len(records), seconds=seconds, interrupted=interrupted, stage_ms=_stage_means(records),
        steps=session.trainer.steps, loss=_median_of(list(session.trainer.losses)[-RECENT_STEPS:]),
        skipped_nonfinite=session.trainer.skipped_nonfinite,
        estimate_mse=_recent_estimate(records),
        budget_events=[list(e) for e in session.budget_events],
        out=str(out),
    )
    if last is not None:
        noisy = pair_average(last.rendered)  # as rendered, before temporal reuse
        denoised = to_hwc_numpy(last.denoised)
        panels = [noisy, denoised]
        if options.reference_spp > 0 and not interrupted:
            reference = to_numpy(renderer.render_color(last.frame.pose, options.reference_spp))
            write_exr(out / "reference.exr", reference)
            panels.append(reference)
            summary.psnr_denoised = psnr(denoised, reference, options.exposure)
            summary.psnr_noisy = psnr(noisy, reference, options.exposure)
            summary.reference_spp = options.reference_spp
        save_png(out / "strip.png", strip(panels), options.exposure)
        write_exr(out / "denoised.exr", denoised)
        write_exr(out / "noisy.exr", noisy)
    atomic_write_json(out / "run.json", {"config": options.config, "summary": {
        **{k: v for k, v in summary.__dict__.items() if k != "out"}, "fps": summary.fps}})
    return summary
