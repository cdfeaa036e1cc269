"""The Mitsuba side, on tiny renders."""

import os
import subprocess
import sys

import numpy as np
import pytest

from renderer import RenderConfig, Renderer, RendererError, SceneError, resolve_scene
from renderer import variant as variant_mod
from renderer.scene import prepare_xml


def test_render_pair_shapes_types_and_timing(tiny_renderer):
    f = tiny_renderer.render_pair(tiny_renderer.initial_pose, index=3)
    for name in ("color_a", "color_b", "albedo", "normal"):
        x = getattr(f, name)
        assert isinstance(x, np.ndarray) and x.shape == (32, 32, 3) and x.dtype == np.float32, name
    assert f.index == 3 and f.spp == 1 and f.timings["render"] > 0
    assert np.isfinite(f.color_a).all() and f.color_a.max() > 0
    assert not np.array_equal(f.color_a, f.color_b)


def test_seeds_are_distinct_and_never_reused(tiny_renderer):
    seen = []
    for i in range(5):
        seen += list(tiny_renderer.render_pair(tiny_renderer.initial_pose, i).seeds.values())
    assert len(set(seen)) == len(seen)


def test_albedo_is_clamped_and_normals_are_unit_where_geometry_is_hit(tiny_renderer):
    f = tiny_renderer.render_pair(tiny_renderer.initial_pose)
    assert f.albedo.min() >= 0 and f.albedo.max() <= 1
    n = np.linalg.norm(f.normal, axis=-1)
    hit = n > 0
    assert hit.mean() > 0.5
    np.testing.assert_allclose(n[hit], 1.0, atol=1e-3)  # 1 spp: one sample per pixel


def test_the_aux_pass_takes_its_own_sample_count():
    # One sample gives each pixel one face's normal; 16 give the pixels on an edge their coverage.
    r = Renderer(RenderConfig(scene="cornell-box", width=32, height=32, spp=1, aux_spp=16, arrays="numpy"))
    f = r.render_pair(r.initial_pose)
    assert f.spp == 1
    n = np.linalg.norm(f.normal, axis=-1)
    mixed = (n > 0.05) & (n < 0.95)
    assert 10 < mixed.sum() < 0.3 * n.size
    r.set_aux_spp(1)
    n = np.linalg.norm(r.render_pair(r.initial_pose).normal, axis=-1)
    assert not ((n > 0.05) & (n < 0.95)).any()
    with pytest.raises(ValueError, match="aux spp 0"):
        r.set_aux_spp(0)


def test_emission_is_the_light_where_the_camera_sees_it_and_zero_elsewhere(tiny_renderer):
    f = tiny_renderer.render_pair(tiny_renderer.initial_pose)
    assert f.emission.shape == (32, 32, 3) and f.emission.dtype == np.float32
    lit = f.emission.max(-1) > 0
    assert 0 < lit.sum() < 0.1 * lit.size  # the ceiling light, seen from below
    # 1 spp: each pixel is one sample, so it saw the light's radiance (scene.xml) or nothing.
    np.testing.assert_allclose(f.emission[lit], np.broadcast_to([18.387, 13.9873, 6.75357], (lit.sum(), 3)),
                               rtol=1e-4)
    assert f.color_a[lit].mean() > 10 * f.color_a[~lit].mean()


def test_the_aux_pass_matches_mitsubas_aov_integrator(tiny_renderer):
    """One intersection gives what the aov integrator with a first-hit path tracer inside gives with two."""
    from renderer import aux

    r = tiny_renderer
    r.set_pose(r.initial_pose)
    reference = r._mi.load_dict({"type": "aov", "aovs": aux.AOVS, "integrator": {"type": "path", "max_depth": 1}})
    ours = np.asarray(r._aux_integrator.render(r.scene, r.sensor, seed=5, spp=2))
    theirs = np.asarray(reference.render(r.scene, r.sensor, seed=5, spp=2))
    assert ours.shape == theirs.shape == (32, 32, 13)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_emission_includes_the_environment_where_rays_leave_the_scene(tmp_path):
    xml = tmp_path / "ball.xml"
    xml.write_text('<scene version="3.0.0"><emitter type="constant"><rgb name="radiance" value="0.25"/></emitter>'
                   '<sensor type="perspective"><transform name="to_world">'
                   '<lookat origin="0, 0, 6" target="0, 0, 0" up="0, 1, 0"/></transform></sensor>'
                   '<shape type="sphere"><float name="radius" value="1"/></shape></scene>')
    r = Renderer(RenderConfig(scene=str(xml), width=16, height=16, spp=1, arrays="numpy"))
    f = r.render_pair(r.initial_pose)
    hit = np.linalg.norm(f.normal, axis=-1) > 0.5
    assert 0 < hit.sum() < hit.size
    assert np.all(f.emission[hit] == 0)  # the sphere reflects the sky but does not emit
    np.testing.assert_allclose(f.emission[~hit], 0.25, rtol=1e-5)


@pytest.mark.parametrize("fog", [False, True])
def test_rays_that_leave_the_scene_have_no_normal_unless_the_camera_is_in_a_medium(tmp_path, fog):
    """A zero normal marks the noise-free background; fog around the camera is not that."""
    xml = tmp_path / "ball.xml"
    medium = '<medium type="homogeneous" id="fog"><float name="sigma_t" value="0.2"/></medium>' if fog else ""
    xml.write_text(f'<scene version="3.0.0">{medium}<emitter type="constant"/>'
                   '<sensor type="perspective">' + ('<ref id="fog"/>' if fog else "")
                   + '<transform name="to_world"><lookat origin="0, 0, 6" target="0, 0, 0" up="0, 1, 0"/></transform>'
                   '</sensor><shape type="sphere"><float name="radius" value="1"/></shape></scene>')
    r = Renderer(RenderConfig(scene=str(xml), width=16, height=16, spp=1, arrays="numpy"))
    f = r.render_pair(r.initial_pose)
    miss = (f.position == 0).all(-1)
    assert 0 < miss.sum() < miss.size
    lengths = np.linalg.norm(f.normal[miss], axis=-1)
    if fog:
        np.testing.assert_allclose(lengths, 1.0, rtol=1e-4)
        assert (f.normal[miss][:, 2] > 0.9).all()  # facing the camera, which looks down -z
    else:
        assert (lengths == 0).all()


def test_each_shape_carries_its_lobe_width(tmp_path):
    """Frame.lobes, indexed by the aux pass's shape index, gives each pixel its material's view dependence."""
    xml = tmp_path / "balls.xml"
    ball = '<shape type="sphere"><point name="center" value="{x}, 0, 0"/><float name="radius" value="0.9"/>{bsdf}</shape>'
    bsdfs = {
        -3: '<bsdf type="diffuse"/>',
        -1: '<bsdf type="twosided"><bsdf type="roughconductor"><float name="alpha" value="0.07"/></bsdf></bsdf>',
        1: '<bsdf type="roughplastic"><float name="alpha" value="0.3"/></bsdf>',
        3: '<bsdf type="dielectric"/>',
    }
    xml.write_text('<scene version="3.0.0"><sensor type="perspective"><float name="fov" value="90"/>'
                   '<transform name="to_world"><lookat origin="0, 0, 4" target="0, 0, 0" up="0, 1, 0"/>'
                   '</transform></sensor><emitter type="constant"/>'
                   + "".join(ball.format(x=x, bsdf=b) for x, b in bsdfs.items()) + "</scene>")
    r = Renderer(RenderConfig(scene=str(xml), width=64, height=16, spp=1, arrays="numpy"))
    f = r.render_pair(r.initial_pose)
    row = f.surface[8, :, 0]
    # Looking down -z, world +x is to the image's right; each ball's centre column reads its own lobe.
    widths = [f.lobes[int(round(row[int(32 + x * 64 / 8)]))] for x in bsdfs]
    assert widths[0] == float("inf") and widths[3] == 0.0
    assert widths[1] == pytest.approx(0.07) and widths[2] == pytest.approx(0.3)
    assert f.lobes[0] == float("inf")  # a ray that hits nothing


def test_a_scene_with_only_diffuse_shapes_has_an_all_diffuse_lobe_table(tiny_renderer):
    f = tiny_renderer.render_pair(tiny_renderer.initial_pose)
    seen = {int(round(v)) for v in np.unique(np.asarray(f.surface))}
    assert len(seen - {0}) >= 2 and all(f.lobes[i] == float("inf") for i in seen)


def test_lobe_widths_of_nested_textured_and_principled_bsdfs():
    from renderer.lobes import bsdf_lobe

    mi = Renderer(RenderConfig(scene="cornell-box", width=8, height=8, spp=1, arrays="numpy"))._mi
    lobe = lambda d: bsdf_lobe(mi, mi.load_dict(d))
    assert lobe({"type": "principled", "roughness": 0.4}) == pytest.approx(0.16)  # alpha = roughness^2
    assert lobe({"type": "roughconductor", "alpha_u": 0.05, "alpha_v": 0.4}) == pytest.approx(0.05)
    textured = {"type": "roughconductor", "alpha": {"type": "checkerboard", "color0": 0.2, "color1": 0.04}}
    assert lobe(textured) == pytest.approx(0.04)  # the texture's smoothest value
    assert lobe({"type": "roughconductor", "distribution": "beckmann"}) == pytest.approx(0.1)  # Mitsuba's default
    blend = {"type": "blendbsdf", "weight": 0.5, "a": {"type": "diffuse"},
             "b": {"type": "roughplastic", "alpha": 0.25}}
    assert lobe(blend) == pytest.approx(0.25)
    assert lobe({"type": "plastic"}) == 0.0 and lobe({"type": "conductor"}) == 0.0
    assert lobe({"type": "diffuse"}) == float("inf") and lobe({"type": "null"}) == float("inf")


def test_only_shapes_that_show_nothing_but_a_reflection_count_as_mirrors():
    from renderer.lobes import bsdf_mirrors

    mi = Renderer(RenderConfig(scene="cornell-box", width=8, height=8, spp=1, arrays="numpy"))._mi
    mirrors = lambda d: bsdf_mirrors(mi, mi.load_dict(d))
    assert mirrors({"type": "roughconductor", "alpha": 0.3}) and mirrors({"type": "conductor"})
    assert mirrors({"type": "twosided", "bsdf": {"type": "roughconductor"}})
    # A diffuse lobe under the reflection moves with the surface; glass shows what is behind it as well.
    for other in ({"type": "roughplastic"}, {"type": "plastic"}, {"type": "diffuse"}, {"type": "dielectric"},
                  {"type": "principled"}):
        assert not mirrors(other), other
    assert not bsdf_mirrors(mi, None)


def test_the_frame_carries_which_shapes_are_mirrors():
    r = Renderer(RenderConfig(scene="glossy-metals", width=16, height=16, spp=1, arrays="numpy"))
    f = r.render_pair(r.initial_pose)
    named = {}
    for shape in r.scene.shapes():
        sid = int(r._dr.reinterpret_array(r._mi.UInt32, r._mi.ShapePtr(shape))[0])
        named[shape.id()] = f.mirrors[sid]
    assert named["mirror"] and named["gold"] and named["silver-block"]
    assert not named["floor"] and not named["red-plastic"] and not f.mirrors[0]  # id 0: a ray that hit nothing


def test_live_renders_start_russian_roulette_earlier_without_changing_the_image_or_the_references():
    early = Renderer(RenderConfig(scene="cornell-box", width=32, height=32, spp=1, rr_depth=1, arrays="numpy"))
    plain = Renderer(RenderConfig(scene="cornell-box", width=32, height=32, spp=1, arrays="numpy"))
    pose = plain.initial_pose
    # References render with the scene's integrator in both.
    np.testing.assert_array_equal(early.render_pass(pose, 4, seed=11), plain.render_pass(pose, 4, seed=11))
    # The live pair does not: the same seed gives other paths...
    a, b = early.render_pair(pose), plain.render_pair(pose)
    assert a.seeds == b.seeds and not np.array_equal(a.color_a, b.color_a)
    # ...whose expectation is the same image (over 32 x 32 x 512 samples, the mean agrees to about 1%).
    live = np.mean([early._pass(early._color_integrator, s, 64)[..., :3].mean() for s in range(8)])
    scene = np.mean([plain._pass(plain._color_integrator, s + 100, 64)[..., :3].mean() for s in range(8)])
    assert live == pytest.approx(scene, rel=0.02)


def test_the_live_integrator_keeps_the_scenes_settings():
    from renderer.scene import live_integrator_xml

    xml = ('<scene version="3.0.0"><default name="max_depth" value="7"/><integrator type="path">'
           '<integer name="max_depth" value="$max_depth"/><boolean name="hide_emitters" value="true"/>'
           '</integrator></scene>')
    live = live_integrator_xml(xml, 3)
    assert 'value="7"' in live and 'name="hide_emitters"' in live and '<integer name="rr_depth" value="3"' in live
    assert live_integrator_xml(xml.replace("<boolean", '<integer name="rr_depth" value="9"/><boolean'), 3) is None
    assert live_integrator_xml(xml.replace('type="path"', 'type="direct"'), 3) is None
    assert live_integrator_xml('<scene version="3.0.0"/>', 3) is None


def test_the_two_renders_are_independent():
    """Correlation of the two renders' errors, averaged over 20 pairs, is zero.

    Values are compressed with v / (1 + v) first: raw radiance is so heavy-tailed
    that one firefly decides a Pearson correlation. The per-pixel mean of 100
    further renders stands in for the expectation. A reused seed would give 1;
    one pair's estimate has a spread of about 0.05, so the mean of 20 has 0.01.
    """
    r = Renderer(RenderConfig(width=48, height=48, spp=2, arrays="numpy"))
    pose = r.initial_pose

    def compress(x):
        return x / (1 + x)

    mean = np.mean([compress(r.render_color(pose, 2)) for _ in range(100)], axis=0)
    corrs = []
    for i in range(20):
        f = r.render_pair(pose, i)
        ea, eb = compress(f.color_a) - mean, compress(f.color_b) - mean
        corrs.append(np.corrcoef(ea.ravel(), eb.ravel())[0, 1])
    assert abs(np.mean(corrs)) < 0.03, corrs


def test_camera_moves_compile_no_new_kernels(tiny_renderer):
    """After the first frame, a new pose runs only kernels that are already in memory.

    A kernel that had to be compiled (or fetched from the disk cache) would show
    up in drjit's kernel history with cache_hit False or cache_disk True.
    """
    import drjit as dr

    r = tiny_renderer
    r.render_pair(r.initial_pose)  # first frame: compiles or loads from disk
    dr.set_flag(dr.JitFlag.KernelHistory, True)
    try:
        for t in (0.0, 3.1, 7.7, 12.4):
            dr.kernel_history()  # clears
            r.render_pair(r.path.pose(t))
            kernels = [k for k in dr.kernel_history() if k["type"] == dr.KernelType.JIT]
            assert kernels, "no kernels recorded"
            assert all(k["cache_hit"] and not k["cache_disk"] for k in kernels), f"pose t={t} compiled a kernel"
    finally:
        dr.set_flag(dr.JitFlag.KernelHistory, False)


def test_frozen_renders_replay_the_plain_ones_at_new_poses_and_seeds():
    """dr.freeze (the CUDA default) must follow the camera and the seed exactly, not replay a stale frame."""
    plain = Renderer(RenderConfig(scene="cornell-box", width=32, height=32, spp=1, freeze=False, arrays="numpy"))
    frozen = Renderer(RenderConfig(scene="cornell-box", width=32, height=32, spp=1, freeze=True, arrays="numpy"))
    assert frozen.freezes and not plain.freezes  # LLVM default: off
    for t in (0.0, 2.5, 6.0):  # the first call records, the later ones replay
        pose = plain.path.pose(t)
        a = plain.render_pair(pose)
        b = frozen.render_pair(pose)
        assert a.seeds == b.seeds
        for name in ("color_a", "color_b", "albedo", "normal"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=f"{name} at t={t}")
    assert not np.array_equal(b.color_a, b.color_b)  # the two seeds still give independent renders


def test_pose_changes_the_image(tiny_renderer):
    r = tiny_renderer
    a = r.render_color(r.path.pose(0.0), 16)
    b = r.render_color(r.path.pose(10.0), 16)
    assert np.abs(a - b).mean() > 0.01


def test_high_spp_render_is_split_into_passes_and_converges(tiny_renderer):
    r = tiny_renderer
    ref = r.render_color(r.initial_pose, 512)
    low = r.render_color(r.initial_pose, 4)
    mid = r.render_color(r.initial_pose, 128)
    # Compared tonemapped: a single firefly would otherwise decide the squared error (the variance
    # ratio is 129 / 5 = 26 either way).
    tm = lambda x: x / (1 + x)
    assert np.mean((tm(mid) - tm(ref)) ** 2) < np.mean((tm(low) - tm(ref)) ** 2) / 8


def test_scene_by_path_and_path_json(tmp_path):
    info = resolve_scene("cornell-box")
    assert info.xml.name == "scene.xml" and info.path_json is not None
    assert resolve_scene(str(info.xml)).xml == info.xml
    assert resolve_scene(str(info.xml.parent)).xml == info.xml


def test_unknown_scene_lists_the_choices():
    with pytest.raises(SceneError, match="--scene nowhere: no such scene; expected one of .*cornell-box"):
        resolve_scene("nowhere")


def test_prepare_xml_sets_film_filter_and_sampler(tmp_path):
    xml = tmp_path / "s.xml"
    xml.write_text('<scene version="3.0.0"><sensor type="perspective"><sampler type="stratified"/>'
                   '<film type="hdrfilm"><rfilter type="gaussian"/></film></sensor>'
                   '<sensor type="perspective"/><shape type="sphere"/></scene>')
    out = prepare_xml(xml, 20, 10, 3)
    assert out.count("<sensor") == 1 and 'type="box"' in out and 'type="independent"' in out
    assert 'type="gaussian"' not in out and 'type="stratified"' not in out
    assert 'name="width" value="20"' in out and 'name="sample_count" value="3"' in out
    assert '<integrator type="path"' in out


@pytest.mark.parametrize("text, message", [
    ('<scene version="3.0.0"><shape type="sphere">', "malformed XML at line 1"),
    ('<notascene/>', "expected a Mitsuba <scene> root"),
])
def test_bad_xml(tmp_path, text, message):
    xml = tmp_path / "bad.xml"
    xml.write_text(text)
    with pytest.raises(SceneError, match=message):
        prepare_xml(xml, 8, 8, 1)


def test_mitsuba_load_errors_are_reported_with_the_file(tmp_path):
    xml = tmp_path / "unknown_plugin.xml"
    xml.write_text('<scene version="3.0.0"><shape type="teapot_of_doom"/></scene>')
    with pytest.raises(SceneError, match="unknown_plugin.xml: Mitsuba could not load it"):
        Renderer(RenderConfig(scene=str(xml), width=8, height=8, spp=1))


def test_scene_without_sensor_or_path_gets_an_orbit(tmp_path):
    xml = tmp_path / "ball.xml"
    xml.write_text('<scene version="3.0.0"><emitter type="constant"/>'
                   '<shape type="sphere"><float name="radius" value="2"/></shape></scene>')
    r = Renderer(RenderConfig(scene=str(xml), width=16, height=16, spp=1, arrays="numpy"))
    assert r.path.source == "<orbit>"
    img = r.render_color(r.path.pose(1.0), 4)
    assert img.std() > 0  # the sphere is in view


def test_render_config_validation():
    with pytest.raises(RendererError, match="--res"):
        RenderConfig(width=0)
    with pytest.raises(RendererError, match="--spp"):
        RenderConfig(spp=0)
    for threads in (0, -2):
        with pytest.raises(RendererError, match="--render-threads"):
            RenderConfig(threads=threads)


# -- variant selection -------------------------------------------------------

def test_llvm_version_parsing():
    parse = variant_mod._version_from_name
    assert parse("libLLVM-19.so") == 19
    assert parse("libLLVM.so.19.1") == 19
    assert parse("libLLVM-14.0.6.so.1") == 14
    assert parse("libLLVM.so.1") is None
    assert parse("libLLVM.so") is None


def test_variant_order(monkeypatch):
    lib19 = variant_mod.LLVMLibrary("/x/libLLVM-19.so", 19)
    monkeypatch.setattr(variant_mod, "cuda_usable", lambda: True)
    assert variant_mod.choose_variant() == "cuda_ad_rgb"
    monkeypatch.setattr(variant_mod, "cuda_usable", lambda: False)
    monkeypatch.setattr(variant_mod, "usable_llvm", lambda: lib19)
    assert variant_mod.choose_variant("auto") == "llvm_ad_rgb"
    monkeypatch.setattr(variant_mod, "usable_llvm", lambda: None)
    monkeypatch.setattr(variant_mod, "find_libllvm",
                        lambda: [variant_mod.LLVMLibrary("/x/libLLVM-15.so", 15)])
    with pytest.warns(RuntimeWarning, match="found: 15.*scalar_rgb.*libllvm19"):
        assert variant_mod.choose_variant() == "scalar_rgb"
    with pytest.raises(variant_mod.VariantError, match="needs libLLVM >= 16 .found: 15.*libllvm19"):
        variant_mod.choose_variant("llvm_ad_rgb")
    with pytest.raises(variant_mod.VariantError, match="--variant cuda_ad_rgb: no usable NVIDIA GPU"):
        variant_mod.choose_variant("cuda_ad_rgb")
    with pytest.raises(variant_mod.VariantError, match="expected one of"):
        variant_mod.choose_variant("spectral_magic")


def test_old_llvm_override_is_refused_before_drjit_loads_it(monkeypatch):
    monkeypatch.setenv("DRJIT_LIBLLVM_PATH", "/usr/lib/x86_64-linux-gnu/libLLVM-15.so.1")
    with pytest.raises(variant_mod.VariantError, match="DRJIT_LIBLLVM_PATH=.*not libLLVM >= 16"):
        variant_mod.usable_llvm()


def test_the_llvm_found_is_recent_enough():
    lib = variant_mod.usable_llvm()
    assert lib is not None and lib.major >= 16, "set-up should have installed libllvm19"


def test_scalar_fallback_renders(tmp_path):
    """scalar_rgb in a fresh process (a process runs one variant)."""
    code = ("from renderer import Renderer, RenderConfig\n"
            "r = Renderer(RenderConfig(width=8, height=8, spp=1, variant='scalar_rgb'))\n"
            "f = r.render_pair(r.initial_pose)\n"
            "assert f.color_a.shape == f.emission.shape == (8, 8, 3) and f.albedo.max() <= 1\n"
            "print(r.variant)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "scalar_rgb"


def test_one_render_thread_loads_and_renders_a_scene_with_many_objects():
    """--render-threads 1 once deadlocked inside Mitsuba's scene load (a fresh process: the pool is global)."""
    code = ("from renderer import Renderer, RenderConfig\n"
            "r = Renderer(RenderConfig(scene='glossy-metals', width=8, height=8, spp=1, threads=1))\n"
            "f = r.render_pair(r.initial_pose)\n"
            "import drjit\n"
            "assert f.color_a.shape == (8, 8, 3)\n"
            "print(drjit.thread_count())\n")
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ})
    except subprocess.TimeoutExpired:
        pytest.fail("a renderer with one Dr.Jit thread hung")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "1"


def test_drjit_workers_yield_to_the_work_after_a_render(tiny_renderer):
    from renderer import workers

    if not tiny_renderer.variant.startswith("llvm"):
        pytest.skip(f"only the LLVM variant runs a CPU worker pool ({tiny_renderer.variant} here)")
    tiny_renderer.render_pair(tiny_renderer.initial_pose)
    tids = workers.worker_threads()
    assert tids, "Dr.Jit's LLVM variant runs a worker pool"
    assert all(os.getpriority(os.PRIO_PROCESS, t) >= tiny_renderer.config.worker_nice for t in tids)


def test_worker_priority_is_only_ever_lowered():
    import threading

    from renderer import workers

    started, done = threading.Event(), threading.Event()
    ids = []

    def idle():
        ids.append(threading.get_native_id())
        started.set()
        done.wait(10)

    t = threading.Thread(target=idle)
    t.start()
    try:
        started.wait(10)
        assert workers.lower_priority(ids, 5) == ids and os.getpriority(os.PRIO_PROCESS, ids[0]) == 5
        assert workers.lower_priority(ids, 3) == [] and os.getpriority(os.PRIO_PROCESS, ids[0]) == 5
        assert workers.lower_priority([2 ** 30], 5) == []  # no such thread: skipped
    finally:
        done.set()
        t.join()


def _mirror_scene(tmp_path, bsdf: str) -> str:
    """A sphere in a constant sky of 0.25, and a reddish diffuse wall behind the camera that only a mirror shows."""
    xml = tmp_path / "mirror.xml"
    xml.write_text('<scene version="3.0.0"><emitter type="constant"><rgb name="radiance" value="0.25"/></emitter>'
                   '<sensor type="perspective"><float name="fov" value="30"/><transform name="to_world">'
                   '<lookat origin="0, 0, 6" target="0, 0, 0" up="0, 1, 0"/></transform></sensor>'
                   f'<shape type="sphere"><float name="radius" value="1"/>{bsdf}</shape>'
                   '<shape type="rectangle"><transform name="to_world"><scale value="4"/><rotate y="1" angle="180"/>'
                   '<translate value="0, 0, 8"/></transform><bsdf type="diffuse">'
                   '<rgb name="reflectance" value="0.5, 0.2, 0.1"/></bsdf></shape></scene>')
    return str(xml)


def test_the_specular_guide_shows_what_a_mirror_reflects_and_nothing_on_diffuse_surfaces(tmp_path):
    mirror = Renderer(RenderConfig(scene=_mirror_scene(tmp_path, '<bsdf type="conductor"/>'), width=32, height=32,
                                   spp=1, aux_spp=16, arrays="numpy", guide_share=0.25))
    f = mirror.render_pair(mirror.initial_pose)
    assert f.specular.shape == (32, 32, 3) and f.specular.dtype == np.float32 and "guide" in f.seeds
    sphere = np.linalg.norm(f.normal, axis=-1) > 0.99  # fully covered pixels
    guide = f.specular[sphere]
    # The middle of the ball reflects the wall behind the camera, which gives its albedo; its rim, the sky.
    wall = np.abs(guide - [0.5, 0.2, 0.1]).max(-1) < 1e-3
    sky = np.abs(guide - 0.25).max(-1) < 1e-3
    assert wall.sum() > 8 and sky.sum() > 20 and (wall | sky).mean() > 0.8
    centre = f.specular[14:18, 14:18].reshape(-1, 3)
    np.testing.assert_allclose(centre, np.broadcast_to([0.5, 0.2, 0.1], centre.shape), atol=1e-3)
    assert np.all(f.specular[:4, :4] == 0)  # the background (the guide's samples are not the aux pass's)

    diffuse = Renderer(RenderConfig(scene=_mirror_scene(tmp_path, '<bsdf type="diffuse"/>'), width=32, height=32,
                                    spp=1, arrays="numpy", guide_share=0.25))
    assert np.all(diffuse.render_pair(diffuse.initial_pose).specular == 0)


def test_without_a_guide_share_there_is_no_guide_pass(tiny_renderer):
    f = tiny_renderer.render_pair(tiny_renderer.initial_pose)
    assert f.specular is None and "guide" not in f.seeds and "render_guide" not in f.timings
    with pytest.raises(RendererError, match="guide share 2"):
        RenderConfig(guide_share=2)


def test_pixel_passes_sample_the_same_image_as_a_render(tiny_renderer):
    """Extra samples of chosen pixels converge to the render's own pixels, in any order and wavefront size."""
    r = tiny_renderer
    pose = r.path.pose(1.0)
    r.set_pose(pose)
    h, w = r.shape
    full = r.render_color(pose, 256).reshape(-1, 3)
    index = np.random.default_rng(0).permutation(h * w)[:300]  # not a bucket size, not sorted
    seeds = r._next_seed
    pixels = r.render_pixels(index, 256)
    assert pixels.shape == (300, 3) and pixels.dtype == np.float32
    assert r._next_seed == seeds + 1  # a seed of the session's own
    # Pixel by pixel within the noise of 2 x 256 samples, and the image's mean within 2%.
    lit = full[index].mean(1) > 0.05
    rel = np.abs(pixels - full[index]).mean(1)[lit] / full[index].mean(1)[lit]
    assert np.median(rel) < 0.15
    np.testing.assert_allclose(pixels.mean(0), full[index].mean(0), rtol=0.02)
    # Another wavefront size (another padding) gives the same pixels' values.
    again = r.render_pixels(index[:37], 256)
    np.testing.assert_allclose(again.mean(0), pixels[:37].mean(0), rtol=0.06)
    assert r.render_pixels(np.zeros(0, np.int64), 4).shape == (0, 3)
    with pytest.raises(ValueError, match="outside the 32x32 film"):
        r.render_pixels(np.array([h * w]), 1)
