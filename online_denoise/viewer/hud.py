"""The heads-up display, drawn with Dear ImGui from a plain stats object."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from imgui_bundle import imgui

from .display import VIEW_MODES

CONTROLS = (
    ("WASD / QE", "move (QE: down / up)"),
    ("mouse drag", "look"),
    ("scroll", "flying speed"),
    ("P", "play / pause the scene's path"),
    ("R", "record the flight to JSON"),
    ("Tab", "next view: " + ", ".join(VIEW_MODES)),
    ("drag divider", "move the split (split view)"),
    ("+ / -", "exposure"),
    ("T", "pause / resume training"),
    ("F12", "screenshot: PNG + linear EXR"),
    ("H", "this help"),
    ("Esc", "quit, saving the checkpoint"),
)
STAGES = ("render", "reuse", "train", "infer", "upload")
STAGE_COLORS = {"render": (0.3, 0.6, 1.0, 1.0), "reuse": (0.3, 0.85, 0.9, 1.0), "train": (1.0, 0.55, 0.2, 1.0),
                "infer": (0.4, 0.85, 0.4, 1.0), "upload": (0.8, 0.5, 0.9, 1.0)}


@dataclass
class HudStats:
    display_fps: float = 0.0
    denoised_fps: float = 0.0
    stage_ms: dict[str, float] = field(default_factory=dict)
    frame_ms: float = 0.0
    frames: int = 0
    steps: int = 0
    losses: list[float] = field(default_factory=list)
    estimate_mse: float | None = None
    noisy_mse: float | None = None
    device: str = ""
    variant: str = ""
    resolution: tuple[int, int] = (0, 0)
    spp: int = 0
    view: str = "denoised"
    exposure: float = 0.0
    training: bool = True
    playing: bool = True
    recording: bool = False
    speed: float = 0.0
    error: str | None = None
    message: str = ""

    def lines(self) -> list[str]:
        """The HUD's text, also written next to screenshots so tests and users can read it."""
        ms = self.stage_ms
        est = "-" if self.estimate_mse is None else f"{self.estimate_mse:.3g}"
        noisy = "-" if self.noisy_mse is None else f"{self.noisy_mse:.3g}"
        return [
            f"display {self.display_fps:5.1f} fps | denoised {self.denoised_fps:4.2f} frames/s",
            "ms: " + "  ".join(f"{k} {ms.get(k, 0.0):.0f}" for k in STAGES),
            f"steps {self.steps}{'' if self.training else ' (paused)'} | loss "
            f"{self.losses[-1] if self.losses else float('nan'):.4f}",
            f"est. MSE {est} (noisy {noisy})",
            f"{self.device} | {self.variant} | {self.resolution[0]}x{self.resolution[1]} | {self.spp} spp x 2",
            f"view {self.view} | exposure {self.exposure:+.1f} | "
            f"{'path' if self.playing else 'manual'}{' | REC' if self.recording else ''}",
        ]


def draw_hud(stats: HudStats, show_help: bool) -> None:
    imgui.set_next_window_pos((8, 8), imgui.Cond_.always)
    imgui.set_next_window_bg_alpha(0.75)
    flags = (imgui.WindowFlags_.no_decoration | imgui.WindowFlags_.always_auto_resize
             | imgui.WindowFlags_.no_focus_on_appearing | imgui.WindowFlags_.no_nav | imgui.WindowFlags_.no_move)
    imgui.begin("HUD", None, flags)
    lines = stats.lines()
    imgui.text(lines[0])
    frame = max(stats.frame_ms, *[stats.stage_ms.get(k, 0.0) for k in STAGES], 1.0)
    for name in STAGES:
        ms = stats.stage_ms.get(name, 0.0)
        imgui.push_style_color(imgui.Col_.plot_histogram, STAGE_COLORS[name])
        imgui.progress_bar(min(ms / frame, 1.0), (220, 0), f"{name} {ms:.0f} ms")
        imgui.pop_style_color()
    imgui.text(lines[2])
    if len(stats.losses) > 1:
        values = np.log10(np.clip(np.asarray(stats.losses, np.float32), 1e-6, None))
        imgui.plot_lines("##loss", values, graph_size=(220, 36), overlay_text="log10 loss")
    for line in lines[3:]:
        imgui.text(line)
    if stats.error:
        imgui.text_colored((1.0, 0.35, 0.3, 1.0), stats.error)
    elif stats.message:
        imgui.text_colored((1.0, 0.85, 0.3, 1.0), stats.message)
    imgui.text_disabled("H: help")
    imgui.end()

    if show_help:
        vp = imgui.get_main_viewport().size
        imgui.set_next_window_pos((vp.x - 8, 8), imgui.Cond_.always, (1.0, 0.0))
        imgui.set_next_window_bg_alpha(0.85)
        imgui.begin("Controls", None, flags)
        if imgui.begin_table("controls", 2):
            for key, action in CONTROLS:
                imgui.table_next_row()
                imgui.table_next_column()
                imgui.text(key)
                imgui.table_next_column()
                imgui.text(action)
            imgui.end_table()
        imgui.end()
