"""High-spp reference renders of the poses a benchmark judges, cached on disk and resumable.

A reference is keyed by a hash of the scene file and everything it references,
the resolution, the pose and the spp, so a second benchmark of the same frames
reuses it and any change to the scene invalidates it. It is rendered in passes
of at most 64 spp; after every pass the running sum is saved atomically, so an
interrupted run resumes where it stopped. Pass i uses its own seed from the
block the renderer reserves for references, so references never share a seed
with the frames they judge, and a resumed run never repeats a pass.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .arrays import to_numpy
from .exr import read_exr_rgb, write_exr
from .files import atomic_write
from .progress import Progress

PASS_SPP = 64


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "online_denoise" / "references"


@dataclass(frozen=True)
class ReferenceKey:
    scene_digest: str
    width: int
    height: int
    pose: dict  # Pose.to_json()
    spp: int

    @property
    def digest(self) -> str:
        text = json.dumps({"scene": self.scene_digest, "res": [self.width, self.height], "pose": self.pose,
                           "spp": self.spp}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def first_seed(self, reserved_base: int, reserved_size: int) -> int:
        passes = -(-self.spp // PASS_SPP)
        return reserved_base + int(self.digest[:8], 16) % max(reserved_size - passes, 1)


class ReferenceCache:
    def __init__(self, directory: Path | None = None):
        self.dir = Path(directory) if directory is not None else default_cache_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0

    def path(self, key: ReferenceKey) -> Path:
        return self.dir / f"{key.digest}.exr"

    def _partial(self, key: ReferenceKey) -> Path:
        return self.dir / f"{key.digest}.partial.npz"

    def get(self, key: ReferenceKey) -> np.ndarray | None:
        p = self.path(key)
        return read_exr_rgb(p) if p.is_file() else None

    def render(self, renderer, pose, key: ReferenceKey, progress: Progress | None = None) -> np.ndarray:
        """The cached reference, or render it (resuming a partial one) and cache it."""
        cached = self.get(key)
        if cached is not None:
            self.hits += 1
            if progress is not None:
                progress.update(-(-key.spp // PASS_SPP), "cached")
            return cached
        self.misses += 1
        from renderer.render import REFERENCE_SEED_BASE, SEEDS_PER_SESSION

        seed0 = key.first_seed(REFERENCE_SEED_BASE, SEEDS_PER_SESSION)
        passes = -(-key.spp // PASS_SPP)
        total, done = self._load_partial(key)
        if progress is not None and done:
            progress.update(done, "resumed")
        for i in range(done, passes):
            n = min(PASS_SPP, key.spp - i * PASS_SPP)
            image = to_numpy(renderer.render_pass(pose, n, seed0 + i)).astype(np.float64) * n
            total = image if total is None else total + image
            self._save_partial(key, total, i + 1)
            if progress is not None:
                progress.update(1)
        reference = (total / key.spp).astype(np.float32)
        write_exr(self.path(key), reference, header={"online_denoise_reference": json.dumps(
            {"spp": key.spp, "pose": key.pose, "scene": key.scene_digest})})
        self._partial(key).unlink(missing_ok=True)
        return reference

    def _load_partial(self, key: ReferenceKey) -> tuple[np.ndarray | None, int]:
        p = self._partial(key)
        if not p.is_file():
            return None, 0
        try:
            with np.load(p) as data:
                return data["total"], int(data["passes"])
        except Exception:  # a torn or foreign file: start this reference over
            p.unlink(missing_ok=True)
            return None, 0

    def _save_partial(self, key: ReferenceKey, total: np.ndarray, passes: int) -> None:
        atomic_write(self._partial(key), lambda f: np.savez(f, total=total, passes=passes))


def reference_key(renderer, pose, spp: int) -> ReferenceKey:
    h, w = renderer.shape
    return ReferenceKey(renderer.scene_digest, w, h, pose.to_json(), spp)


def render_references(renderer, poses: list, spp: int, cache: ReferenceCache, label: str = "references"
                      ) -> list[np.ndarray]:
    """References for every pose, with one progress bar over all their passes."""
    progress = Progress(len(poses) * -(-spp // PASS_SPP), label, unit="passes")
    try:
        return [cache.render(renderer, pose, reference_key(renderer, pose, spp), progress) for pose in poses]
    finally:
        progress.close()
