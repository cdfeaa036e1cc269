"""The Mitsuba renderer: pairs of independent renders of one camera pose.

Each frame is three passes: two colour renders with the scene's own integrator
and distinct seeds, and an auxiliary pass (albedo, shading normal, the world
position and shape index that temporal reuse reprojects with, and the directly
seen emission) from ``aux.py``'s integrator and a third seed. Measured at
256^2, 4 spp, on 2 cores: wrapping the path tracer in ``aov`` costs 145 ms per
render, while the bare path tracer costs 68 ms and the separate AOV pass 7 ms.
The separate pass is also more correct for Noise2Noise: AOVs taken from render
b share its pixel sample positions, so at edges they would carry b's noise
into the input of a network whose target is b.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import aux as aux_pass
from . import guide as guide_pass
from . import workers
from .camera import CameraPath, Pose, load_path, orbit_path
from .errors import RendererError
from .frame import Frame
from .lobes import shape_lobes, shape_mirrors
from .scene import (DEFAULT_SCENE, SceneError, SceneInfo, live_integrator_xml, prepare_xml, resolve_scene,
                    scene_digest)
from .variant import activate, choose_variant

# A session draws its seeds from [seed * SEEDS_PER_SESSION, (seed + 1) * SEEDS_PER_SESSION):
# a million passes, over nine hours at 30 passes a second. The last block is kept for
# reference renders, so that a reference never shares a seed with the frames it judges.
SEEDS_PER_SESSION = 1 << 20
SESSION_BLOCKS = (1 << 32) // SEEDS_PER_SESSION - 1
REFERENCE_SEED_BASE = SESSION_BLOCKS * SEEDS_PER_SESSION
MAX_SPP_PER_PASS = 64  # bounds the wavefront (and its memory) of high-spp renders
# Dr.Jit compiles a new kernel for every wavefront size a pixel pass meets (about 0.45 s each at 256^2 on
# 2 cores), so the pixel count is padded up to the next of these geometric steps: a few sizes a session.
PIXEL_BUCKET_MIN, PIXEL_BUCKET_GROWTH = 256, 1.25


@dataclass(frozen=True)
class RenderConfig:
    scene: str = DEFAULT_SCENE  # built-in scene name, scene folder or XML path
    width: int = 256
    height: int = 256
    spp: int = 4  # samples per pixel of *each* render of a pair
    aux_spp: int | None = None  # albedo/normal pass; None: same as spp, so edges are antialiased alike
    variant: str | None = None  # None or "auto": cuda_ad_rgb, then llvm_ad_rgb, then scalar_rgb
    seed: int = 0  # selects this session's block of seeds
    path: str | None = None  # camera path JSON; None: the scene's path.json, else an orbit
    arrays: str = "auto"  # "numpy", or "dlpack" (drjit tensors for zero-copy torch); auto: dlpack on CUDA
    threads: int | None = None  # drjit's CPU worker threads (LLVM variant); None: one per core
    # Nice value for those workers (LLVM variant): their idle polling after each render then yields to
    # the torch work that follows it (workers.py). None: leave them as they are.
    worker_nice: int | None = 10
    renders: int = 2  # colour renders per frame: 2 (a pair, for Noise2Noise) or 1
    target_spp: int | None = None  # also render a clean target at this spp (clean-target training)
    # Record each pass once with dr.freeze and replay it: no Python tracing or kernel-cache lookups per
    # frame. None: on CUDA only. On the LLVM variant replay measured slower, 110 against 74 ms for a
    # 2-spp pair plus its AOV pass at 256^2 (identical images), so it stays off there.
    freeze: bool | None = None
    # Path depth from which the live colour renders may play Russian roulette early (None: never; the
    # scene's own setting, Mitsuba's default 5, stands). Unbiased, so references keep the scene's setting.
    # At 3, a 2-spp render at 256^2 took 47.9 ms against 59.5 on sunlit-room (32.3 -> 26.6 on
    # cornell-box) for 10% (5%) more squared error. ``early_roulette`` says whether it starts on;
    # set_early_roulette switches it later.
    rr_depth: int | None = None
    early_roulette: bool = True
    # Also render the specular guide (guide.py) at this fraction of the aux pass's samples; 0: no guide.
    guide_share: float = 0.0

    def __post_init__(self):
        if self.width < 1 or self.height < 1:
            raise RendererError(f"--res {self.width}x{self.height}: width and height must be positive")
        if self.spp < 1 or (self.aux_spp is not None and self.aux_spp < 1):
            raise RendererError(f"--spp {self.spp}: expected a positive sample count")
        if self.renders not in (1, 2):
            raise RendererError(f"renders per frame: expected 1 or 2, got {self.renders}")
        if self.threads is not None and self.threads < 1:
            raise RendererError(f"--render-threads {self.threads}: expected at least 1 thread")
        if self.target_spp is not None and self.target_spp < 1:
            raise RendererError(f"--target-spp {self.target_spp}: expected a positive sample count")
        if self.arrays not in ("auto", "numpy", "dlpack"):
            raise RendererError(f"arrays {self.arrays!r}: expected auto, numpy or dlpack")
        if self.rr_depth is not None and self.rr_depth < 1:
            raise RendererError(f"rr_depth {self.rr_depth}: expected a path depth of at least 1")
        if not 0 <= self.guide_share <= 1:
            raise RendererError(f"guide share {self.guide_share}: expected 0 (no guide) to 1")
        if not 0 <= self.seed < SESSION_BLOCKS:
            raise RendererError(f"--seed {self.seed}: expected 0 to {SESSION_BLOCKS - 1}")


class Renderer:
    def __init__(self, config: RenderConfig):
        self.config = config
        self.variant = choose_variant(config.variant)
        self.scene_info: SceneInfo = resolve_scene(config.scene)
        mi = self._mi = activate(self.variant)
        import drjit

        self._dr = drjit
        xml = prepare_xml(self.scene_info.xml, config.width, config.height, config.spp)
        # Relative asset paths in the XML resolve against the scene's own folder.
        resolver = mi.file_resolver() if hasattr(mi, "file_resolver") else mi.Thread.thread().file_resolver()
        resolver.prepend(str(self.scene_info.xml.parent.resolve()))
        try:
            self.scene = mi.load_string(xml)
        except Exception as e:  # Mitsuba reports every load problem as a RuntimeError
            msg = str(e).strip().splitlines()
            raise SceneError(f"{self.scene_info.xml}: Mitsuba could not load it: {msg[-1] if msg else e}") from None
        if config.threads is not None and self.variant.startswith("llvm"):
            # Only after the load: Mitsuba loads a scene's objects as tasks on Dr.Jit's pool, and a task
            # that waits on its children deadlocked a pool of one worker (glossy-metals hung in
            # load_string with --render-threads 1; cornell-box, with fewer objects, did not).
            drjit.set_thread_count(config.threads)
        self.sensor = self.scene.sensors()[0]
        self._scene_integrator = self.scene.integrator()  # references
        self._early_integrator = self._load_early_integrator(xml, config.rr_depth)
        self._color_integrator = self._scene_integrator
        self.set_early_roulette(config.early_roulette)
        self._aux_integrator = mi.load_dict(aux_pass.integrator(mi))
        guide = guide_pass.integrator(mi) if config.guide_share > 0 else None
        self._guide_integrator = mi.load_dict(guide) if guide is not None else None
        self.aux_spp = config.aux_spp  # None: each frame's colour spp; set_aux_spp changes it
        self.lobes = shape_lobes(mi, self.scene)
        self.mirrors = shape_mirrors(mi, self.scene)
        self.keeps_jit_arrays = config.arrays == "dlpack" or (config.arrays == "auto" and self.variant.startswith("cuda"))
        if self.keeps_jit_arrays and self.variant.startswith("scalar"):
            raise RendererError("arrays 'dlpack' needs a JIT variant (cuda_ad_rgb or llvm_ad_rgb)")
        self.freezes = self.variant.startswith("cuda") if config.freeze is None else config.freeze
        if self.freezes and self.variant.startswith("scalar"):
            raise RendererError("frozen renders need a JIT variant (cuda_ad_rgb or llvm_ad_rgb)")
        self._frozen: dict[tuple[int, int], object] = {}
        self._workers_niced = False
        self._params = mi.traverse(self.scene)
        self._sensor_key = self._find_sensor_key()
        self._next_seed = config.seed * SEEDS_PER_SESSION
        self._seed_end = self._next_seed + SEEDS_PER_SESSION
        bbox = self.scene.bbox()
        self.bbox = (np.array(bbox.min, float).reshape(3), np.array(bbox.max, float).reshape(3))
        self.initial_pose = self._read_pose()
        self.path = self._load_path()
        # Writing to_world once now makes it an opaque variable before the first kernel is traced;
        # otherwise the first camera move would recompile every kernel.
        self.set_pose(self.initial_pose)

    # -- setup -------------------------------------------------------------

    def _load_early_integrator(self, xml: str, rr_depth: int | None):
        """The scene's integrator with early Russian roulette, or None where there is none to make.

        Early roulette is only a speed-up, so an integrator that does not load
        on its own (say, one that needs the scene's other objects) is left as it is.
        """
        early = live_integrator_xml(xml, rr_depth) if rr_depth is not None else None
        if early is None:
            return None
        try:
            return self._mi.load_string(early)
        except Exception:  # Mitsuba reports load problems as RuntimeError
            return None

    def _find_sensor_key(self) -> str:
        keys = [k[: -len(".to_world")] for k in self._params.keys() if k.endswith(".to_world")]
        for candidate in keys:
            if candidate.split(".")[-1] in (self.sensor.id(), "sensor"):
                return candidate
        raise SceneError(f"{self.scene_info.xml}: its sensor has no movable to_world transform")

    def _read_pose(self) -> Pose:
        m = np.array(self._params[self._sensor_key + ".to_world"].matrix, dtype=float).reshape(4, 4)
        rotation = m[:3, :3]
        # Scene files may scale the camera transform (e.g. flip x); keep only the rotation.
        rotation = rotation / np.linalg.norm(rotation, axis=0, keepdims=True)
        fov_key = self._sensor_key + ".x_fov"
        fov = float(np.array(self._params[fov_key]).reshape(-1)[0]) if fov_key in self._params else 40.0
        return Pose(m[:3, 3].copy(), rotation, fov)

    def _load_path(self) -> CameraPath:
        source = self.config.path or self.scene_info.path_json
        if source is not None:
            return load_path(Path(source), default_fov=self.initial_pose.fov)
        return orbit_path(*self.bbox, fov=self.initial_pose.fov)

    # -- rendering ---------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int]:
        return self.config.height, self.config.width

    @property
    def scene_digest(self) -> str:
        if not hasattr(self, "_digest"):
            self._digest = scene_digest(self.scene_info.xml)
        return self._digest

    def take_seed(self) -> int:
        if self._next_seed >= self._seed_end:
            raise RendererError("this session has used all of its seeds; start a new one with another --seed")
        seed = self._next_seed
        self._next_seed += 1
        return seed

    def set_pose(self, pose: Pose) -> None:
        mi = self._mi
        self._params[self._sensor_key + ".to_world"] = mi.ScalarTransform4f(pose.matrix().astype(np.float32))
        fov_key = self._sensor_key + ".x_fov"
        if fov_key in self._params:
            self._params[fov_key] = float(pose.fov)
        self._params.update()
        self.pose = pose

    def _frozen_pass(self, integrator, spp: int):
        """The pass recorded by dr.freeze, one per integrator and sample count.

        The scene is an argument, so the camera's to_world (written through
        mi.traverse) is an input of the recording, and the seed is an opaque
        UInt32, so a new seed replays instead of re-recording.
        """
        key = (id(integrator), spp)
        if key not in self._frozen:
            sensor = self.sensor
            self._frozen[key] = self._dr.freeze(
                lambda scene, seed: integrator.render(scene, sensor, seed=seed, spp=spp))
        return self._frozen[key]

    def _pass(self, integrator, seed: int, spp: int):
        if self.freezes:
            image = self._frozen_pass(integrator, spp)(self.scene, self._dr.opaque(self._mi.UInt32, seed))
        else:
            image = integrator.render(self.scene, self.sensor, seed=seed, spp=spp)
        if self.keeps_jit_arrays:
            # Stay where drjit computed it (the GPU on CUDA) for DLPack, but finish the kernel first:
            # torch reads the memory on its own stream, and the timings would only measure the launch.
            self._dr.eval(image)
            self._dr.sync_thread()
            return image
        return np.asarray(image, dtype=np.float32)

    def render_pass(self, pose: Pose, spp: int, seed: int):
        """One colour pass with an explicit seed (references choose their own, outside the session's)."""
        if pose is not self.pose:
            self.set_pose(pose)
        if spp > MAX_SPP_PER_PASS:
            raise ValueError(f"a single pass takes at most {MAX_SPP_PER_PASS} spp, got {spp}")
        return self._pass(self._scene_integrator, seed, spp)[:, :, 0:3]

    def render_color(self, pose: Pose, spp: int):
        """One colour render; high sample counts are split into passes and averaged."""
        if pose is not self.pose:
            self.set_pose(pose)
        return self._render_passes(self.take_seed(), spp)

    def render_pair(self, pose: Pose, index: int = 0, spp: int | None = None) -> Frame:
        """The frame's colour renders (two, or one), the aux pass and, if configured, a clean target.

        ``spp`` overrides the configured count for this frame. Every pass takes
        the session's next seed, so no two passes share one.
        """
        if pose is not self.pose:
            self.set_pose(pose)
        spp = spp or self.config.spp
        aux_spp = self.aux_spp or spp
        ms = 1000.0
        timings: dict[str, float] = {}
        seeds: dict[str, int] = {}
        t_start = time.perf_counter()

        def timed(name: str, integrator, n: int):
            seeds[name] = self.take_seed()
            t0 = time.perf_counter()
            image = self._pass(integrator, seeds[name], n)
            timings[f"render_{name}"] = (time.perf_counter() - t0) * ms
            return image

        color_a = timed("a", self._color_integrator, spp)[:, :, 0:3]
        color_b = timed("b", self._color_integrator, spp)[:, :, 0:3] if self.config.renders == 2 else None
        aux = timed("aux", self._aux_integrator, aux_spp)
        specular = None
        if self._guide_integrator is not None:
            n = max(1, round(aux_spp * self.config.guide_share))
            specular = timed("guide", self._guide_integrator, n)[:, :, 0:3]
        elif self.config.guide_share > 0:  # a scalar variant: no guide pass, a guide of 0
            specular = np.zeros(self.shape + (3,), np.float32)
        target = None
        if self.config.target_spp:
            seeds["target"] = self.take_seed()
            t0 = time.perf_counter()
            target = self._render_passes(seeds["target"], self.config.target_spp)
            timings["render_target"] = (time.perf_counter() - t0) * ms
        timings["render"] = (time.perf_counter() - t_start) * ms
        self._lower_worker_priority()
        # The albedo AOV is unbounded on rough conductors (60 was seen) and 0 on glass.
        albedo = self._clip(aux[:, :, aux_pass.ALBEDO], 0.0, 1.0)
        # Each buffer gets its own contiguous array once here: as strided views into the aux image, every
        # consumer (reuse, the ring, the denoiser) copied them again, 3-4 ms a frame at 256^2.
        own = self._own
        return Frame(color_a, color_b, albedo, own(aux[:, :, aux_pass.NORMAL]), pose, index, seeds, spp, timings,
                     target, self.config.target_spp or 0, position=own(aux[:, :, aux_pass.POSITION]),
                     surface=own(aux[:, :, aux_pass.SHAPE]), emission=own(aux[:, :, aux_pass.EMISSION]),
                     specular=specular, lobes=self.lobes, mirrors=self.mirrors)

    def render_pixels(self, index: np.ndarray, spp: int) -> np.ndarray:
        """More colour samples of some pixels of the current pose: the mean of ``spp`` for each flat index.

        The pixels' samples are drawn as ``render`` draws them (uniform over the
        pixel, the box filter's footprint) with the live integrator and a seed
        of the session's own, so they are independent of every other pass and
        may be averaged into a render of the same pose. Returns (n, 3) float32.
        """
        if self.variant.startswith("scalar"):
            raise RendererError("pixel passes need a JIT variant (cuda_ad_rgb or llvm_ad_rgb)")
        index = np.asarray(index, dtype=np.uint32).reshape(-1)
        n = index.size
        if n == 0:
            return np.zeros((0, 3), np.float32)
        h, w = self.shape
        if int(index.max()) >= h * w:
            raise ValueError(f"pixel index {int(index.max())} outside the {w}x{h} film")
        mi, dr = self._mi, self._dr
        size = PIXEL_BUCKET_MIN
        while size < n:
            size = math.ceil(size * PIXEL_BUCKET_GROWTH)
        padded = np.concatenate([index, np.full(size - n, index[0], np.uint32)])  # the padding is dropped
        sampler = mi.load_dict({"type": "independent"})
        sampler.seed(self.take_seed(), size * spp)
        lane = dr.arange(mi.UInt32, size * spp)
        slot = lane // spp  # a pixel's samples are consecutive lanes
        pixel = dr.gather(mi.UInt32, mi.UInt32(padded), slot)
        film = mi.Point2f(mi.Float(pixel % w), mi.Float(pixel // w)) + sampler.next_2d()
        ray, weight = self.sensor.sample_ray_differential(
            self.sensor.shutter_open(), sampler.next_1d(), film / mi.ScalarPoint2f(w, h), sampler.next_2d())
        radiance, _, _ = self._color_integrator.sample(self.scene, sampler, ray, None, True)
        total = dr.zeros(mi.Color3f, size)
        dr.scatter_reduce(dr.ReduceOp.Add, total, mi.Color3f(radiance * weight), slot)
        out = np.asarray(total, dtype=np.float32).T[:n] / spp  # drjit's Color3f is 3 x n
        return np.ascontiguousarray(out)

    def set_aux_spp(self, spp: int) -> None:
        """Samples per pixel of the albedo/normal pass from the next frame on."""
        if spp < 1:
            raise ValueError(f"aux spp {spp}: expected at least 1")
        self.aux_spp = spp

    def set_early_roulette(self, on: bool) -> bool:
        """Render the live pairs with Russian roulette from ``rr_depth`` (or the scene's own); whether it is on.

        Off where the scene's integrator has no Russian roulette to move, or sets its own ``rr_depth``.
        """
        self._color_integrator = self._early_integrator if on and self._early_integrator else self._scene_integrator
        return self.early_roulette

    @property
    def early_roulette(self) -> bool:
        return self._color_integrator is not self._scene_integrator

    def _lower_worker_priority(self) -> None:
        """Once, after the first render has started Dr.Jit's thread pool."""
        if self._workers_niced or self.config.worker_nice is None or not self.variant.startswith("llvm"):
            return
        workers.lower_priority(workers.worker_threads(), self.config.worker_nice)
        self._workers_niced = True

    def _render_passes(self, first_seed: int, spp: int):
        """A colour render of any spp, as passes of at most MAX_SPP_PER_PASS with consecutive seeds.

        The seeds after ``first_seed`` are taken from the session too, so none is reused.
        """
        passes = math.ceil(spp / MAX_SPP_PER_PASS)
        total = None
        for i in range(passes):
            n = min(MAX_SPP_PER_PASS, spp - i * MAX_SPP_PER_PASS)
            seed = first_seed if i == 0 else self.take_seed()
            image = self._pass(self._scene_integrator, seed, n)[:, :, 0:3] * (n / spp)
            total = image if total is None else total + image
        return total

    @staticmethod
    def _own(x):
        """A contiguous copy of a numpy view (drjit slices are copies already)."""
        return np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x

    def _clip(self, x, lo: float, hi: float):
        return np.clip(x, lo, hi) if isinstance(x, np.ndarray) else self._dr.clip(x, lo, hi)

    def pose_at(self, t: float) -> Pose:
        return self.path.pose(t)
