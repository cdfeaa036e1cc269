"""A GLFW window with a moderngl context and Dear ImGui (imgui-bundle) on top.

Knows nothing about denoising: it collects input as plain state (keys held,
keys pressed this frame, mouse drag, scroll) and hands GLFW's events to ImGui
too, so that widgets and the camera share one event stream. Input over an
ImGui window goes to ImGui only.
"""

from __future__ import annotations

from dataclasses import dataclass

import glfw  # before imgui_bundle, so that both use this GLFW library

# imgui-bundle's GLFW backend draws with PyOpenGL; moderngl shares the same context.
from imgui_bundle import imgui
from imgui_bundle.python_backends.glfw_backend import GlfwRenderer
import moderngl


class WindowError(RuntimeError):
    pass


@dataclass
class Input:
    """What happened since the last ``take_input()``; several events can land in one poll."""
    pressed: list[tuple[int, int]]  # (key, mods), in order
    drag: tuple[float, float]  # cursor travel, in pixels, while a button was held
    scroll: float
    clicked: tuple[float, float] | None  # where the left button went down
    released: bool  # the left button came up


class Window:
    def __init__(self, title: str, size: tuple[int, int] = (960, 720)):
        if not glfw.init():
            raise WindowError("GLFW could not initialise (is there a display?)")
        glfw.window_hint(glfw.CONTEXT_VERSION_MAJOR, 3)
        glfw.window_hint(glfw.CONTEXT_VERSION_MINOR, 3)
        glfw.window_hint(glfw.OPENGL_PROFILE, glfw.OPENGL_CORE_PROFILE)
        glfw.window_hint(glfw.OPENGL_FORWARD_COMPAT, True)
        glfw.window_hint(glfw.RESIZABLE, True)
        self.handle = glfw.create_window(size[0], size[1], title, None, None)
        if not self.handle:
            glfw.terminate()
            raise WindowError("GLFW could not open an OpenGL 3.3 core window")
        glfw.make_context_current(self.handle)
        glfw.swap_interval(1)
        self.ctx = moderngl.create_context(require=330)
        imgui.create_context()
        imgui.get_io().set_ini_filename("")  # do not litter the working folder with imgui.ini
        self.imgui = GlfwRenderer(self.handle, attach_callbacks=False)

        self.keys_held: set[int] = set()
        self.keys_pressed: list[tuple[int, int]] = []  # (key, mods) pressed since the last take_input()
        self.buttons_held: set[int] = set()
        self.cursor = (0.0, 0.0)
        self.drag = [0.0, 0.0]
        self.scroll = 0.0
        self.clicked: tuple[float, float] | None = None  # where the left button went down, if this frame
        self.released = False
        glfw.set_key_callback(self.handle, self._on_key)
        glfw.set_char_callback(self.handle, self.imgui.char_callback)
        glfw.set_mouse_button_callback(self.handle, self._on_button)
        glfw.set_cursor_pos_callback(self.handle, self._on_cursor)
        glfw.set_scroll_callback(self.handle, self._on_scroll)
        glfw.set_window_size_callback(self.handle, self.imgui.resize_callback)

    # -- GLFW callbacks ------------------------------------------------------------

    def _imgui_wants(self, mouse: bool) -> bool:
        io = imgui.get_io()
        return io.want_capture_mouse if mouse else io.want_capture_keyboard

    def _on_key(self, window, key, scancode, action, mods) -> None:
        self.imgui.keyboard_callback(window, key, scancode, action, mods)
        if action == glfw.PRESS:
            if not self._imgui_wants(False):
                self.keys_held.add(key)
                self.keys_pressed.append((key, mods))
        elif action == glfw.RELEASE:
            self.keys_held.discard(key)

    def _on_button(self, window, button, action, mods) -> None:
        self.imgui.mouse_button_callback(window, button, action, mods)
        if action == glfw.PRESS and not self._imgui_wants(True):
            self.buttons_held.add(button)
            if button == glfw.MOUSE_BUTTON_LEFT:
                self.clicked = self.cursor
        elif action == glfw.RELEASE:
            self.buttons_held.discard(button)
            if button == glfw.MOUSE_BUTTON_LEFT:
                self.released = True

    def _on_cursor(self, window, x, y) -> None:
        self.imgui.mouse_callback(window, x, y)
        if self.buttons_held:
            self.drag[0] += x - self.cursor[0]
            self.drag[1] += y - self.cursor[1]
        self.cursor = (x, y)

    def _on_scroll(self, window, dx, dy) -> None:
        self.imgui.scroll_callback(window, dx, dy)
        if not self._imgui_wants(True):
            self.scroll += dy

    # -- per frame ----------------------------------------------------------------

    def poll(self) -> None:
        glfw.poll_events()

    def take_input(self) -> Input:
        taken = Input(self.keys_pressed, (self.drag[0], self.drag[1]), self.scroll, self.clicked, self.released)
        self.keys_pressed, self.drag, self.scroll, self.clicked, self.released = [], [0.0, 0.0], 0.0, None, False
        return taken

    def held(self, key: int) -> bool:
        return key in self.keys_held

    @property
    def framebuffer_size(self) -> tuple[int, int]:
        return glfw.get_framebuffer_size(self.handle)

    @property
    def size(self) -> tuple[int, int]:
        return glfw.get_window_size(self.handle)

    def should_close(self) -> bool:
        return bool(glfw.window_should_close(self.handle))

    def request_close(self) -> None:
        glfw.set_window_should_close(self.handle, True)

    def begin_gui(self) -> None:
        self.imgui.process_inputs()
        imgui.new_frame()

    def end_gui(self) -> None:
        imgui.render()
        self.imgui.render(imgui.get_draw_data())

    def swap(self) -> None:
        glfw.swap_buffers(self.handle)

    def close(self) -> None:
        self.imgui.shutdown()
        imgui.destroy_context()
        glfw.destroy_window(self.handle)
        glfw.terminate()
