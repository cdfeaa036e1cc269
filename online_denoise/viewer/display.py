"""GL side of the viewer: float textures for the frame's buffers, the view program, read-back.

Knows moderngl and numpy, nothing about training or rendering.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from .shaders import load_program

VIEW_MODES = ("denoised", "noisy", "albedo", "normal", "difference", "split")
BUFFERS = ("denoised", "noisy", "albedo", "normal")


class FloatTexture:
    """An RGB float texture, reused while the image keeps its size and recreated otherwise."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.texture = None

    def upload(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        data = np.ascontiguousarray(image, dtype=np.float32)
        if self.texture is None or self.texture.size != (w, h):
            if self.texture is not None:
                self.texture.release()
            self.texture = self.ctx.texture((w, h), 3, dtype="f4")
            self.texture.filter = (self.ctx.NEAREST, self.ctx.NEAREST)  # show the render's pixels as they are
        self.texture.write(data.tobytes())

    def release(self) -> None:
        if self.texture is not None:
            self.texture.release()
            self.texture = None


@dataclass
class ViewState:
    mode: int = 0  # index into VIEW_MODES
    exposure: float = 0.0  # stops
    divider: float = 0.5  # split position, fraction of the image width


class Display:
    def __init__(self, ctx):
        self.ctx = ctx
        self.program = load_program(ctx, "view.glsl")
        self.vao = ctx.vertex_array(self.program, [])
        self.textures = {name: FloatTexture(ctx) for name in BUFFERS}
        self.image_size: tuple[int, int] | None = None  # (w, h) of the render
        for unit, name in enumerate(BUFFERS):
            self.program[name].value = unit

    def upload(self, buffers: dict[str, np.ndarray]) -> float:
        """Upload a frame's H x W x 3 buffers; returns the milliseconds it took, GPU finish included."""
        t0 = time.perf_counter()
        for name in BUFFERS:
            self.textures[name].upload(buffers[name])
        self.ctx.finish()  # the upload is only done when the driver says so
        h, w = buffers["denoised"].shape[:2]
        self.image_size = (w, h)
        return (time.perf_counter() - t0) * 1000

    def image_rect(self, window_size: tuple[int, int]) -> tuple[float, float, float, float]:
        """(x0, y0, width, height) in window pixels where the letterboxed image lies."""
        ww, wh = window_size
        if self.image_size is None or ww == 0 or wh == 0:
            return 0.0, 0.0, float(ww), float(wh)
        iw, ih = self.image_size
        s = min(ww / iw, wh / ih)
        w, h = iw * s, ih * s
        return (ww - w) / 2, (wh - h) / 2, w, h

    def draw(self, view: ViewState, framebuffer_size: tuple[int, int]) -> None:
        fw, fh = framebuffer_size
        self.ctx.screen.use()
        self.ctx.viewport = (0, 0, fw, fh)
        self.ctx.clear(0.08, 0.08, 0.08)
        if self.image_size is None:
            return
        _, _, w, h = self.image_rect((fw, fh))
        p = self.program
        p["scale"].value = (w / fw, h / fh)
        p["mode"].value = view.mode
        p["exposure"].value = view.exposure
        p["divider"].value = view.divider
        p["divider_px"].value = 1.0 / max(w, 1.0)
        for unit, name in enumerate(BUFFERS):
            self.textures[name].texture.use(unit)
        self.vao.render(vertices=3)

    def read_screen(self, framebuffer_size: tuple[int, int]) -> np.ndarray:
        """The window's pixels as an H x W x 3 uint8 array, top row first."""
        w, h = framebuffer_size
        data = self.ctx.screen.read(viewport=(0, 0, w, h), components=3, alignment=1)
        # Reading the default framebuffer leaves GL_INVALID_OPERATION pending (moderngl selects a
        # colour attachment the window's framebuffer does not have; the pixels are still right).
        # Clear it here, or PyOpenGL, which checks after every call, blames ImGui's next call.
        _ = self.ctx.error
        return np.frombuffer(data, np.uint8).reshape(h, w, 3)[::-1].copy()

    def release(self) -> None:
        for t in self.textures.values():
            t.release()
        self.vao.release()
        self.program.release()
