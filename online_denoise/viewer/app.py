"""The live viewer: fly through a scene in a window while the denoiser trains.

Three threads: this one draws at the display rate; a frame worker runs
``Session.step`` (render, denoise, push) as fast as it can; the session's
trainer trains. The display never waits for either: the worker publishes its
newest result (latest wins) and the display uploads it when it next draws.
A failure in the worker or the trainer shows in the HUD and on stderr, and the
window stays usable; closing it stops every thread and saves the checkpoint.
"""

from __future__ import annotations

import json
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import glfw
import numpy as np

from ..arrays import to_hwc_numpy, to_numpy
from ..exr import write_exr
from ..files import atomic_write, atomic_write_json
from .controls import CameraController
from .display import VIEW_MODES, Display, ViewState
from .hud import HudStats, draw_hud
from .window import Window

EXPOSURE_STEP = 0.5  # stops per + / - press
DIVIDER_GRAB_PX = 12  # how close to the split divider a drag must start to move it


@dataclass
class ViewerOptions:
    out: Path
    frames: int | None = None  # quit after this many denoised frames (None: when the window closes)
    exposure: float = 0.0
    screenshot: Path | None = None  # write the window to this PNG when quitting
    view: str = "denoised"
    play: bool = True  # start by playing the scene's camera path
    max_display_fps: float = 60.0  # the display loop sleeps rather than spin, leaving the cores to the work
    # Between new frames and input the window redraws only this often, for the HUD's clocks. The image
    # changes only when a denoised frame arrives, and each redraw costs CPU the loop needs: under Xvfb
    # (Mesa llvmpipe, 960 x 720) redrawing at 27 fps held sunlit-room's loop to 1.32 frames/s.
    idle_redraw_hz: float = 4.0
    window_size: tuple[int, int] = (960, 720)
    config: dict = field(default_factory=dict)


@dataclass
class Published:
    """What the worker hands to the display: plain arrays and numbers."""
    seq: int
    buffers: dict[str, np.ndarray]
    record: dict
    timings: dict[str, float]
    steps: int
    loss: float
    estimate: dict[str, float]


class FrameWorker:
    def __init__(self, session, controller: CameraController, metrics_path: Path):
        self.session = session
        self.controller = controller
        self.error: str | None = None
        self.frames = 0
        self._latest: Published | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._log = open(metrics_path, "w", buffering=1)
        self._thread = threading.Thread(target=self._run, name="frame-worker", daemon=True)

    def start(self) -> "FrameWorker":
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                result = self.session.step(self.controller.pose)
                frame = result.frame
                # "noisy" is render a as rendered: the reused running mean is the network's input, not a view.
                buffers = {"denoised": to_hwc_numpy(result.denoised), "noisy": to_numpy(result.rendered.color_a),
                           "albedo": to_numpy(frame.albedo), "normal": to_numpy(frame.normal)}
                record = result.record()
                self._log.write(json.dumps(record) + "\n")
                self.frames += 1
                with self._lock:
                    self._latest = Published(self.frames, buffers, record, result.timings, result.steps,
                                             result.loss, result.estimate)
        except Exception as e:  # shown in the HUD; the window stays up
            self.error = f"{type(e).__name__}: {e}"
            print(f"online-denoise: error in the render loop: {self.error}", file=sys.stderr)

    def take(self, after: int) -> Published | None:
        """The newest result if it is newer than ``after``."""
        with self._lock:
            latest = self._latest
        return latest if latest is not None and latest.seq > after else None

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self._log.close()


class Viewer:
    def __init__(self, session, options: ViewerOptions):
        self.session = session
        self.options = options
        cfg = options.config
        res = cfg.get("res", [0, 0])
        title = f"online_denoise - {Path(cfg.get('scene', 'scene')).parent.name}"
        self.window = Window(title, options.window_size)
        self.display = Display(self.window.ctx)
        self.view = ViewState(VIEW_MODES.index(options.view), options.exposure)
        self.controller = CameraController(session.renderer.path)
        self.controller.playing = options.play
        self.stats = HudStats(device=cfg.get("device", ""), variant=cfg.get("variant", ""),
                              resolution=(res[0], res[1]), spp=cfg.get("spp", 0), exposure=options.exposure)
        self.show_help = False
        self.training = True
        self.shown: Published | None = None
        self.upload_ms: list[float] = []
        self.hud_ms: list[float] = []
        self.dragging_divider = False
        self._shots = 0
        self._shot_requested = False
        self._message_until = 0.0
        self._fps_clock: list[float] = []
        # Display loop iterations, those with something new to show, and redraws (idle_redraw_hz).
        self.loop_counts = {"polls": 0, "changes": 0, "redraws": 0, "seconds": 0.0}
        self._denoised_clock: list[float] = []
        options.out.mkdir(parents=True, exist_ok=True)
        self.worker = FrameWorker(session, self.controller, options.out / "metrics.jsonl").start()

    # -- input ----------------------------------------------------------------------

    def _say(self, message: str) -> None:
        self.stats.message = message
        self._message_until = time.monotonic() + 4.0
        print(f"online-denoise: {message}", file=sys.stderr)

    def _handle_keys(self, pressed) -> None:
        for key, mods in pressed:
            if key == glfw.KEY_ESCAPE:
                self.window.request_close()
            elif key == glfw.KEY_P:
                self.controller.toggle_play()
            elif key == glfw.KEY_TAB:
                self.view.mode = (self.view.mode + (-1 if mods & glfw.MOD_SHIFT else 1)) % len(VIEW_MODES)
            elif key in (glfw.KEY_EQUAL, glfw.KEY_KP_ADD):
                self.view.exposure += EXPOSURE_STEP
            elif key in (glfw.KEY_MINUS, glfw.KEY_KP_SUBTRACT):
                self.view.exposure -= EXPOSURE_STEP
            elif key == glfw.KEY_T:
                self.training = not self.training
                self.session.set_training(self.training)
            elif key == glfw.KEY_H:
                self.show_help = not self.show_help
            elif key == glfw.KEY_R:
                self._toggle_recording()
            elif key == glfw.KEY_F12:
                self._shot_requested = True  # taken after this frame is drawn, so it shows this view

    def _toggle_recording(self) -> None:
        if not self.controller.recording:
            self.controller.start_recording()
            self._say("recording the flight (R again to save)")
            return
        path_json = self.controller.stop_recording()
        if path_json is None:
            self._say("recording too short: nothing saved")
            return
        n = len(list(self.options.out.glob("recorded_path_*.json")))
        target = self.options.out / f"recorded_path_{n:03d}.json"
        atomic_write_json(target, path_json)
        self._say(f"saved the flight to {target}")

    def _movement(self) -> tuple[float, float, float]:
        held = self.window.held
        right = float(held(glfw.KEY_D)) - float(held(glfw.KEY_A))
        up = float(held(glfw.KEY_E)) - float(held(glfw.KEY_Q))
        forward = float(held(glfw.KEY_W)) - float(held(glfw.KEY_S))
        return right, up, forward

    def _divider_x(self) -> float:
        x0, _, w, _ = self.display.image_rect(self.window.size)
        return x0 + self.view.divider * w

    def _handle_mouse(self, events) -> tuple[float, float]:
        """Returns the look delta in pixels; a drag that starts on the split divider moves it instead."""
        split = VIEW_MODES[self.view.mode] == "split"
        if events.clicked is not None:
            self.dragging_divider = split and abs(events.clicked[0] - self._divider_x()) <= DIVIDER_GRAB_PX
        if not self.dragging_divider:
            return events.drag
        x0, _, w, _ = self.display.image_rect(self.window.size)
        if w > 0:  # the cursor's last position, even when the release came in the same poll
            self.view.divider = float(np.clip((self.window.cursor[0] - x0) / w, 0.0, 1.0))
        if events.released or not self.window.buttons_held:
            self.dragging_divider = False
        return 0.0, 0.0

    # -- output ---------------------------------------------------------------------

    def screenshot(self, path: Path | None = None) -> Path:
        """PNG of the window as drawn (HUD included), the linear frame as EXR, and the HUD text."""
        if path is None:
            shots = self.options.out / "screenshots"
            shots.mkdir(parents=True, exist_ok=True)
            path = shots / f"shot_{self._shots:03d}.png"
            self._shots += 1
        from PIL import Image

        pixels = self.display.read_screen(self.window.framebuffer_size)
        atomic_write(path, lambda f: Image.fromarray(pixels, "RGB").save(f, format="PNG"))
        meta = {"view": VIEW_MODES[self.view.mode], "exposure": self.view.exposure, "divider": self.view.divider,
                "hud": self.stats.lines(), "window": list(self.window.framebuffer_size),
                "image_rect": list(self.display.image_rect(self.window.framebuffer_size)),
                "frame": self.shown.record if self.shown else None}
        if self.shown is not None:
            write_exr(path.with_suffix(".exr"), self.shown.buffers["denoised"])
        atomic_write_json(path.with_suffix(".json"), meta)
        self._say(f"screenshot {path}")
        return path

    # -- the loop -------------------------------------------------------------------

    def _update_stats(self, now: float) -> None:
        s = self.stats
        # Redraws per second over the last two seconds (draw() stamps the clock).
        self._fps_clock = [t for t in self._fps_clock if now - t < 2.0]
        s.display_fps = (len(self._fps_clock) - 1) / max(now - self._fps_clock[0], 1e-6) if self._fps_clock else 0.0
        s.view, s.exposure = VIEW_MODES[self.view.mode], self.view.exposure
        s.playing, s.recording, s.training = self.controller.playing, self.controller.recording, self.training
        s.speed = self.controller.speed
        s.error = self.worker.error
        if s.message and now > self._message_until:
            s.message = ""

    def _take_new_frame(self, now: float) -> bool:
        new = self.worker.take(self.shown.seq if self.shown else 0)
        if new is None:
            return False
        upload = self.display.upload(new.buffers)
        self.upload_ms.append(upload)
        self.shown = new
        s = self.stats
        s.stage_ms = {**new.timings, "upload": upload}
        s.frame_ms = new.timings.get("frame", 0.0)
        s.frames, s.steps = new.seq, new.steps
        if new.loss == new.loss:
            s.losses = (s.losses + [new.loss])[-200:]
        s.estimate_mse, s.noisy_mse = new.estimate.get("mse"), new.estimate.get("noisy_mse")
        self._denoised_clock = [t for t in self._denoised_clock if now - t < 5.0] + [now]
        span = now - self._denoised_clock[0]
        s.denoised_fps = (len(self._denoised_clock) - 1) / span if span > 0 else 0.0
        return True

    def draw(self) -> None:
        self._fps_clock.append(time.perf_counter())
        self.display.draw(self.view, self.window.framebuffer_size)
        t0 = time.perf_counter()
        self.window.begin_gui()
        draw_hud(self.stats, self.show_help)
        self.window.end_gui()
        self.hud_ms.append((time.perf_counter() - t0) * 1000)

    def run(self) -> int:
        last = time.perf_counter()
        min_dt = 1.0 / self.options.max_display_fps
        idle_dt = 1.0 / self.options.idle_redraw_hz
        target = self.options.frames
        last_draw, last_size, last_message = -math.inf, None, None
        started = time.perf_counter()
        while not self.window.should_close():
            self.loop_counts["polls"] += 1
            self.window.poll()
            now = time.perf_counter()
            dt, last = now - last, now
            events = self.window.take_input()
            self._handle_keys(events.pressed)
            look = self._handle_mouse(events)
            if events.scroll:
                self.controller.scroll(events.scroll)
            self.controller.update(dt, self._movement(), look)
            fresh = self._take_new_frame(now)
            self._update_stats(now)
            size = self.window.framebuffer_size
            changed = (fresh or events.pressed or events.drag != (0.0, 0.0) or events.scroll or events.clicked
                       or events.released or size != last_size or self.stats.message != last_message
                       or self._shot_requested)
            done = target is not None and self.shown is not None and self.shown.seq >= target
            self.loop_counts["changes"] += bool(changed or done)
            if not (changed or done or now - last_draw >= idle_dt):
                time.sleep(min_dt)  # input is still polled at the full rate
                continue
            last_draw, last_size, last_message = now, size, self.stats.message
            self.loop_counts["redraws"] += 1
            self.draw()
            if self._shot_requested:
                self._shot_requested = False
                self.screenshot()
            if done:
                break
            self.window.swap()
            if target is not None and not self.worker.alive:
                break
            spare = min_dt - (time.perf_counter() - now)
            if spare > 0:
                time.sleep(spare)
        self.loop_counts["seconds"] = time.perf_counter() - started
        if self.options.screenshot is not None:
            self.draw()  # the window still exists after a close request: draw the final state once more
            self.screenshot(self.options.screenshot)
        return 1 if self.worker.error else 0

    def close(self, checkpoint: Path) -> Path | None:
        self.worker.stop()
        saved = self.session.close(checkpoint, meta={"scene": self.options.config.get("scene")})
        summary = {
            "frames": self.worker.frames,
            "display_fps": self.stats.display_fps,
            "denoised_fps": self.stats.denoised_fps,
            "upload_ms_mean": float(np.mean(self.upload_ms)) if self.upload_ms else None,
            "hud_ms_mean": float(np.mean(self.hud_ms)) if self.hud_ms else None,
            "hud_ms_p95": float(np.percentile(self.hud_ms, 95)) if self.hud_ms else None,
            "error": self.worker.error,
            "loop": self.loop_counts,
        }
        atomic_write_json(self.options.out / "run.json", {"config": self.options.config, "summary": summary})
        self.display.release()
        self.window.close()
        return saved


def run_viewer(session, options: ViewerOptions) -> int:
    viewer = Viewer(session, options)
    code = 0
    try:
        code = viewer.run()
    except KeyboardInterrupt:
        code = 130
    finally:
        saved = viewer.close(options.out / "model.pt")
    s = viewer.stats
    print(f"viewer: {viewer.worker.frames} frames, display {s.display_fps:.1f} fps, denoised {s.denoised_fps:.2f} "
          f"frames/s, HUD {np.mean(viewer.hud_ms) if viewer.hud_ms else 0:.1f} ms/frame | saved {saved}")
    return code
