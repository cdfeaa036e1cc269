"""Temporal reuse: each render keeps a running mean of its own past samples, reprojected to the current view.

At 2 spp a render is mostly noise, but the camera of a fly-through moves a
few pixels per frame, so most surfaces seen now were seen a moment ago.
Every pixel's world position (from the aux pass) is projected into the
previous camera, the previous running mean is read there, and the new render
is blended in with weight 1/n, where n counts the frames the pixel has been
seen, up to ``history``. Where the old pixel was something else (a
disocclusion, a silhouette, another shape, another material, or off screen)
the history restarts at n = 1. (Beside a geometric edge, the four pixels of
the bilinear lookup are tested one by one, and only those on the pixel's own
surface are read; beside a texture edge the history restarts.) So does
every pixel within one pixel of a bright emitter
(``features.emitter_mask``): the aux pass's samples can miss a
light's edge where a colour render's sample hit it, and that spike, half the
light's radiance, then lived on in the running mean for up to ``history``
frames and was resampled into the ceiling around it.

Shading that depends on the view (a glossy floor reflecting the sky) moves
across surfaces that stay put, so the geometry tests pass while the history
is stale. Each render therefore also compares, block by block, the mean
luminance of its reprojected history with that of its new samples, and
restarts the blocks where they differ by more than the new samples' noise
explains. Without that test the glossy-metals floor went grey: 18.6 dB,
where the same run without reuse makes about 30. Diffuse shapes are spared
the test: in a static scene the view cannot change their shading, so every
alarm there was noise, and it cost sunlit-room a quarter of its history.
Drift below the test's noise still adds up over a long history, so a
glossy pixel also keeps no more frames than its lobe width
(``renderer.lobes``, carried by the frame) divided by the angle its view
turned since the last frame.

Render a and render b keep separate histories, and each one's decisions
use only the aux buffers and its own samples, so the two running means stay
independent of each other: Noise2Noise still gets an independent input and
target, and the reference-free error estimate still holds, now measured
against the reused renders' expectation (any lag reuse leaves is not in it).

Measured with the cpu preset (2 spp per render, 256^2, history 16, 120-s
bench runs, at the last frame): the pair's mean goes from 23.6 to 33.6 dB on
cornell-box, 13.4 to 24.8 dB on sunlit-room and 18.7 to 22.6 dB on
glossy-metals. The history is read back with a clamped Catmull-Rom cubic
(``catmull_rom``), not bilinearly: a bilinear lookup blurs a little at
every frame, and over a history of ten frames it spread the sun patch's
rim on sunlit-room over four pixels, in the reused input and in our output
(sunlit-room +1.3 dB at 120 s). The cubic blurs less, not nothing, so
beside a sharp edge in the history's own shading (``sharp_shading``) a
pixel keeps a short history.

A metal (``Frame.mirrors``: a shape with a reflection and no diffuse lobe)
shows the scene in its reflected direction, and that slides over the
surface as the camera turns, so the lobe cap left a mirror-like sphere about
one frame of history. With ``reflect_history`` its pixels read the history
where the previous view saw the same reflected direction instead
(``follow_reflections``), up to that many frames; the stale test still
judges them. On glossy-metals (401 frames, same frames 100-400) that took
the reused input up 1.4-3.8 dB and our output 0.5-1.2 dB, FLIP better at
all four.

Wherever a history restarts, a pixel holds its frame's 2 samples while its
neighbours hold 10 or more, and such pixels (2-8% of the frame:
disocclusions, silhouettes, stale reflections) held 8-74% of our squared
error. With ``topup_spp`` the session renders that many more samples of just
those pixels (``Renderer.render_pixels``: one pass for both renders, whose
lanes are independent, so a and b stay independent) and averages them in
(``add_samples``), counted as the frames' worth of samples they are. On
glossy-metals (401 frames, same frames 100-400) 6 more samples took our
output up 0.24-0.86 dB, FLIP better at all four, for 20-35 ms a frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from .arrays import box3, dilate3, erode3, to_chw
from .color import luminance
from .features import emitter_mask, finite


RESAMPLERS = ("catmull-rom", "bilinear")


@dataclass(frozen=True)
class TemporalConfig:
    history: int = 1  # the most frames a pixel's running mean spans; 1: no reuse
    depth_tolerance: float = 0.02  # relative difference in camera depth still counted as the same surface
    albedo_tolerance: float = 0.05  # per channel; texture edges and material changes break the history
    normal_cos: float = 0.9  # cosine between the old and new shading normal
    block: int = 8  # side of the blocks whose mean luminance tells a stale history from noise
    stale_sigmas: float = 4.0  # a block restarts when old and new means differ by this many noise sigmas
    stale_relative: float = 0.05  # ... and by this fraction of their level
    doubt_sigmas: float = 2.0  # a block off by this many sigmas (and the fraction) keeps a shorter history...
    doubt_history: int = 4  # ... of at most this many frames, so a slowly moving reflection lags less
    lobe_fraction: float = 1.0  # a glossy pixel's history spans at most this many lobe widths of turn; 0: off
    # Where the history's own 3 x 3 means differ by more than this ratio within a pixel's neighbourhood (a shadow
    # line, the rim of a sun patch), it keeps at most ``sharp_history`` frames; 0: off. See ``sharp_shading``.
    sharp_ratio: float = 3.0
    sharp_history: int = 4
    # Diffuse shading does not depend on the view, so in a static scene its history cannot go stale; tested
    # anyway, the false alarms of noise restarted or shortened it (False: only view-dependent pixels are tested).
    test_diffuse: bool = False
    # Training targets take the other render's own samples, not its running mean, within a pixel or two of an
    # edge (``features.edge_mask``) where that mean is long (``ring.EDGE_TARGET_HISTORY``): there both means carry
    # the same reprojection mix of the edge's two sides, which Noise2Noise would teach the network to keep
    # (cornell-box +0.59 dB from scratch; see docs/measurements.md).
    raw_edge_targets: bool = True
    resample: str = "catmull-rom"  # how the history is read back (RESAMPLERS); see catmull_rom
    # On shapes that show only a reflection (``Frame.mirrors``: metals) the history is looked up where the previous
    # view saw the same reflected direction (``follow_reflections``), and such a pixel keeps up to this many frames;
    # 0: off, metals are reprojected with their surface like everything else.
    reflect_history: int = 0
    reflect_tolerance: float = 0.02  # radians: the most the found reflection may differ from this pixel's
    # A pixel whose history restarted this frame (a disocclusion, a silhouette, a stale reflection) holds only
    # its frame's few samples while its neighbours hold many; the session renders this many more samples of
    # each such pixel (``restarted``, ``add_samples``); 0: none. See the module's docstring.
    topup_spp: int = 0

    def __post_init__(self):
        if not isinstance(self.history, int) or self.history < 1:
            raise ValueError(f"history {self.history!r}: expected a whole number of frames, at least 1")
        if not (self.depth_tolerance > 0 and self.albedo_tolerance > 0 and -1 <= self.normal_cos <= 1):
            raise ValueError("temporal tolerances: expected positive depth and albedo tolerances and a cosine in [-1, 1]")
        if self.block < 1 or self.stale_sigmas <= 0 or self.stale_relative < 0:
            raise ValueError("temporal stale test: expected a block of at least 1 pixel and positive thresholds")
        if not 0 < self.doubt_sigmas <= self.stale_sigmas or self.doubt_history < 1:
            raise ValueError("temporal doubt test: expected 0 < doubt_sigmas <= stale_sigmas and doubt_history >= 1")
        if self.resample not in RESAMPLERS:
            raise ValueError(f"resample {self.resample!r}: expected one of {', '.join(RESAMPLERS)}")
        if not self.lobe_fraction >= 0:
            raise ValueError(f"lobe_fraction {self.lobe_fraction!r}: expected a fraction of lobe widths, at least 0")
        if not isinstance(self.reflect_history, int) or self.reflect_history < 0 or not self.reflect_tolerance > 0:
            raise ValueError(f"reflect_history {self.reflect_history!r} / reflect_tolerance {self.reflect_tolerance!r}: "
                             f"expected a whole number of frames (0: off) and a positive angle")
        if not isinstance(self.topup_spp, int) or self.topup_spp < 0:
            raise ValueError(f"topup_spp {self.topup_spp!r}: expected a whole number of samples, at least 0")
        if not (self.sharp_ratio == 0 or 1 < self.sharp_ratio < math.inf) or self.sharp_history < 1:
            raise ValueError(f"sharp_ratio {self.sharp_ratio!r} / sharp_history {self.sharp_history!r}: expected a "
                             f"ratio over 1 (0: off) and at least 1 frame")

    @property
    def enabled(self) -> bool:
        return self.history > 1


def _camera(pose, device) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The pose's position, its camera-to-world rotation (columns left, up, forward) and tan(fov_x / 2)."""
    position = torch.as_tensor(pose.position, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    rotation = torch.as_tensor(pose.rotation, dtype=torch.float32, device=device)
    return position, rotation, math.tan(math.radians(pose.fov) / 2)


def camera_coordinates(points: torch.Tensor, pose) -> torch.Tensor:
    """World points (1 x 3 x H x W) in the pose's camera frame: left, up, forward."""
    position, rotation, _ = _camera(pose, points.device)
    return torch.einsum("jc,bjhw->bchw", rotation, points - position)


def project(points: torch.Tensor, pose, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where world points land in the pose's image, as a grid_sample grid (x, y in [-1, 1]), and their depth.

    Mitsuba's perspective camera looks down +z of its to_world frame, with +x
    to the image's left and +y up; its field of view is horizontal.
    """
    _, _, tan_half = _camera(pose, points.device)
    cam = camera_coordinates(points, pose)
    z = cam[:, 2:3]
    safe = torch.where(z.abs() > 1e-8, z, torch.full_like(z, 1e-8))
    gx = -cam[:, 0:1] / (safe * tan_half)
    gy = -cam[:, 1:2] / (safe * tan_half) * (width / height)
    return torch.cat([gx, gy], 1).permute(0, 2, 3, 1), z


def quad_bounds(image: torch.Tensor) -> torch.Tensor:
    """Per pixel, the least and greatest of it and its right, lower and lower-right neighbours: N x 2C x H x W.

    These are the four pixels a bilinear lookup between them reads, and the
    range ``catmull_rom`` clamps to; a caller that reads one image twice
    computes them once.
    """
    p = F.pad(image, (0, 1, 0, 1), mode="replicate")
    quad = (p[..., :-1, :-1], p[..., :-1, 1:], p[..., 1:, :-1], p[..., 1:, 1:])
    lo = torch.minimum(torch.minimum(quad[0], quad[1]), torch.minimum(quad[2], quad[3]))
    hi = torch.maximum(torch.maximum(quad[0], quad[1]), torch.maximum(quad[2], quad[3]))
    return torch.cat([lo, hi], 1)


def catmull_rom(image: torch.Tensor, grid: torch.Tensor, bounds: torch.Tensor | None = None) -> torch.Tensor:
    """``image`` (N x C x H x W) read at ``grid`` (as grid_sample's) with a Catmull-Rom cubic, clamped to the 2x2 taps.

    The history is read back once a frame, so whatever a lookup blurs, it
    blurs again every frame: a bilinear lookup halfway between pixels
    averages the two, and after ten such moves a sharp step spans four
    pixels from 10% to 90% of its height (the sun patch's rim on sunlit-room
    came out four pixels wide, in the reused input and so in our output).
    The cubic keeps it within two. On each
    axis the two inner taps' weights are positive, so one bilinear lookup
    between them reads both; the four corner taps, under 2% of the weight
    together, are left out and the rest renormalised: five bilinear lookups
    instead of sixteen taps. A cubic overshoots beside an edge (into the
    negative beside a bright one); clamped to the range of the four pixels
    a bilinear lookup would read, it cannot ring, and repeated lookups
    cannot build up gain.
    """
    n, c, h, w = image.shape
    # Pixel coordinates under align_corners=False: -1 and 1 are the outer edges of the corner pixels.
    x = (grid[..., 0] + 1) * (w / 2) - 0.5
    y = (grid[..., 1] + 1) * (h / 2) - 0.5
    x0, y0 = x.floor(), y.floor()

    def axis(t):
        t2, t3 = t * t, t * t * t
        wm = 0.5 * (-t3 + 2 * t2 - t)
        w0 = 0.5 * (3 * t3 - 5 * t2 + 2)
        w1 = 0.5 * (-3 * t3 + 4 * t2 + t)
        w2 = 0.5 * (t3 - t2)
        w01 = w0 + w1
        return (-1.0, wm), (w1 / w01, w01), (2.0, w2)

    (xm, wxm), (x1, wx1), (x2, wx2) = axis(x - x0)
    (ym, wym), (y1, wy1), (y2, wy2) = axis(y - y0)
    # The four corner taps carry under 2% of the weight together; left out, the rest is renormalised.
    offsets = [(x1, y1, wx1 * wy1), (xm, y1, wxm * wy1), (x2, y1, wx2 * wy1), (x1, ym, wx1 * wym), (x1, y2, wx1 * wy2)]
    grids = [torch.stack([(x0 + ox + 0.5) * (2 / w) - 1, (y0 + oy + 0.5) * (2 / h) - 1], -1) for ox, oy, _ in offsets]
    hh = grid.shape[1]
    taps = F.grid_sample(image, torch.cat(grids, 1), mode="bilinear", padding_mode="border", align_corners=False)
    total = sum(wt for _, _, wt in offsets)
    out = None
    for i, (_, _, wt) in enumerate(offsets):
        term = taps[:, :, i * hh:(i + 1) * hh] * (wt / total).unsqueeze(1)
        out = term if out is None else out.add_(term)
    # Clamped to the four pixels a bilinear lookup reads, a sharp edge cannot ring into its dark side.
    corner = torch.stack([(x0 + 0.5) * (2 / w) - 1, (y0 + 0.5) * (2 / h) - 1], -1)
    bounds = F.grid_sample(quad_bounds(image) if bounds is None else bounds, corner, mode="nearest",
                           padding_mode="border", align_corners=False)
    return torch.minimum(torch.maximum(out, bounds[:, :c]), bounds[:, c:])


def view_turn(points: torch.Tensor, pose, prev_pose) -> torch.Tensor:
    """The angle (radians) between the directions from which the two poses' cameras see each world point."""
    now = points - _camera(pose, points.device)[0]
    then = points - _camera(prev_pose, points.device)[0]
    # atan2 of |cross| and dot keeps small angles exact, where acos of a cosine near 1 does not.
    # (torch's norm over the channel dimension took 12 ms at 256^2 on 2 cores; this takes well under 1.)
    cross = torch.linalg.cross(now, then, dim=1)
    return torch.atan2((cross * cross).sum(1, keepdim=True).sqrt(), (now * then).sum(1, keepdim=True))


SHARP_FLOOR = 1e-4  # luminance added to the darker side of the ratio, so that noise on black is no edge


def sharp_shading(histories: list[torch.Tensor], ratio: float) -> torch.Tensor:
    """Pixels near a sharp edge in each history's shading: N x len(histories) x H x W, boolean.

    The history is resampled at every frame, and each cubic read blurs a
    little; a running mean of n frames holds reads of reads up to n deep. On
    sunlit-room, where the sun patch's rim meets the shadow, the reused
    input's dark side came out 2.0-2.3x as bright as the reference while the
    new samples were right (1.00), and the network kept most of that halo.
    A neighbourhood of 3 x 3 means whose brightest is over ``ratio`` x its
    darkest marks such an edge. Each history is judged on its own samples,
    so render a's and render b's decisions stay independent.
    """
    lum = torch.stack([luminance(h.movedim(1, -1)) for h in histories], 1)
    smooth = box3(lum)
    return dilate3(smooth) > ratio * (erode3(smooth) + SHARP_FLOOR)


def reflected(points: torch.Tensor, normal: torch.Tensor, pose) -> torch.Tensor:
    """The unit direction a perfect mirror at ``points`` with ``normal`` reflects the pose's view into.

    Channels along dim 1: images (N x 3 x H x W) or lists of points (n x 3).
    """
    eye = _camera(pose, points.device)[0].view(1, 3, *([1] * (points.dim() - 2)))
    view = points - eye
    view = view / (view * view).sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    n = normal / (normal * normal).sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    return view - 2 * (view * n).sum(1, keepdim=True) * n


REFLECT_STEPS = 2  # Newton steps of ``follow_reflections``: on a sphere under a 2-degree turn a third changed nothing
REFLECT_MAX_STEP = 8.0  # pixels one step may move: beyond that the linearisation is not to be trusted


def follow_reflections(directions: torch.Tensor, field: torch.Tensor, start: torch.Tensor) -> tuple[torch.Tensor,
                                                                                                     torch.Tensor]:
    """Where the previous view saw each of ``directions`` reflected: grid points (n x 2) and the angle left over (n).

    ``field`` (1 x 3 x H x W) is the previous frame's reflected direction of
    every pixel (``reflected``) and ``start`` (n x 2, grid_sample
    coordinates) the points' plain reprojection. On a metal the colour is the
    scene in the reflected direction, which for the distant sky and lights of
    a fly-through hardly depends on where the surface is; it moves across the
    surface as the camera turns, so the surface point's own history shows a
    reflection that has slid away. Newton's method on the field, with its
    Jacobian from neighbouring pixels, finds the pixel of the previous view
    whose reflection matched this one's.
    """
    h, w = field.shape[-2:]
    n = directions.shape[0]
    unit = start.new_tensor([2.0 / w, 2.0 / h])  # one pixel in grid units, per axis
    probes = torch.stack([start.new_zeros(2), unit * start.new_tensor([1.0, 0.0]), unit * start.new_tensor([0.0, 1.0])])

    def read(g):  # the field at each point of g (m x 2): m x 3
        return F.grid_sample(field, g.view(1, 1, -1, 2), mode="bilinear", padding_mode="border",
                             align_corners=False)[0, :, 0].T

    g = start
    for _ in range(REFLECT_STEPS):
        # The point and its two neighbours in one lookup: 3n points, the Jacobian by forward differences.
        r, rx, ry = read((g.unsqueeze(0) + probes.unsqueeze(1)).reshape(-1, 2)).view(3, n, 3)
        jx, jy, e = rx - r, ry - r, directions - r
        a, b, c = (jx * jx).sum(1), (jx * jy).sum(1), (jy * jy).sum(1)
        ex, ey = (jx * e).sum(1), (jy * e).sum(1)
        det = a * c - b * b
        ok = det > 1e-12
        det = torch.where(ok, det, torch.ones_like(det))
        step = torch.stack([(c * ex - b * ey) / det, (a * ey - b * ex) / det], 1) * ok.unsqueeze(1)  # pixels
        length = (step * step).sum(1, keepdim=True).sqrt()
        g = g + step * (REFLECT_MAX_STEP / length.clamp_min(REFLECT_MAX_STEP)) * unit
    d = directions - read(g)
    return g, (d * d).sum(1).sqrt()


class TemporalReuse:
    """The running means of a session's renders; ``apply`` turns each new frame into its reused version."""

    def __init__(self, config: TemporalConfig, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self._prev: dict | None = None
        self._lobe_table: tuple | None = None  # the frames' lobe tuple and the tensor made from it
        self._mirror_table: tuple | None = None  # the frames' mirrors tuple and the tensor made from it

    def apply(self, frame):
        """The frame with each colour replaced by its reprojected running mean, and the mean history length."""
        if frame.position is None or frame.surface is None:
            raise ValueError("temporal reuse needs the frame's position and surface buffers (the renderer's aux pass)")
        dev = self.device
        # A NaN or Inf sample would otherwise live on in the history for as long as the pixel stays in view.
        colors = [finite(to_chw(c, dev)) for c in (frame.color_a, frame.color_b) if c is not None]
        position = to_chw(frame.position, dev)
        surface = to_chw(frame.surface, dev)
        albedo = to_chw(frame.albedo, dev)
        normal = to_chw(frame.normal, dev)
        h, w = position.shape[-2:]
        # A pixel is reusable only if all of its samples hit one and the same shape, away from any light.
        seen = (position != 0).any(1, keepdim=True)  # some sample hit a surface
        solid = seen & ((surface - surface.round()).abs() < 1e-3)
        emission = getattr(frame, "emission", None)
        if emission is not None:
            light = emitter_mask(to_chw(emission, dev))
            solid &= ~(dilate3(light) > 0)
            seen &= ~(light > 0)
        depth = camera_coordinates(position, frame.pose)[:, 2:3]
        mirror = self._mirror_pixels(getattr(frame, "mirrors", None), surface, solid, position, normal, frame.pose)

        prev = self._prev
        if prev is None or prev["shape"] != (h, w) or len(prev["colors"]) != len(colors):
            counts = [torch.ones(1, 1, h, w, device=dev) for _ in colors]
            means = colors
        else:
            widths = self._lobe_widths(getattr(frame, "lobes", None), surface)
            view_cap = self._view_cap(widths, position, frame.pose, prev["pose"])
            diffuse = None if widths is None or self.config.test_diffuse else torch.isposinf(widths)
            counts, means = self._blend(prev, colors, position, surface, albedo, normal, solid, view_cap, diffuse,
                                        h, w, mirror)
        self._prev = {"shape": (h, w), "colors": means, "counts": counts, "depth": depth, "albedo": albedo,
                      "normal": normal, "surface": surface, "solid": solid.float(), "seen": seen[0, 0],
                      "pose": frame.pose,
                      "reflect": None if mirror is None else mirror[2]}
        hwc = [m[0].permute(1, 2, 0) for m in means]
        spans = [c[0].permute(1, 2, 0) for c in counts]
        reused = replace(frame, color_a=hwc[0], color_b=hwc[1] if len(hwc) > 1 else None,
                         frames_a=spans[0], frames_b=spans[1] if len(spans) > 1 else None,
                         raw_a=frame.color_a, raw_b=frame.color_b)
        return reused, float(sum(c.mean() for c in counts) / len(counts))

    def restarted(self) -> list[torch.Tensor]:
        """Per render, the flat indices of the pixels whose history is one frame, after the last ``apply``.

        Only pixels that saw a surface: the background and directly seen
        lights are shown as rendered, so more samples there would change nothing.
        """
        if self._prev is None:
            return []
        seen = self._prev["seen"]
        return [((c[0, 0] <= 1) & seen).view(-1).nonzero().squeeze(1) for c in self._prev["counts"]]

    def add_samples(self, render: int, index: torch.Tensor, colors: torch.Tensor, spp: int, frame_spp: int) -> None:
        """Average ``spp`` new samples of each pixel (``colors``: n x 3) into render ``render``'s running mean.

        A mean of c frames holds c * frame_spp samples, so the new ones weigh
        spp / (c * frame_spp + spp), and the count grows by spp / frame_spp:
        the next frame's samples, the stale test's noise and the caps all see
        the pixel as the frames' worth of samples it now holds. The frame
        ``apply`` returned shares these tensors and sees the change.
        """
        if not index.numel():
            return
        mean = self._prev["colors"][render].view(3, -1)
        count = self._prev["counts"][render].view(-1)
        held = count[index] * frame_spp
        new = finite(colors.to(mean.device, mean.dtype)).T
        mean[:, index] = (mean[:, index] * held + new * spp) / (held + spp)
        count[index] += spp / frame_spp

    def _lobe_widths(self, lobes, surface) -> torch.Tensor | None:
        """Each pixel's lobe width in radians (inf: diffuse; NaN: a shape the table does not know); None: no table."""
        if lobes is None:
            return None
        if self._lobe_table is None or self._lobe_table[0] is not lobes:
            # One more entry for shape ids the table does not know (shapes inside instances): nothing is known
            # of their material, so they are neither capped by a lobe nor exempt from the stale test.
            widths = torch.tensor([*lobes, math.nan], dtype=torch.float32, device=self.device)
            self._lobe_table = (lobes, widths, any(math.isfinite(v) for v in lobes))
        table = self._lobe_table[1]
        return table[surface.round().long().clamp(0, table.numel() - 1)]

    def _mirror_pixels(self, mirrors, surface, solid, position, normal, pose):
        """The pixels wholly on a shape that shows only a reflection: flat indices, their reflected directions
        (n x 3) and those as an image (zero elsewhere), for the next frame to search; None: none, or turned off."""
        if not self.config.reflect_history or mirrors is None or not any(mirrors):
            return None
        if self._mirror_table is None or self._mirror_table[0] is not mirrors:
            # One more entry for shape ids the table does not know (shapes inside instances): not metals.
            self._mirror_table = (mirrors, torch.tensor([*mirrors, False], dtype=torch.bool, device=self.device))
        table = self._mirror_table[1]
        on = table[surface.round().long().clamp(0, table.numel() - 1)] & solid
        index = on.view(-1).nonzero().squeeze(1)
        if not index.numel():
            return None
        h, w = surface.shape[-2:]
        at = lambda x: x.reshape(3, h * w)[:, index].T
        directions = reflected(at(position), at(normal), pose)
        field = position.new_zeros(3, h * w)
        field[:, index] = directions.T
        return index, directions, field.view(1, 3, h, w)

    def _view_cap(self, widths, position, pose, prev_pose) -> torch.Tensor:
        """The longest history each pixel's shading allows, given how far the view turned since the last frame.

        A glossy reflection slides by about the view's turn, so a running mean
        of n frames blurs it over n turns; ``lobe_fraction`` lobe widths is
        the most that is allowed. Diffuse pixels (an infinite lobe), shapes
        the table does not know and a still camera are not capped.
        """
        cfg = self.config
        if widths is None or cfg.lobe_fraction == 0 or not self._lobe_table[2]:
            return torch.tensor(float(cfg.history), device=self.device)
        turn = view_turn(position, pose, prev_pose)
        width = torch.nan_to_num(widths, nan=math.inf)
        frames = torch.where(turn > 1e-7, cfg.lobe_fraction * width / turn.clamp_min(1e-7), math.inf)
        return frames.floor().clamp(1, cfg.history)

    def _blend(self, prev, colors, position, surface, albedo, normal, solid, view_cap, diffuse, h, w, mirror=None):
        cfg = self.config
        grid, depth_then = project(position, prev["pose"], h, w)
        # The geometry that decides whether to trust the history is read bilinearly, the colours with the sharper
        # cubic unless configured otherwise (pixels beside an edge are redone tap by tap below).
        stacked = torch.cat([*prev["colors"], prev["depth"], prev["albedo"], prev["normal"], prev["surface"],
                             prev["solid"]], 1)
        k = 3 * len(colors)
        bilinear = lambda x: F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        following = mirror is not None and prev.get("reflect") is not None
        bounds = None
        if cfg.resample == "catmull-rom":
            # The metals' second lookup reads the same colours, within the same clamp.
            bounds = quad_bounds(stacked[:, :k]) if following else None
            looked = torch.cat([catmull_rom(stacked[:, :k], grid, bounds), bilinear(stacked[:, k:])], 1)
        else:
            looked = bilinear(stacked)
        prev_counts = torch.cat(prev["counts"], 1)
        old_counts = F.grid_sample(prev_counts, grid, mode="nearest", padding_mode="border",
                                   align_corners=False)
        inside = (grid.abs() < 1).all(-1).unsqueeze(1) & (depth_then > 0)
        # Bilinear lookups of the solid mask and shape index equal the exact values only when all four
        # neighbours agree, so these tests also refuse history that straddles an edge...
        geometry = inside & solid & self._same_geometry(looked[:, k:], depth_then, surface, normal)
        same = geometry & self._same_albedo(looked[:, k:], albedo)
        # ...and there each of the four is tested on its own instead. Not where only the albedo failed,
        # inside a texture: there a tap with the pixel's albedo may as well be the neighbouring texel
        # (the aux pass's few samples blur which one), and reading it shifted one-pixel detail, where
        # restarting keeps it in place (fine-texture: 29.95 dB after 240 frames against 30.94).
        edge = (inside & solid & ~geometry).view(-1).nonzero().squeeze(1)
        if edge.numel():
            self._per_tap(edge, stacked, prev_counts, grid, looked, old_counts, same, k,
                          depth_then, surface, albedo, normal)
        if following:
            view_cap = self._follow(mirror[0], mirror[1], prev["reflect"], stacked, prev_counts, grid, looked,
                                    old_counts, same, k, surface, view_cap, bounds)
        old_colors = [looked[:, 3 * i:3 * i + 3].clamp_min(0.0) for i in range(len(colors))]
        sharp = sharp_shading(old_colors, cfg.sharp_ratio) if cfg.sharp_ratio else None
        counts, means = [], []
        for i, (old, new) in enumerate(zip(old_colors, colors)):
            stale, doubtful = self._stale(old, new, same, old_counts[:, i:i + 1], diffuse)
            keep = same & ~stale
            cap = torch.minimum(torch.where(doubtful, min(cfg.doubt_history, cfg.history), cfg.history), view_cap)
            if sharp is not None:
                cap = torch.where(sharp[:, i:i + 1], cap.clamp_max(cfg.sharp_history), cap)
            count = torch.where(keep, torch.minimum(old_counts[:, i:i + 1] + 1, cap), torch.ones_like(new[:, :1]))
            counts.append(count)
            means.append(torch.where(keep, old + (new - old) / count, new))
        return counts, means

    def _follow(self, mirror, directions, field, stacked, counts, grid, looked, old_counts, same, k, surface,
                view_cap, bounds=None) -> torch.Tensor:
        """Redo the lookup of the ``mirror`` pixels (flat indices) where their reflection was, in place; the new caps.

        A pixel keeps the reflection's history where the previous view saw its
        reflected direction within ``reflect_tolerance`` on the same shape;
        elsewhere it keeps its plain lookup, and the lobe's cap. The stale test
        still judges both.
        """
        cfg = self.config
        h, w = surface.shape[-2:]
        hw = h * w
        found, left = follow_reflections(directions, field, grid.reshape(hw, 2)[mirror])
        g = found.view(1, 1, -1, 2)
        geo = F.grid_sample(stacked[:, k:], g, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0]
        inside = (found.abs() < 1).all(1)
        kept = (inside & (left < cfg.reflect_tolerance) & (geo[8] > 0.999)
                & ((geo[7] - surface.reshape(hw)[mirror]).abs() < 1e-3))
        if cfg.resample == "catmull-rom":
            col = catmull_rom(stacked[:, :k], g, bounds)[0, :, 0]
        else:
            col = F.grid_sample(stacked[:, :k], g, mode="bilinear", padding_mode="border", align_corners=False)[0, :, 0]
        cnt = F.grid_sample(counts, g, mode="nearest", padding_mode="border", align_corners=False)[0, :, 0]
        idx = mirror[kept]
        looked.view(looked.shape[1], hw)[:k, idx] = col[:, kept]
        old_counts.view(old_counts.shape[1], hw)[:, idx] = cnt[:, kept]
        same.view(hw)[idx] = True
        cap = view_cap.expand(1, 1, h, w).clone()
        cap.view(hw)[idx] = float(min(cfg.reflect_history, cfg.history))
        return cap

    def _same_surface(self, old: torch.Tensor, depth_then, surface, albedo, normal) -> torch.Tensor:
        """Whether the looked-up geometry (depth, albedo, normal, shape index, solid; along dim 1) is this pixel's."""
        return self._same_geometry(old, depth_then, surface, normal) & self._same_albedo(old, albedo)

    def _same_albedo(self, old: torch.Tensor, albedo) -> torch.Tensor:
        return (old[:, 1:4] - albedo).abs().amax(1, keepdim=True) < self.config.albedo_tolerance

    def _same_geometry(self, old: torch.Tensor, depth_then, surface, normal) -> torch.Tensor:
        """``_same_surface`` without the albedo: the same shape, at the same depth, facing the same way."""
        cfg = self.config
        return ((old[:, 8:9] > 0.999)
                & ((old[:, 0:1] - depth_then).abs() < cfg.depth_tolerance * depth_then)
                & ((old[:, 7:8] - surface).abs() < 1e-3)
                & ((old[:, 4:7] * normal).sum(1, keepdim=True) > cfg.normal_cos))

    def _per_tap(self, edge, stacked, counts, grid, looked, old_counts, same, k, depth_then, surface, albedo,
                 normal) -> None:
        """Redo the lookup of the ``edge`` pixels (flat indices) tap by tap, in place.

        A pixel beside an edge looks back at a footprint that straddles it, and
        its one bilinear lookup fails the tests; without this, every edge's band
        of 2-3 pixels restarted at each camera move, and stayed at the noise of
        one frame. Each of the four pixels around the point is tested on its
        own, and the bilinear weights of those that pass are renormalised, so
        the pixel keeps the history of its own side.
        """
        h, w = stacked.shape[-2:]
        at = lambda x: x.reshape(x.shape[1], h * w)[:, edge].unsqueeze(0)  # 1 x C x n
        flat, flat_counts = stacked.reshape(stacked.shape[1], h * w), counts.reshape(counts.shape[1], h * w)
        here = [at(x) for x in (depth_then, surface, albedo, normal)]
        xy = grid.reshape(h * w, 2)[edge]
        # grid_sample's align_corners=False convention: -1 and 1 are the outer edges of the corner pixels.
        x, y = (xy[:, 0] + 1) * w / 2 - 0.5, (xy[:, 1] + 1) * h / 2 - 0.5
        x0, y0 = x.floor(), y.floor()
        total, weight = 0.0, 0.0
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            xi, yi = x0 + dx, y0 + dy
            bilinear = (x - x0 if dx else 1 - (x - x0)) * (y - y0 if dy else 1 - (y - y0))
            on_image = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
            index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()
            tap = flat[:, index].unsqueeze(0)
            wt = bilinear * on_image * self._same_surface(tap[:, k:], *here)[0, 0]
            total = total + wt * torch.cat([tap[0, :k], flat_counts[:, index]])
            weight = weight + wt
        kept = weight > 1e-3
        back = total / weight.clamp_min(1e-3)
        looked.view(looked.shape[1], h * w)[:k, edge] = back[:k]
        old_counts.view(old_counts.shape[1], h * w)[:, edge] = back[k:]
        same.view(h * w)[edge] = kept

    def _stale(self, old: torch.Tensor, new: torch.Tensor, same: torch.Tensor, old_count: torch.Tensor,
               exempt: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels in blocks where the history's mean luminance is off from the new samples' by more than noise.

        Returns the stale pixels (over ``stale_sigmas``) and the doubtful ones (over ``doubt_sigmas``).
        ``exempt`` pixels (diffuse, whose shading the view does not change) are
        neither tested nor counted in their block's means.
        """
        cfg = self.config
        h, w = new.shape[-2:]
        k = max(1, min(cfg.block, h, w))
        if exempt is not None:
            same = same & ~exempt
        m = same.to(new.dtype)
        lum_old, lum_new = (luminance(x.permute(0, 2, 3, 1)).unsqueeze(1) for x in (old, new))
        pool = lambda x: F.avg_pool2d(x, k, ceil_mode=True)
        frac = pool(m)
        weight = frac.clamp_min(1e-6)
        old_mean, new_mean = pool(lum_old * m) / weight, pool(lum_new * m) / weight
        new_var = (pool(lum_new * lum_new * m) / weight - new_mean ** 2).clamp_min(0)
        samples = (frac * k * k).clamp_min(1)
        # The history is a mean of n renders like the new one: its noise adds var / n to the gap's.
        inv_n = pool(m / old_count.clamp_min(1)) / weight
        gap = (old_mean - new_mean).abs()
        sigma = torch.sqrt(new_var * (1 + inv_n) / samples)
        relevant = gap > cfg.stale_relative * torch.maximum(old_mean, new_mean)
        stale = (gap > cfg.stale_sigmas * sigma) & relevant
        doubtful = (gap > cfg.doubt_sigmas * sigma) & relevant

        def per_pixel(blocks: torch.Tensor) -> torch.Tensor:
            return (F.interpolate(blocks.to(new.dtype), scale_factor=k, mode="nearest")[..., :h, :w] > 0.5) & same

        return per_pixel(stale), per_pixel(doubtful)
