"""Shared fixtures. Renders are tiny (32 x 32, 1 spp) so the whole suite stays fast on 2 cores.

Renders the tests read pixels of come back as numpy arrays on every variant (on cuda_ad_rgb they
would otherwise stay drjit tensors on the GPU).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_renderer():
    from renderer import Renderer, RenderConfig

    return Renderer(RenderConfig(scene="cornell-box", width=32, height=32, spp=1, arrays="numpy"))


def make_frame(h=32, w=32, value_a=0.5, value_b=0.5, seed=0, index=0):
    """A synthetic frame: constant-ish colours plus noise, valid aux buffers."""
    rng = np.random.default_rng(seed)
    a = (value_a + 0.1 * rng.standard_normal((h, w, 3))).astype(np.float32).clip(0, None)
    b = (value_b + 0.1 * rng.standard_normal((h, w, 3))).astype(np.float32).clip(0, None)
    albedo = np.full((h, w, 3), 0.7, np.float32)
    normal = np.zeros((h, w, 3), np.float32)
    normal[..., 2] = 1.0
    return SimpleNamespace(color_a=a, color_b=b, albedo=albedo, normal=normal, index=index)


@pytest.fixture
def frame_factory():
    return make_frame


def run_cli(*args, cwd=None, timeout=600, display=None):
    """Run the CLI as a user would, in a subprocess; headless unless ``display`` is given."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONUNBUFFERED"] = "1"
    if display is not None:
        env["DISPLAY"] = display
    return subprocess.run([sys.executable, "-m", "online_denoise.cli", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def cli():
    return run_cli
