"""Temporal reuse: reprojection, the running mean, and when history must restart."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from online_denoise.arrays import to_numpy
from online_denoise.temporal import TemporalConfig, TemporalReuse, catmull_rom, project, sharp_shading
from renderer.camera import Pose
from renderer.frame import Frame

H, W = 24, 32
POSE = Pose.look_at((0.0, 0.0, 5.0), (0.0, 0.0, 0.0), fov=40.0)


def plane_positions(pose: Pose, depth: np.ndarray | float = 5.0) -> np.ndarray:
    """World points seen through each pixel centre at the given camera depth (the inverse of ``project``)."""
    t = math.tan(math.radians(pose.fov) / 2)
    gx = (np.arange(W) + 0.5) / W * 2 - 1
    gy = (np.arange(H) + 0.5) / H * 2 - 1
    gx, gy = np.meshgrid(gx, gy)
    z = np.broadcast_to(np.asarray(depth, float), (H, W))
    left, up = -gx * z * t, -gy * z * t * (H / W)
    cam = np.stack([left, up, z], -1)
    return (pose.position + cam @ pose.rotation.T).astype(np.float32)


def frame(seed: int, pose: Pose = POSE, position=None, surface=None, albedo=None, index=0) -> Frame:
    rng = np.random.default_rng(seed)
    normal = np.zeros((H, W, 3), np.float32)
    normal[..., 2] = 1.0
    return Frame(rng.random((H, W, 3), dtype=np.float32), rng.random((H, W, 3), dtype=np.float32),
                 np.full((H, W, 3), 0.5, np.float32) if albedo is None else albedo, normal, pose, index, {}, 2,
                 position=plane_positions(pose) if position is None else position,
                 surface=np.full((H, W, 1), 3.0, np.float32) if surface is None else surface)


def history(n: int) -> TemporalReuse:
    return TemporalReuse(TemporalConfig(history=n))


def test_project_inverts_the_pixel_rays():
    grid, depth = project(torch.from_numpy(plane_positions(POSE, 5.0)).permute(2, 0, 1)[None], POSE, H, W)
    px = (grid[0, ..., 0].numpy() + 1) / 2 * W - 0.5
    py = (grid[0, ..., 1].numpy() + 1) / 2 * H - 0.5
    np.testing.assert_allclose(px, np.broadcast_to(np.arange(W), (H, W)), atol=1e-3)
    np.testing.assert_allclose(py, np.broadcast_to(np.arange(H)[:, None], (H, W)), atol=1e-3)
    np.testing.assert_allclose(depth.numpy(), 5.0, rtol=1e-5)


def test_projection_matches_the_renderers_camera(tiny_renderer):
    """Mitsuba's own positions, projected through the pose that rendered them, land on their pixel centres."""
    f = tiny_renderer.render_pair(tiny_renderer.path.pose(3.0))
    position = torch.from_numpy(to_numpy(f.position)).permute(2, 0, 1)[None]
    grid, depth = project(position, f.pose, *f.shape)
    h, w = f.shape
    px = (grid[0, ..., 0].numpy() + 1) / 2 * w - 0.5
    py = (grid[0, ..., 1].numpy() + 1) / 2 * h - 0.5
    surface = to_numpy(f.surface)[..., 0]
    # Pixels inside one shape (whole shape index, something hit); the 1-spp sample may sit anywhere in the pixel.
    inside = (np.abs(surface - np.round(surface)) < 1e-3) & np.any(to_numpy(f.position) != 0, -1)
    assert inside.mean() > 0.5
    assert np.abs(px - np.arange(w))[inside].max() <= 0.5 + 1e-3
    assert np.abs(py - np.arange(h)[:, None])[inside].max() <= 0.5 + 1e-3
    assert (depth[0, 0].numpy()[inside] > 0).all()


def test_a_still_camera_averages_up_to_the_history_then_keeps_a_moving_average():
    reuse = history(3)
    frames = [frame(seed) for seed in range(5)]
    outs = [reuse.apply(f) for f in frames]
    a = [f.color_a for f in frames]
    np.testing.assert_allclose(to_numpy(outs[0][0].color_a), a[0])
    np.testing.assert_allclose(to_numpy(outs[1][0].color_a), (a[0] + a[1]) / 2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_numpy(outs[2][0].color_a), (a[0] + a[1] + a[2]) / 3, rtol=1e-5, atol=1e-6)
    m3 = (a[0] + a[1] + a[2]) / 3
    np.testing.assert_allclose(to_numpy(outs[3][0].color_a), m3 + (a[3] - m3) / 3, rtol=1e-5, atol=1e-6)
    assert [round(o[1], 4) for o in outs] == [1.0, 2.0, 3.0, 3.0, 3.0]
    # Each render's frames per pixel travel with the reused frame, for the network's history feature.
    assert [float(to_numpy(o[0].frames_b).max()) for o in outs] == [1.0, 2.0, 3.0, 3.0, 3.0]
    assert to_numpy(outs[2][0].frames_a).shape == (H, W, 1) and frames[2].frames_a is None
    # The raw frame is left as it was rendered.
    np.testing.assert_array_equal(frames[3].color_a, a[3])


def test_the_two_histories_never_mix():
    reuse, other = history(4), history(4)
    first, second = frame(1), frame(2)
    changed = replace(second, color_b=second.color_b * 10)
    out, _ = reuse.apply(first)
    out, _ = reuse.apply(second)
    other.apply(first)
    alt, _ = other.apply(changed)
    np.testing.assert_array_equal(to_numpy(out.color_a), to_numpy(alt.color_a))
    assert not np.allclose(to_numpy(out.color_b), to_numpy(alt.color_b))


@pytest.mark.parametrize("what", ["nearer", "surface", "albedo", "normal", "miss"])
def test_history_restarts_where_the_surface_changed(what):
    reuse = history(8)
    first, second = frame(1), frame(2)
    rows = slice(8, 16)
    if what == "nearer":  # something moved in front: a disocclusion, seen from the old frame
        depth = np.full((H, W), 5.0)
        depth[rows] = 3.0
        second = replace(second, position=plane_positions(POSE, depth))
    elif what == "surface":
        surface = second.surface.copy()
        surface[rows] = 7.0
        second = replace(second, surface=surface)
    elif what == "albedo":
        albedo = second.albedo.copy()
        albedo[rows] = 0.9
        second = replace(second, albedo=albedo)
    elif what == "normal":
        normal = second.normal.copy()
        normal[rows] = (1.0, 0.0, 0.0)
        second = replace(second, normal=normal)
    else:  # the pixels now see nothing: no position to reproject
        position = second.position.copy()
        position[rows] = 0.0
        second = replace(second, position=position)
    reuse.apply(first)
    out, _ = reuse.apply(second)
    got = to_numpy(out.color_a)
    # Inside the changed band (away from the bilinear footprint of its edges) only the new samples count.
    np.testing.assert_array_equal(got[9:15], second.color_a[9:15])
    np.testing.assert_allclose(got[:7], (first.color_a[:7] + second.color_a[:7]) / 2, rtol=1e-5, atol=1e-6)


def test_pixels_straddling_two_shapes_are_not_reused():
    reuse = history(8)
    surface = np.full((H, W, 1), 3.0, np.float32)
    surface[:, 10] = 3.5  # a silhouette pixel: half its samples on each shape
    reuse.apply(frame(1, surface=surface))
    second = frame(2, surface=surface)
    out, _ = reuse.apply(second)
    np.testing.assert_array_equal(to_numpy(out.color_a)[:, 10], second.color_a[:, 10])


def test_pixels_beside_an_edge_keep_the_history_of_their_own_side():
    """Slide the camera a fraction of a pixel across the seam of two shapes on one plane.

    The pixels beside the seam look back at a footprint that straddles it; they
    keep the history of their own shape, and never mix in the other's.
    """
    moved = Pose(POSE.position + np.array([0.02, 0.0, 0.0]), POSE.rotation, POSE.fov)  # about 0.3 pixels

    def shapes(pose, left, right):
        p = plane_positions(pose)
        on_left = p[..., :1] > 0  # the image's left is the world's +x
        surface = np.where(on_left, 3.0, 4.0).astype(np.float32)
        color = np.where(on_left, left, right).repeat(3, -1).astype(np.float32)
        return replace(frame(1, pose=pose, position=p, surface=surface), color_a=color, color_b=color)

    reuse = history(8)
    reuse.apply(shapes(POSE, 1.0, 3.0))
    second = shapes(moved, 1.04, 3.12)  # 4% up: below what the stale test would call a changed level
    out, _ = reuse.apply(second)
    got = to_numpy(out.color_a)[..., 0]
    first_shape = second.surface[..., 0] == 3.0
    assert 0 < first_shape[0].sum() < W
    # Every pixel, those beside the seam too, is the mean of its own shape's old and new samples
    # (the outer columns aside: one of them has just come into view).
    expected = np.where(first_shape, 1.02, 3.06)
    np.testing.assert_allclose(got[:, 1:-1], expected[:, 1:-1], rtol=1e-5)


def test_pixels_beside_a_texture_edge_restart_instead_of_reading_a_neighbouring_texel():
    """The same slide over one shape whose albedo steps: a texture edge, not a geometric one.

    The aux albedo of a few samples cannot say which texel a tap belongs to,
    so the pixels whose bilinear footprint straddles the step take their new
    samples only, and the rest average old and new.
    """
    moved = Pose(POSE.position + np.array([0.02, 0.0, 0.0]), POSE.rotation, POSE.fov)

    def textured(pose, left, right):
        p = plane_positions(pose)
        on_left = p[..., :1] > 0
        albedo = np.where(on_left, 0.2, 0.8).repeat(3, -1).astype(np.float32)
        color = np.where(on_left, left, right).repeat(3, -1).astype(np.float32)
        return replace(frame(1, pose=pose, position=p, albedo=albedo), color_a=color, color_b=color)

    reuse = history(8)
    reuse.apply(textured(POSE, 1.0, 3.0))
    second = textured(moved, 1.04, 3.12)
    got = to_numpy(reuse.apply(second)[0].color_a)[..., 0]
    dark = second.albedo[..., 0] == np.float32(0.2)
    step = np.nonzero(np.diff(dark[0].astype(int)))[0][0]  # the last column before the step
    fresh = np.isclose(got, second.color_a[..., 0], rtol=1e-6)
    fresh[:, [0, -1]] = False  # one outer column has just come into view
    columns = np.nonzero(fresh.all(0))[0]
    # The straddling column restarts (reading the neighbour texel of its own albedo gave 1.02)...
    assert columns.size >= 1 and set(columns) <= {step, step + 1}
    assert (fresh.any(0) == fresh.all(0)).all()
    # ...and everything else averages its own side's old and new samples.
    rest = ~fresh
    rest[:, [0, -1]] = False
    np.testing.assert_allclose(got[rest], np.where(dark, 1.02, 3.06)[rest], rtol=1e-5)


def test_pixels_at_and_beside_a_light_are_not_reused():
    reuse = history(8)
    emission = np.zeros((H, W, 3), np.float32)
    emission[4:6, 8:12] = 18.0  # a light, as the aux pass saw it
    emission[10, 3] = 0.5  # a dim emitter (a sky) keeps its history
    first, second = replace(frame(1), emission=emission), replace(frame(2), emission=emission)
    reuse.apply(first)
    out, _ = reuse.apply(second)
    got = to_numpy(out.color_a)
    # The light and the ring of pixels around it (where a colour sample may hit the light
    # that the aux samples missed) take the new samples only...
    np.testing.assert_array_equal(got[3:7, 7:13], second.color_a[3:7, 7:13])
    # ...while the rest, the dim emitter included, averages the two frames.
    rest = np.ones((H, W), bool)
    rest[2:8, 6:14] = False
    np.testing.assert_allclose(got[rest], (first.color_a[rest] + second.color_a[rest]) / 2, rtol=1e-5, atol=1e-6)


def test_a_camera_move_reads_the_history_where_the_surface_was():
    """Slide the camera sideways over a textured plane: the history must follow the texture, not the pixels."""
    u = np.linspace(0, 6 * np.pi, 400)

    def texture(points):  # colour fixed to the world x coordinate
        return np.repeat((2.0 + np.sin(np.interp(points[..., 0], np.linspace(-3, 3, 400), u)))[..., None], 3, -1)

    moved = Pose(POSE.position + np.array([0.3, 0.0, 0.0]), POSE.rotation, POSE.fov)
    p0, p1 = plane_positions(POSE), plane_positions(moved)
    first = replace(frame(1), color_a=texture(p0).astype(np.float32), color_b=texture(p0).astype(np.float32))
    # The new samples sit a little off the truth, so that a reused pixel (mean of old and new) shows.
    new = (texture(p1) + 0.05).astype(np.float32)
    second = replace(frame(2, pose=moved, position=p1), color_a=new, color_b=new)
    reuse = history(2)
    reuse.apply(first)
    out, count = reuse.apply(second)
    mean = to_numpy(out.color_a)
    reused = np.abs(mean - new).max(-1) > 1e-4
    old = 2 * mean - new  # what the history held at each reused pixel
    expected = texture(p1)
    assert reused[:, 4:-4].all() and 1.5 < count < 2.0  # the columns that came into view restart
    assert np.abs(old - expected)[:, 4:-4].max() < 0.05
    assert np.abs(first.color_a - expected)[:, 4:-4].max() > 0.5  # a lookup at the same pixel would be wrong


def pixel_grid(h: int, w: int, dx: float = 0.0, dy: float = 0.0) -> torch.Tensor:
    """A grid_sample grid at the pixel centres, shifted by (dx, dy) pixels."""
    xs = (torch.arange(w) + 0.5 + dx) / w * 2 - 1
    ys = (torch.arange(h) + 0.5 + dy) / h * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], -1)[None]


def test_the_cubic_lookup_reads_pixel_centres_exactly_and_keeps_a_constant():
    image = torch.rand(1, 6, 20, 30, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(catmull_rom(image, pixel_grid(20, 30)), image, atol=1e-5)
    flat = torch.full((1, 3, 20, 30), 0.7)
    assert torch.allclose(catmull_rom(flat, pixel_grid(20, 30, 0.37, -0.81)), flat, atol=1e-6)


def edge_width(row: torch.Tensor) -> int:
    """Pixels of a 0-to-1 step that sit between 10% and 90% of it."""
    return int(((row > 0.1) & (row < 0.9)).sum())


def test_repeated_cubic_lookups_keep_an_edge_sharp_where_bilinear_ones_spread_it():
    """Ten half-pixel moves back and forth, as a history is read back frame after frame."""
    step = torch.zeros(1, 1, 8, 64)
    step[..., 32:] = 1.0
    read = {"bilinear": lambda im, g: F.grid_sample(im, g, mode="bilinear", padding_mode="border",
                                                    align_corners=False),
            "cubic": catmull_rom}
    widths = {}
    for name, lookup in read.items():
        image = step
        for i in range(10):
            image = lookup(image, pixel_grid(8, 64, 0.5 if i % 2 == 0 else -0.5))
        widths[name] = edge_width(image[0, 0, 4])
        assert image.min() >= 0.0 and image.max() <= 1.0  # clamped to its taps: no ringing beside the edge
    assert widths == {"bilinear": 4, "cubic": 2}


def test_reuse_keeps_a_world_space_edge_sharp_as_the_camera_slides():
    """A step in the plane's colour, seen by a camera sliding sub-pixel distances: the history must not blur it."""
    def colour(points):
        return np.repeat(np.where(points[..., 0] > 0.05, 1.0, 0.05)[..., None], 3, -1).astype(np.float32)

    errors = {}
    for resample in ("bilinear", "catmull-rom"):
        reuse = TemporalReuse(TemporalConfig(history=16, resample=resample))
        for i in range(12):
            pose = Pose(POSE.position + np.array([0.04 * i, 0.0, 0.0]), POSE.rotation, POSE.fov)
            p = plane_positions(pose)
            out, _ = reuse.apply(replace(frame(i, pose=pose, position=p), color_a=colour(p), color_b=colour(p)))
        errors[resample] = np.abs(to_numpy(out.color_a) - colour(p))[:, 4:-4].mean()
    assert errors["catmull-rom"] < 0.7 * errors["bilinear"]  # measured: 0.020 against 0.030


def test_sharp_shading_marks_a_shadow_line_but_not_texture_or_gradual_light():
    x = torch.arange(32, dtype=torch.float32)
    sun = torch.where(x >= 16, 1.0, 0.05).expand(1, 3, 8, 32)  # 20:1, a sun patch's rim
    texture = torch.where(x >= 16, 0.6, 0.3).expand(1, 3, 8, 32)  # 2:1, a checker's two albedos
    gradual = (0.05 * 1.2 ** x).expand(1, 3, 8, 32)  # 20% a pixel, an indirect falloff
    marked = sharp_shading([sun, texture, gradual], 3.0)[0]
    # The two pixels on the dark side, where a spread of the bright side would be a large share of the level;
    # on the bright side the same spread is a small share, and the 3 x 3 means there stay within 3x.
    assert marked[0, 4].nonzero().flatten().tolist() == [14, 15]
    assert not marked[1:].any()
    # Black beside a faint glow is no edge: the floor keeps noise on black from counting.
    faint = torch.where(x >= 16, 2e-5, 0.0).expand(1, 3, 8, 32)
    assert not sharp_shading([faint], 3.0).any()


def test_reuse_keeps_a_shadow_line_from_spreading_as_the_camera_slides():
    """Each cubic read of the history blurs a little; beside a 20:1 shading edge the history is kept short."""
    def colour(points):
        return np.repeat(np.where(points[..., 0] > 0.05, 1.0, 0.05)[..., None], 3, -1).astype(np.float32)

    halo, spans = {}, {}
    for ratio in (0.0, 3.0):
        reuse = TemporalReuse(TemporalConfig(history=16, sharp_ratio=ratio, sharp_history=4))
        for i in range(16):
            pose = Pose(POSE.position + np.array([0.013 * i, 0.0, 0.0]), POSE.rotation, POSE.fov)
            p = plane_positions(pose)
            out, _ = reuse.apply(replace(frame(i, pose=pose, position=p), color_a=colour(p), color_b=colour(p)))
        got, want = to_numpy(out.color_a)[..., 0], colour(p)[..., 0]
        dark = (want < 0.5) & (np.abs(p[..., 0] - 0.05) < 0.1)  # the dark side, within about a pixel of the line
        halo[ratio] = float((got[dark] / want[dark]).mean())
        spans[ratio] = to_numpy(out.frames_a)[..., 0]
    # The dark side's excess brightness: 4.02 -> 2.98 times its level (measured), cut by more than 15%.
    assert halo[3.0] - 1 < 0.85 * (halo[0.0] - 1)
    far = np.abs(p[..., 0] - 0.05) > 0.5
    np.testing.assert_array_equal(spans[3.0][far], spans[0.0][far])  # away from the line nothing changes
    assert spans[0.0][far].max() == 16
    assert spans[3.0][dark].max() <= 4


def test_a_history_that_no_longer_matches_the_new_samples_restarts():
    """Shading that moved while the geometry stayed (a reflection): the blocks whose level jumped restart."""
    ones = np.ones((H, W, 3), np.float32)
    rng = np.random.default_rng(0)
    noisy = lambda level: (level * ones * rng.uniform(0.9, 1.1, (H, W, 3))).astype(np.float32)
    reuse = history(8)
    for _ in range(3):
        reuse.apply(replace(frame(1), color_a=noisy(1.0), color_b=noisy(1.0)))
    level = np.ones((H, W, 1), np.float32)
    level[8:16, 8:16] = 3.0  # one whole 8 x 8 block brightened
    new = noisy(1.0) * level
    out, _ = reuse.apply(replace(frame(2), color_a=new, color_b=new))
    got = to_numpy(out.color_a)
    np.testing.assert_array_equal(got[8:16, 8:16], new[8:16, 8:16])
    assert np.abs(got[:8] - 1.0).max() < 0.1 and np.abs(got[:8] - new[:8]).max() > 1e-3  # averaged elsewhere


@pytest.mark.parametrize("lobes, test_diffuse, restarts", [
    ((math.inf,) * 4, False, False),  # shape 3 diffuse: its shading cannot go stale in a static scene
    ((math.inf,) * 4, True, True),  # ... unless the test is asked for everywhere
    ((math.inf, math.inf, math.inf, 0.2), False, True),  # glossy: tested
    ((math.inf, math.inf), False, True),  # a shape the table does not know: tested
])
def test_the_stale_test_spares_diffuse_shapes(lobes, test_diffuse, restarts):
    """The same jump that restarts a glossy block leaves a diffuse one's running mean going."""
    ones = np.ones((H, W, 3), np.float32)
    reuse = TemporalReuse(TemporalConfig(history=8, test_diffuse=test_diffuse))
    for _ in range(3):
        reuse.apply(replace(frame(1), color_a=ones, color_b=ones, lobes=lobes))
    new = ones.copy()
    new[8:16, 8:16] = 3.0
    out, count = reuse.apply(replace(frame(2), color_a=new, color_b=new, lobes=lobes))
    got = to_numpy(out.color_a)
    np.testing.assert_allclose(got[8:16, 8:16], 3.0 if restarts else 1.5, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(out.frames_a)[8:16, 8:16], 1.0 if restarts else 4.0)
    np.testing.assert_allclose(got[:8], 1.0, rtol=1e-6)


def test_a_history_that_is_only_doubtful_is_shortened_not_restarted():
    """A block off by 2-4 noise sigmas (a slowly moving reflection) blends the new samples in at 1/4 at least."""
    ones = np.ones((H, W, 3), np.float32)
    reuse = history(16)
    for _ in range(10):
        reuse.apply(replace(frame(1), color_a=ones, color_b=ones))
    # One 8 x 8 block 15% brighter, with a checkerboard of +-33% as its noise: the gap of 0.15 is then
    # 3.0 sigmas of the block's mean (sigma = 0.33 * 1.15 / 8 * sqrt(1 + 1/10)): doubtful, not stale.
    new = ones.copy()
    checker = np.where((np.arange(8)[:, None] + np.arange(8)) % 2 == 0, 1.33, 0.67)[..., None]
    new[8:16, 8:16] = 1.15 * checker
    out, _ = reuse.apply(replace(frame(2), color_a=new, color_b=new))
    got = to_numpy(out.color_a)
    np.testing.assert_allclose(got[8:16, 8:16], 1 + (new[8:16, 8:16] - 1) / 4, rtol=1e-5)
    np.testing.assert_allclose(got[:8], 1.0, rtol=1e-6)


def test_a_nan_sample_does_not_live_on_in_the_history():
    reuse = history(8)
    bad = frame(1)
    bad.color_a[5, 5] = np.nan
    bad.color_b[6, 6] = np.inf
    outs = [reuse.apply(f)[0] for f in (bad, frame(2), frame(3))]
    for out in outs:
        assert np.isfinite(to_numpy(out.color_a)).all() and np.isfinite(to_numpy(out.color_b)).all()


def test_single_render_frames_and_a_new_resolution():
    reuse = history(4)
    single = replace(frame(1), color_b=None)
    out, _ = reuse.apply(single)
    assert out.color_b is None
    out, count = reuse.apply(replace(frame(2), color_b=None))
    assert count == 2.0
    # A pair after single renders, or a new size, cannot use the old means: they restart.
    out, count = reuse.apply(frame(3))
    assert count == 1.0 and out.color_b is not None
    assert reuse.apply(frame(4))[1] == 2.0
    f = frame(5)
    small = replace(f, **{k: getattr(f, k)[:16, :20] for k in ("color_a", "color_b", "albedo", "normal", "position",
                                                               "surface")})
    out, count = reuse.apply(small)
    assert count == 1.0 and out.color_a.shape == (16, 20, 3)


def test_frames_without_the_aux_positions_are_refused():
    with pytest.raises(ValueError, match="position and surface"):
        history(4).apply(replace(frame(1), position=None))


@pytest.mark.parametrize("bad", [{"history": 0}, {"history": 2.5}, {"depth_tolerance": 0}, {"normal_cos": 2},
                                 {"doubt_sigmas": 5.0}, {"doubt_history": 0},
                                 {"lobe_fraction": -1.0}, {"lobe_fraction": float("nan")}, {"resample": "nearest"},
                                 {"sharp_ratio": 1.0}, {"sharp_ratio": -2.0}, {"sharp_ratio": float("nan")},
                                 {"sharp_history": 0}, {"reflect_history": -1}, {"reflect_history": 2.5},
                                 {"reflect_tolerance": 0.0}])
def test_config_refuses_nonsense(bad):
    with pytest.raises(ValueError):
        TemporalConfig(**bad)


def sliding_run(lobes, steps: int = 12, slide: float = 0.1, **config) -> np.ndarray:
    """Frames i = 0..steps-1 of a uniform colour i, the camera sliding sideways by ``slide`` each frame.

    The top half of the plane is shape 1, the bottom half shape 2. The stale test is off, so that
    only the history caps decide how far the running mean lags behind the ramp.
    """
    reuse = TemporalReuse(TemporalConfig(history=16, stale_relative=1e9, **config))
    surface = np.ones((H, W, 1), np.float32)
    surface[H // 2:] = 2.0
    for i in range(steps):
        pose = Pose(POSE.position + np.array([slide * i, 0.0, 0.0]), POSE.rotation, POSE.fov)
        value = np.full((H, W, 3), float(i), np.float32)
        out, _ = reuse.apply(replace(frame(i, pose=pose, position=plane_positions(pose), surface=surface),
                                     color_a=value, color_b=value, lobes=lobes))
    return to_numpy(out.color_a)[..., 0]


def ramp_mean(steps: int, cap: int) -> float:
    """The running mean of 0, 1, ..., steps-1 with weights 1/n, n counting up to ``cap``."""
    mean = 0.0
    for i in range(steps):
        mean += (i - mean) / min(i + 1, cap)
    return mean


def test_a_glossy_surface_keeps_a_history_as_long_as_the_view_turn_allows():
    """A 0.1 sideways step at depth 5 turns the view by 0.02 rad: a 0.09-wide lobe keeps 4 frames."""
    got = sliding_run((math.inf, math.inf, 0.09))
    centre = slice(W // 2 - 3, W // 2 + 3)
    np.testing.assert_allclose(got[2:H // 2 - 2, centre], ramp_mean(12, 16), rtol=1e-4)  # diffuse: all 12 frames
    np.testing.assert_allclose(got[H // 2 + 2:-2, centre], ramp_mean(12, 4), rtol=1e-4)
    # A lobe about twice as wide keeps about twice the history (9.5 turns); a smooth mirror (width 0) keeps none.
    np.testing.assert_allclose(sliding_run((math.inf, math.inf, 0.19))[H // 2 + 2:-2, centre], ramp_mean(12, 9),
                               rtol=1e-4)
    np.testing.assert_allclose(sliding_run((math.inf, math.inf, 0.0))[H // 2 + 2:-2, centre], 11.0, rtol=1e-6)


def test_a_still_camera_or_no_lobe_table_leaves_glossy_history_uncapped():
    full = ramp_mean(12, 16)
    # Shape 2 is not in the table (a shape inside an instance): treated as diffuse, not as the last entry.
    np.testing.assert_allclose(sliding_run((math.inf, 0.0))[H // 2 + 2:-2, W // 2 - 3:W // 2 + 3], full, rtol=1e-4)
    np.testing.assert_allclose(sliding_run((math.inf, math.inf, 0.0), slide=0.0), full, rtol=1e-4)
    np.testing.assert_allclose(sliding_run(None)[2:-2, W // 2 - 3:W // 2 + 3], full, rtol=1e-4)
    np.testing.assert_allclose(sliding_run((math.inf, math.inf, 0.0), lobe_fraction=0.0)[2:-2, W // 2 - 3:W // 2 + 3],
                               full, rtol=1e-4)


def test_view_turn_is_the_angle_between_the_two_cameras_rays():
    from online_denoise.temporal import view_turn

    points = torch.tensor([[0.0, 0.0, 0.0], [2.0, 1.0, -3.0]]).T.reshape(1, 3, 1, 2)
    moved = Pose(POSE.position + np.array([0.5, 0.0, 0.0]), POSE.rotation, POSE.fov)
    turn = view_turn(points, moved, POSE)[0, 0, 0]
    for k, p in enumerate(points[0, :, 0].T.numpy()):
        a, b = p - moved.position, p - POSE.position
        expected = math.acos(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))
        assert float(turn[k]) == pytest.approx(expected, rel=1e-4)
    assert float(view_turn(points, POSE, POSE).abs().max()) == 0.0


def test_the_reused_frame_keeps_each_renders_own_samples():
    reuse = history(8)
    first, second = frame(1), frame(2)
    reuse.apply(first)
    out, _ = reuse.apply(second)
    assert out.raw_a is second.color_a and out.raw_b is second.color_b
    assert not np.allclose(to_numpy(out.color_a), second.color_a)  # the colour itself is the running mean


SPHERE_H, SPHERE_W = 48, 64


def sphere_buffers(pose: Pose, radius: float = 1.2):
    """Position, normal and shape index (2 on the sphere, 0 for a miss) of a sphere at the origin, per pixel."""
    t = math.tan(math.radians(pose.fov) / 2)
    gx = (np.arange(SPHERE_W) + 0.5) / SPHERE_W * 2 - 1
    gy = (np.arange(SPHERE_H) + 0.5) / SPHERE_H * 2 - 1
    gx, gy = np.meshgrid(gx, gy)
    cam = np.stack([-gx * t, -gy * t * (SPHERE_H / SPHERE_W), np.ones_like(gx)], -1)
    d = cam @ pose.rotation.T
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    o = pose.position
    b = d @ o
    disc = b * b - (o @ o - radius * radius)
    hit = disc > 0
    dist = -b - np.sqrt(np.where(hit, disc, 0.0))
    points = np.where(hit[..., None], o + dist[..., None] * d, 0.0)
    normal = np.where(hit[..., None], points / radius, 0.0)
    return points.astype(np.float32), normal.astype(np.float32), np.where(hit, 2.0, 0.0)[..., None].astype(np.float32)


def mirror_reflection(points, normal, pose) -> np.ndarray:
    d = points - pose.position
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    return d - 2 * (d * normal).sum(-1, keepdims=True) * normal


def sky(direction: np.ndarray) -> np.ndarray:
    """A distant environment with detail: what a metal sphere shows."""
    x, y, z = direction[..., 0], direction[..., 1], direction[..., 2]
    return np.repeat((1.5 + np.sin(7 * x) * np.cos(5 * y) + 0.3 * z)[..., None], 3, -1).astype(np.float32)


def orbit(i: int) -> Pose:
    a = math.radians(2.0 * i)  # 2 degrees a frame, as the scenes' camera paths turn
    return Pose.look_at((5 * math.sin(a), 0.4, 5 * math.cos(a)), (0.0, 0.0, 0.0), fov=40.0)


def test_following_a_reflection_finds_where_the_previous_view_saw_the_same_direction():
    from online_denoise.temporal import follow_reflections, reflected

    before, now = orbit(0), orbit(1)
    p0, n0, s0 = sphere_buffers(before)
    p1, n1, s1 = sphere_buffers(now)
    chw = lambda x: torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
    field = reflected(chw(p0), chw(n0), before)
    np.testing.assert_allclose(field[0].permute(1, 2, 0)[s0[..., 0] > 0].numpy(),
                               mirror_reflection(p0, n0, before)[s0[..., 0] > 0], atol=1e-5)
    inner = torch.from_numpy((s1[..., 0] > 0) & (np.linalg.norm(n1[..., :2], axis=-1) < 0.8)).view(-1)
    directions = reflected(chw(p1), chw(n1), now)[0].reshape(3, -1).T[inner]
    start, _ = project(chw(p1), before, SPHERE_H, SPHERE_W)
    start = start.reshape(-1, 2)[inner]
    found, left = follow_reflections(directions, field, start)
    # Bilinear reads of the field leave a few thousandths of a radian: the sphere bends 0.1 rad a pixel here.
    assert float((left < 0.005).float().mean()) > 0.97
    # Where the previous view saw that direction, the sphere's own geometry agrees: trace the found pixels' rays.
    px = (found[:, 0] + 1) * SPHERE_W / 2 - 0.5, (found[:, 1] + 1) * SPHERE_H / 2 - 0.5
    read = lambda img: F.grid_sample(chw(img), found.view(1, 1, -1, 2), mode="bilinear", align_corners=False)[0, :, 0].T
    there = mirror_reflection(read(p0).numpy(), read(n0).numpy() / np.linalg.norm(read(n0).numpy(), axis=-1,
                                                                                   keepdims=True), before)
    ok = (left < 0.005).numpy()
    assert np.abs(there - directions.numpy())[ok].max() < 0.02
    # ...and the reflection has slid over the surface: the plain reprojection sees other directions there.
    moved = torch.stack(px, 1) - torch.stack([(start[:, 0] + 1) * SPHERE_W / 2 - 0.5,
                                             (start[:, 1] + 1) * SPHERE_H / 2 - 0.5], 1)
    assert float(moved.norm(dim=1)[ok].mean()) > 0.3
    plain = (directions - F.grid_sample(field, start.view(1, 1, -1, 2), align_corners=False)[0, :, 0].T).norm(dim=1)
    assert float(plain.median()) > 5 * float(left.median())


def sphere_run(reflect_history: int, frames: int = 10, noise: float = 0.3, mirrors=(False, False, True), **config):
    """A mirror sphere showing ``sky`` plus noise, under the orbit; the reused frame and the noise-free truth."""
    rng = np.random.default_rng(0)
    reuse = TemporalReuse(TemporalConfig(history=16, reflect_history=reflect_history, **config))
    for i in range(frames):
        pose = orbit(i)
        p, n, s = sphere_buffers(pose)
        truth = np.where(s > 0, sky(mirror_reflection(p, n, pose)), 0.5).astype(np.float32)
        noisy = [(truth + noise * rng.standard_normal(truth.shape)).astype(np.float32) for _ in range(2)]
        f = Frame(noisy[0], noisy[1], np.full_like(truth, 0.9), n, pose, i, {}, 2, position=p, surface=s,
                  lobes=(math.inf, math.inf, 0.02), mirrors=mirrors)
        out, _ = reuse.apply(f)
    inner = (s[..., 0] > 0) & (np.linalg.norm(n[..., :2], axis=-1) < 0.8)
    return out, truth, noisy[0], inner


def test_reuse_follows_a_metal_reflection_and_keeps_its_history():
    out, truth, noisy, inner = sphere_run(reflect_history=8)
    frames = to_numpy(out.frames_a)[..., 0][inner]
    assert frames.mean() > 5  # of at most 8: the stale test and a few unconverged pixels restart some
    error = lambda x: float(np.sqrt(((to_numpy(x) - truth)[inner] ** 2).mean()))
    assert error(out.color_a) < 0.5 * error(noisy)  # the noise of 8 frames is 0.35x one frame's
    # Without it the mirror's history is capped by its narrow lobe: the plain lookup would show the slid reflection.
    plain, _, noisy0, _ = sphere_run(reflect_history=0)
    assert to_numpy(plain.frames_a)[..., 0][inner].mean() < 1.5
    # A shape the table does not call a metal (here: one past its end, as inside an instance) is not followed.
    unknown, _, _, _ = sphere_run(reflect_history=8, mirrors=(False, True))
    assert to_numpy(unknown.frames_a)[..., 0][inner].mean() < 1.5
    # The bilinear history read follows the reflection too.
    bilinear, _, _, _ = sphere_run(reflect_history=8, resample="bilinear")
    assert to_numpy(bilinear.frames_a)[..., 0][inner].mean() > 5


def test_restarted_pixels_are_those_with_one_frame_of_history_on_a_surface():
    reuse = history(4)
    first = frame(1)
    reuse.apply(first)
    position = plane_positions(POSE)
    position[:4] = 0.0  # the background: shown as rendered, so never topped up
    surface = np.full((H, W, 1), 3.0, np.float32)
    surface[10:14, 10:14] = 5.0  # another shape appeared here: a restart
    reuse.apply(frame(2, position=position, surface=surface))
    for index in reuse.restarted():
        mask = np.zeros(H * W, bool)
        mask[index.numpy()] = True
        mask = mask.reshape(H, W)
        expected = np.zeros((H, W), bool)
        expected[10:14, 10:14] = True
        np.testing.assert_array_equal(mask, expected)


def test_added_samples_weigh_by_the_samples_each_mean_holds():
    reuse = history(8)
    f0, f1 = frame(1), frame(2)
    reuse.apply(f0)
    out, _ = reuse.apply(f1)  # two frames of 2 spp: 4 samples per pixel
    index = torch.tensor([0, 5, W + 3])
    extra = torch.full((3, 3), 0.6)  # near the frames' own mean, so no stale test restarts them below
    before = to_numpy(out.color_a).reshape(-1, 3)[index.numpy()].copy()
    reuse.add_samples(0, index, extra, spp=6, frame_spp=2)
    after = to_numpy(out.color_a).reshape(-1, 3)  # the returned frame shares the running means
    np.testing.assert_allclose(after[index.numpy()], (before * 4 + 0.6 * 6) / 10, rtol=1e-5)
    counts = to_numpy(out.frames_a).reshape(-1)
    np.testing.assert_allclose(counts[index.numpy()], 2 + 3)
    assert counts[1] == 2 and np.allclose(after[1], (f0.color_a + f1.color_a).reshape(-1, 3)[1] / 2, rtol=1e-5)
    # Render b's history is untouched, so a and b stay independent.
    np.testing.assert_allclose(to_numpy(out.color_b), (f0.color_b + f1.color_b) / 2, rtol=1e-5, atol=1e-6)
    # The next frame's samples then weigh 2 of 12: the count says 5 frames, plus this one.
    f2 = frame(3)
    nxt, _ = reuse.apply(f2)
    got = to_numpy(nxt.color_a).reshape(-1, 3)[0]
    np.testing.assert_allclose(got, after[0] + (f2.color_a.reshape(-1, 3)[0] - after[0]) / 6, rtol=1e-5)
    # A NaN among the new samples carries nothing into the history.
    reuse.add_samples(0, torch.tensor([7]), torch.tensor([[float("nan"), 1.0, 1.0]]), spp=2, frame_spp=2)
    assert np.isfinite(to_numpy(nxt.color_a)).all()


def test_topup_spp_must_be_a_whole_count():
    with pytest.raises(ValueError, match="topup_spp"):
        TemporalConfig(history=4, topup_spp=-1)
