"""Mitsuba 3 renders for online_denoise.

This package imports neither torch nor any GL library; it hands out plain
``Frame`` objects. Mitsuba itself is imported only when a ``Renderer`` is
built, after the variant (and the LLVM library behind it) has been checked.
"""

from .camera import CameraPath, PathError, Pose, load_path, orbit_path, path_from_json
from .errors import RendererError
from .frame import Frame
from .render import Renderer, RenderConfig
from .scene import DEFAULT_SCENE, SceneError, SceneInfo, list_scenes, resolve_scene
from .variant import VariantError, choose_variant

__all__ = [
    "CameraPath", "DEFAULT_SCENE", "Frame", "PathError", "Pose", "RenderConfig", "Renderer",
    "RendererError", "SceneError", "SceneInfo", "VariantError", "choose_variant", "list_scenes",
    "load_path", "orbit_path", "path_from_json", "resolve_scene",
]
