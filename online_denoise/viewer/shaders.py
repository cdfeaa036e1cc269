"""Loading GLSL programs from shaders/: one program per file, stages selected by defines.

A file holds both stages behind ``#if defined VERTEX_SHADER`` / ``#elif defined
FRAGMENT_SHADER`` guards (the moderngl-window convention), and may pull shared
functions in with ``#include "file.glsl"``, which GLSL itself lacks.
"""

from __future__ import annotations

import re
from pathlib import Path

SHADERS_DIR = Path(__file__).resolve().parents[2] / "shaders"
STAGES = ("VERTEX_SHADER", "FRAGMENT_SHADER")
_INCLUDE = re.compile(r'^\s*#include\s+"([^"]+)"\s*$', re.MULTILINE)


class ShaderError(RuntimeError):
    pass


def _expand(path: Path, seen: set[Path]) -> str:
    if path in seen:
        return ""  # include each file once
    seen.add(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ShaderError(f"{path}: cannot read shader ({e.strerror})") from None
    return _INCLUDE.sub(lambda m: _expand(path.parent / m.group(1), seen), text)


def stage_source(name: str, stage: str, folder: Path = SHADERS_DIR) -> str:
    """Full source of one stage of ``folder/name``, with the stage's define after ``#version``."""
    text = _expand(folder / name, set())
    lines = text.splitlines()
    if not lines or not lines[0].startswith("#version"):
        raise ShaderError(f"{folder / name}: the first line must be #version")
    return "\n".join([lines[0], f"#define {stage} 1", *lines[1:]]) + "\n"


def programs(folder: Path = SHADERS_DIR) -> list[str]:
    """Every program in the folder: the files that start with #version (the rest are includes)."""
    return sorted(p.name for p in folder.glob("*.glsl") if p.read_text().lstrip().startswith("#version"))


def load_program(ctx, name: str, folder: Path = SHADERS_DIR):
    """A moderngl program from ``name``; a compile error names the file and stage."""
    sources = {stage: stage_source(name, stage, folder) for stage in STAGES}
    try:
        return ctx.program(vertex_shader=sources["VERTEX_SHADER"], fragment_shader=sources["FRAGMENT_SHADER"])
    except Exception as e:  # moderngl raises its own Error with the driver's log
        raise ShaderError(f"{folder / name}: {e}") from None
