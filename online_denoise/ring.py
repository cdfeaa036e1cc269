"""A fixed-size, preallocated ring of frame pairs, shared by the render loop and the trainer.

Memory is allocated once: ``RingBuffer.bytes_for(capacity, h, w)``, which is
capacity x 16 channels x H x W x 4 bytes (colour a and b, the frames each
colour's running mean spans, albedo, normal, the mask of directly seen
emitters and that of diffuse shapes) plus a few bytes per slot. At 256^2 with
16 slots that is 64 MiB. Single-render targets store 11 channels a slot; a
clean-target run stores 3 more. Under temporal reuse a ring with
``edge_targets`` stores 6 more: each render's training target, its running
mean but its own new samples at edges (88 MiB),
and a ring for a network that reads the specular guide stores its 3 channels.

Crops are drawn uniformly, or, with ``focus``, that share of them centred on a
16 x 16 block drawn in proportion to the noise left in it: the squared
difference of the two renders, tonemapped. The renders are independent
estimates of one image, so where they differ most is where the denoiser has the
most to do: on glossy-metals, the reflections on the balls, which temporal reuse
keeps short, rather than the sky and the floor, which are a third of the frame.

The producer never waits for the trainer: a push claims the oldest slot and
overwrites it. Both sides hold the lock only for O(1) bookkeeping, never while
copying pixels (a sampler copying under the lock starved the producer in the
two-thread test). Instead each slot has a generation counter, bumped when a
push claims it: a sampler notes the generations of its slots, copies its crops
without the lock, and redraws any crop whose slot changed generation in the
meantime. So a crop never mixes two frames, and a push never waits on a copy.
"""

from __future__ import annotations

import bisect
import random
import threading
from dataclasses import dataclass

import torch

from .arrays import to_chw
from .color import get_transfer
from .features import diffuse_mask, edge_mask, emitter_mask, finite

# Edge targets take the new samples only where the running mean spans at least this many frames.
EDGE_TARGET_HISTORY = 8
# Side of the blocks whose noise focused crops are drawn by: 256 blocks at 256^2, a cheap map to draw from.
FOCUS_BLOCK = 16


@dataclass
class TrainBatch:
    input: torch.Tensor  # B x 3 x h x w noisy linear colour fed to the network
    history: torch.Tensor  # B x 1 x h x w: the frames each input pixel averages (temporal reuse; else 1)
    target: torch.Tensor | None  # B x 3 x h x w: the clean render if stored, else the other render, else None
    albedo: torch.Tensor
    normal: torch.Tensor
    emitter: torch.Tensor | None  # B x 1 x h x w, 1 on directly seen emitters; None: there are none
    exposure: torch.Tensor  # B x 1 x 1 x 1
    frames: list[int]  # sequence numbers of the frames the crops came from
    has_background: bool | None = None  # whether a crop sees past the scene; None: run_network looks
    specular: torch.Tensor | None = None  # B x 3 x h x w, the renderer's mirror guide (features.build_input)
    diffuse: torch.Tensor | None = None  # B x 1 x h x w, 1 on diffuse shapes (features.diffuse_mask); None: none known in any crop


class RingBuffer:
    def __init__(self, capacity: int, height: int, width: int, device: torch.device | str = "cpu", seed: int = 0,
                 renders: int = 2, with_target: bool = False, edge_targets: bool = False,
                 with_specular: bool = False, focus: float = 0.0):
        if capacity < 1:
            raise ValueError(f"ring capacity must be at least 1, got {capacity}")
        if renders not in (1, 2):
            raise ValueError(f"renders per frame must be 1 or 2, got {renders}")
        if edge_targets and (renders != 2 or with_target):
            raise ValueError("edge targets are the other render's samples: they need two renders and no clean one")
        if not 0.0 <= focus <= 1.0:
            raise ValueError(f"crop focus {focus}: expected a share of the crops between 0 and 1")
        self.capacity, self.height, self.width = capacity, height, width
        # The share of crops drawn by noise; it needs the two renders to measure that noise.
        self.focus = focus if renders == 2 else 0.0
        self.renders, self.with_target = renders, with_target
        self.device = torch.device(device)
        shape = (capacity, 3, height, width)
        self.color_a = torch.zeros(shape, device=self.device)
        self.color_b = torch.zeros(shape, device=self.device) if renders == 2 else None
        one = (capacity, 1, height, width)
        self.frames_a = torch.ones(one, device=self.device)
        self.frames_b = torch.ones(one, device=self.device) if renders == 2 else None
        self.target = torch.zeros(shape, device=self.device) if with_target else None
        # Each render as a training target: its running mean, but its own new samples at edges.
        self.target_a = torch.zeros(shape, device=self.device) if edge_targets else None
        self.target_b = torch.zeros(shape, device=self.device) if edge_targets else None
        self.albedo = torch.zeros(shape, device=self.device)
        self.normal = torch.zeros(shape, device=self.device)
        self.specular = torch.zeros(shape, device=self.device) if with_specular else None
        self.emitter = torch.zeros((capacity, 1, height, width), device=self.device)
        self.diffuse = torch.zeros((capacity, 1, height, width), device=self.device)
        self._has_diffuse = [False] * capacity  # whether the slot's frame has pixels known to be diffuse
        self.exposure = [1.0] * capacity
        self._seq = [-1] * capacity  # sequence number held by each slot; -1: empty or being written
        self._gen = [0] * capacity  # bumped whenever a push claims the slot
        self._pushed = 0
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        # Pixel values replaced by 0 on the way in, over the whole session. Counted on the ring's device and
        # read only when asked: reading it at every push would wait for the GPU, the trainer's work included.
        self._nonfinite = torch.zeros((), dtype=torch.int64, device=self.device)
        # Per slot, with focus: the running sum of its blocks' noise in row-major order, and the blocks in a row.
        self._noise: list[tuple[list[float], int] | None] = [None] * capacity

    @staticmethod
    def bytes_for(capacity: int, height: int, width: int, renders: int = 2, with_target: bool = False,
                  edge_targets: bool = False, with_specular: bool = False) -> int:
        channels = 4 * renders + 8 + (3 if with_target else 0) + (6 if edge_targets else 0) + 3 * with_specular
        return capacity * channels * height * width * 4

    def _buffers(self) -> list[tuple[str, torch.Tensor]]:
        named = [("color_a", self.color_a), ("color_b", self.color_b), ("frames_a", self.frames_a),
                 ("frames_b", self.frames_b), ("target", self.target), ("target_a", self.target_a),
                 ("target_b", self.target_b),
                 ("albedo", self.albedo), ("normal", self.normal), ("specular", self.specular),
                 ("emitter", self.emitter), ("diffuse", self.diffuse)]
        return [(n, t) for n, t in named if t is not None]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self._buffers())

    @property
    def nonfinite_pixels(self) -> int:
        return int(self._nonfinite)

    @property
    def pushed(self) -> int:
        return self._pushed

    def __len__(self) -> int:
        with self._lock:
            return sum(s >= 0 for s in self._seq)

    def push(self, frame, exposure: float = 1.0) -> int:
        """Store a frame (color_a, color_b, albedo, normal: H x W x 3) and return its sequence number.

        The frame's ``emission`` (H x W x 3), if it has one, is stored as the
        emitter mask; without one no pixel counts as an emitter. Without
        ``frames_a``/``frames_b`` (temporal reuse's spans) each colour is one frame.
        Edge targets take ``raw_a``/``raw_b`` (the renders before reuse) where
        the aux buffers have an edge; a frame without them is its own raw render.
        """
        if tuple(frame.color_a.shape[:2]) != (self.height, self.width):
            raise ValueError(f"frame is {tuple(frame.color_a.shape[:2])}, ring holds {(self.height, self.width)}")
        with self._lock:
            seq = self._pushed
            slot = seq % self.capacity
            self._pushed += 1
            self._seq[slot] = -1
            self._gen[slot] += 1
        edges = None
        has_diffuse = False
        for name, dst in self._buffers():
            if name.startswith("target_"):
                if edges is None:
                    edges = edge_mask(to_chw(frame.albedo, self.device), to_chw(frame.normal, self.device))[0] > 0.5
                which = name[-1]
                raw = getattr(frame, "raw_" + which, None)
                mean = finite(to_chw(getattr(frame, "color_" + which), self.device)[0])
                span = getattr(frame, "frames_" + which, None)
                if raw is None or span is None:
                    dst[slot].copy_(mean)
                    continue
                # A short history is close to the new samples anyway and far less noisy: glossy-metals, whose
                # pixels keep about 3 frames, lost 0.9 dB to raw targets at every edge, with 60% more spikes.
                long = to_chw(span, self.device)[0] >= EDGE_TARGET_HISTORY
                dst[slot].copy_(torch.where(edges & long, finite(to_chw(raw, self.device)[0]), mean))
                continue
            if name == "emitter":
                emission = getattr(frame, "emission", None)
                if emission is None:
                    dst[slot].zero_()
                else:
                    dst[slot].copy_(emitter_mask(to_chw(emission, self.device))[0])
                continue
            if name == "diffuse":
                surface, lobes = getattr(frame, "surface", None), getattr(frame, "lobes", None)
                mask = None if surface is None else diffuse_mask(to_chw(surface, self.device), lobes)
                has_diffuse = mask is not None
                if mask is None:
                    dst[slot].zero_()
                else:
                    dst[slot].copy_(mask[0])
                continue
            if name == "specular" and getattr(frame, "specular", None) is None:
                dst[slot].zero_()  # a frame from a file or the scalar variant: no guide
                continue
            if name.startswith("frames_"):
                span = getattr(frame, name, None)
                if span is None:
                    dst[slot].fill_(1.0)
                else:
                    dst[slot].copy_(finite(to_chw(span, self.device)[0]).clamp_min(1.0))
                continue
            src = getattr(frame, name, None)
            if src is None:
                raise ValueError(f"this ring stores {name}, but the frame has none")
            x = to_chw(src, self.device)[0]
            self._nonfinite += (~torch.isfinite(x)).sum()
            dst[slot].copy_(finite(x))
        noise = self._block_noise(slot) if self.focus > 0 else None
        with self._lock:
            self.exposure[slot] = float(exposure)
            self._seq[slot] = seq
            self._noise[slot] = noise
            self._has_diffuse[slot] = has_diffuse
        return seq

    def _block_noise(self, slot: int) -> tuple[list[float], int]:
        tonemap = get_transfer("paper").forward
        diff = (tonemap(self.color_a[slot]) - tonemap(self.color_b[slot])).square().mean(0, keepdim=True)
        blocks = torch.nn.functional.avg_pool2d(diff[None], FOCUS_BLOCK, ceil_mode=True)[0, 0]
        return blocks.flatten().double().cumsum(0).tolist(), blocks.shape[1]

    def sample(self, batch: int, crop: int, max_tries: int = 8) -> TrainBatch | None:
        """Random crops from random stored frames, each in a random direction (a->b or b->a).

        With a stored clean render the target is that render; with one render a
        frame there is no target (the objective makes its own). Returns None while
        the ring is empty.
        """
        ch, cw = min(crop, self.height), min(crop, self.width)
        rng = self._rng
        crops: list[tuple] = []
        for _ in range(max_tries):
            with self._lock:
                ready = [i for i, s in enumerate(self._seq) if s >= 0]
                if not ready:
                    return None
                picks = [rng.choice(ready) for _ in range(batch - len(crops))]
                claimed = [(slot, self._gen[slot], self._seq[slot], self.exposure[slot], self._has_diffuse[slot])
                           for slot in picks]
            copies = [self._copy_crop(slot, ch, cw) + (slot, gen, seq, exposure, knows)
                      for slot, gen, seq, exposure, knows in claimed]
            with self._lock:
                crops += [c for c in copies if self._gen[c[8]] == c[9]]  # drop crops a push tore
            if len(crops) == batch:
                break
        if len(crops) < batch:
            raise RuntimeError(f"ring buffer: could not copy {batch} untorn crops in {max_tries} tries")
        inputs, albedos, normals, emitters, spans = (torch.stack([c[i] for c in crops]) for i in (0, 2, 3, 4, 5))
        speculars = None if self.specular is None else torch.stack([c[6] for c in crops])
        targets = None if crops[0][1] is None else torch.stack([c[1] for c in crops])
        if not bool(emitters.any()):
            emitters = None  # most crops miss the lights; the plain filter then runs on 3 channels, not 7
        exposure = torch.tensor([c[11] for c in crops], device=self.device).view(-1, 1, 1, 1)
        # A frame with no diffuse pixel known (from a file, the scalar variant, a scene of metals) stores a zero
        # mask: its crops get the plain filtering; a batch of such crops only needs that filtering.
        diffuse = torch.stack([c[7] for c in crops]) if any(c[12] for c in crops) else None
        return TrainBatch(inputs, spans, targets, albedos, normals, emitters, exposure, [c[10] for c in crops],
                          specular=speculars, diffuse=diffuse)

    def _copy_crop(self, slot: int, ch: int, cw: int) -> tuple[torch.Tensor, ...]:
        rng = self._rng
        y, x = rng.randint(0, self.height - ch), rng.randint(0, self.width - cw)
        noise = self._noise[slot]  # a push that tears this crop also replaces it: the crop is then redrawn
        if noise is not None and rng.random() < self.focus and noise[0][-1] > 0:
            y, x = self._focused_corner(noise, ch, cw)
        win = (slot, slice(None), slice(y, y + ch), slice(x, x + cw))
        a, span = self.color_a[win], self.frames_a[win]
        b = self.color_b[win] if self.color_b is not None else None
        swapped = b is not None and rng.random() < 0.5
        if swapped:
            a, b, span = b, a, self.frames_b[win]
        target = self.target[win] if self.target is not None else b
        if self.target_a is not None:
            target = (self.target_a if swapped else self.target_b)[win]
        return (a.clone(), None if target is None else target.clone(), self.albedo[win].clone(),
                self.normal[win].clone(), self.emitter[win].clone(), span.clone(),
                None if self.specular is None else self.specular[win].clone(), self.diffuse[win].clone())

    def _focused_corner(self, noise: tuple[list[float], int], ch: int, cw: int) -> tuple[int, int]:
        """The corner of a crop centred on a random pixel of a block drawn in proportion to its noise."""
        rng = self._rng
        cumulative, per_row = noise
        block = bisect.bisect_left(cumulative, rng.random() * cumulative[-1])
        by, bx = divmod(min(block, len(cumulative) - 1), per_row)
        cy = by * FOCUS_BLOCK + rng.randint(0, FOCUS_BLOCK - 1)
        cx = bx * FOCUS_BLOCK + rng.randint(0, FOCUS_BLOCK - 1)
        return min(max(cy - ch // 2, 0), self.height - ch), min(max(cx - cw // 2, 0), self.width - cw)
