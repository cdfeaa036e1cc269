"""Every built-in scene loads, renders sane buffers, and has a camera path that stays in its bounds."""

import importlib.util

import numpy as np
import pytest

from renderer import RenderConfig, Renderer, list_scenes
from renderer.scene import SCENES_DIR

SCENES = [s.name for s in list_scenes()]
REQUIRED = {"cornell-box", "sunlit-room", "glossy-metals", "glass-caustics", "fine-texture", "fairy-lights"}


def test_the_library_has_the_six_kinds_of_noise():
    assert REQUIRED <= set(SCENES)
    for s in list_scenes():
        assert s.description, f"{s.name}: README.md needs a one-line description"
        readme = (SCENES_DIR / s.name / "README.md").read_text()
        assert "Why it is hard" in readme and "Render time" in readme, s.name


@pytest.fixture(scope="module", params=SCENES)
def scene(request):
    return request.param, Renderer(RenderConfig(scene=request.param, width=16, height=16, spp=1))


def test_renders_sane_buffers(scene):
    name, r = scene
    f = r.render_pair(r.initial_pose)
    assert np.isfinite(f.color_a).all() and np.isfinite(f.color_b).all(), name
    assert f.color_a.min() >= 0 and f.color_a.max() > 0, name
    assert f.albedo.min() >= 0 and f.albedo.max() <= 1, name
    n = np.linalg.norm(f.normal, axis=-1)
    hit = n > 0
    np.testing.assert_allclose(n[hit], 1.0, atol=1e-3, err_msg=name)


def test_path_stays_inside_its_bounds_and_sees_the_scene(scene):
    name, r = scene
    path = r.path
    assert path.bounds is not None, f"{name}: path.json should declare the camera's bounds"
    assert 10 <= path.duration <= 30, f"{name}: a fly-through of 10-30 s"
    lo, hi = path.bounds
    for t in np.linspace(0, path.duration, 241):
        p = path.pose(t).position
        assert np.all(p >= lo) and np.all(p <= hi), f"{name}: t={t:.2f} camera at {p} leaves {lo}..{hi}"
    for t in np.linspace(0, path.duration, 5)[:-1]:
        f = r.render_pair(path.pose(t))
        seen = (np.linalg.norm(f.normal, axis=-1) > 0).mean()
        assert seen > 0.5, f"{name}: at t={t:.1f} the camera sees mostly nothing ({seen:.0%} of pixels hit)"


def test_generated_assets_are_reproducible(tmp_path):
    spec = importlib.util.spec_from_file_location("generate_assets", SCENES_DIR / "generate_assets.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    gen.main(tmp_path)
    for name in gen.ASSETS:
        assert (tmp_path / name).read_bytes() == (SCENES_DIR / name).read_bytes(), name
