import threading

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from online_denoise.ring import RingBuffer


def const_frame(value, h=16, w=16):
    """Frame whose every pixel encodes `value`: a = value, b = value + 0.5, albedo = value / 1000."""
    full = lambda v: np.full((h, w, 3), v, np.float32)  # noqa: E731
    return SimpleNamespace(color_a=full(value), color_b=full(value + 0.5), albedo=full(value / 1000),
                           normal=full(0.0))


def test_memory_bound_is_what_is_allocated():
    ring = RingBuffer(5, 24, 40)
    assert ring.nbytes == RingBuffer.bytes_for(5, 24, 40) == 5 * 16 * 24 * 40 * 4
    guided = RingBuffer(5, 24, 40, with_specular=True)
    assert guided.nbytes == RingBuffer.bytes_for(5, 24, 40, with_specular=True) == 5 * 19 * 24 * 40 * 4


def test_the_specular_guide_is_cropped_with_its_colour_and_left_out_when_not_stored():
    ring = RingBuffer(4, 16, 16, with_specular=True)
    for v in range(4):
        f = const_frame(float(v))
        f.specular = np.full((16, 16, 3), v + 100.0, np.float32)
        ring.push(f)
    ring.push(const_frame(4.0))  # a frame without a guide (from a file) stores 0
    for _ in range(10):
        batch = ring.sample(4, 8)
        for i, seq in enumerate(batch.frames):
            assert int(batch.input[i, 0, 0, 0].floor()) == seq  # render a or b: value or value + 0.5
            assert torch.all(batch.specular[i] == (0.0 if seq == 4 else seq + 100.0))
    plain = RingBuffer(2, 16, 16)
    plain.push(const_frame(1.0))
    assert plain.sample(2, 8).specular is None


def test_push_overwrites_the_oldest():
    ring = RingBuffer(3, 16, 16)
    for v in range(5):
        ring.push(const_frame(float(v)))
    assert len(ring) == 3 and ring.pushed == 5
    seen = set()
    for _ in range(50):
        batch = ring.sample(4, 8)
        seen.update(batch.frames)
    assert seen == {2, 3, 4}


def test_empty_ring_samples_nothing():
    assert RingBuffer(2, 8, 8).sample(4, 8) is None


def test_sample_shapes_crop_clipping_and_both_directions():
    ring = RingBuffer(2, 16, 24)
    ring.push(const_frame(1.0, 16, 24))
    directions = set()
    for _ in range(40):
        b = ring.sample(3, 32)  # larger than the frame: clipped to its 16 x 24
        assert b.input.shape == (3, 3, 16, 24)
        assert b.input.shape == b.target.shape == b.albedo.shape == b.normal.shape
        directions.update(float(v) for v in b.input[:, 0, 0, 0])
        torch.testing.assert_close(b.input + b.target, torch.full_like(b.input, 2.5))
    assert directions == {1.0, 1.5}


def test_each_crop_carries_the_history_span_of_its_own_input_render():
    ring = RingBuffer(2, 16, 16)
    f = const_frame(1.0)
    f.frames_a, f.frames_b = np.full((16, 16, 1), 3.0, np.float32), np.full((16, 16, 1), 7.0, np.float32)
    ring.push(f)
    spans = set()
    for _ in range(40):
        b = ring.sample(3, 8)
        for crop_input, span in zip(b.input[:, 0, 0, 0].tolist(), b.history[:, 0, 0, 0].tolist()):
            spans.add((crop_input, span))
    assert spans == {(1.0, 3.0), (1.5, 7.0)}  # a with a's span, b with b's, whichever way the crop was drawn
    ring.push(const_frame(2.0))  # a plain render: one frame
    assert torch.equal(ring.frames_a[1], torch.ones(1, 16, 16)) and torch.equal(ring.frames_b[1], ring.frames_a[1])


def test_nonfinite_pixels_are_sanitised_and_counted():
    ring = RingBuffer(1, 8, 8)
    f = const_frame(1.0, 8, 8)
    f.color_a[0, 0] = [np.nan, np.inf, -np.inf]
    ring.push(f)
    assert ring.nonfinite_pixels == 3
    assert torch.isfinite(ring.color_a).all()


def test_wrong_frame_size_is_refused():
    with pytest.raises(ValueError, match="ring holds"):
        RingBuffer(2, 8, 8).push(const_frame(0.0, 16, 16))


def test_hammered_from_two_threads_every_crop_comes_from_one_whole_frame():
    ring = RingBuffer(4, 32, 32, seed=1)
    stop = threading.Event()
    errors = []

    def producer():
        v = 0
        while not stop.is_set():
            ring.push(const_frame(float(v), 32, 32))
            v += 1

    def consumer():
        try:
            samples = 0
            while samples < 400 or ring.pushed < 200:  # both sides must have done real work
                samples += 1
                b = ring.sample(4, 16)
                if b is None:
                    continue
                for i in range(4):
                    inp, tgt, alb = b.input[i], b.target[i], b.albedo[i]
                    lo = min(inp.min().item(), tgt.min().item())
                    # A torn crop would mix values of two frames.
                    assert inp.min() == inp.max() and tgt.min() == tgt.max(), "crop mixes frames"
                    assert abs(inp.max().item() - tgt.max().item()) == 0.5, "input and target of different frames"
                    assert alb.max().item() == pytest.approx(lo / 1000), "aux of another frame"
                    assert lo == b.frames[i], "sequence number does not match the pixels"
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    threads[1].join(timeout=120)
    assert not threads[1].is_alive(), "the producer starved"
    stop.set()
    threads[0].join(timeout=30)
    assert not errors, errors[0]
    assert ring.pushed >= 200


def test_crops_carry_the_emitter_mask_and_none_without_emitters():
    ring = RingBuffer(2, 16, 16, seed=1)
    lit = const_frame(1.0)
    lit.emission = np.zeros((16, 16, 3), np.float32)
    lit.emission[:, 8:] = 20.0  # a light filling the right half
    ring.push(lit)
    for _ in range(20):
        b = ring.sample(2, 16)
        assert b.emitter.shape == (2, 1, 16, 16)
        assert b.emitter[..., :8].sum() == 0 and bool((b.emitter[..., 8:] == 1).all())
    dark = RingBuffer(1, 16, 16)
    dark.push(const_frame(1.0))  # a frame with no emission buffer at all
    assert dark.sample(2, 8).emitter is None
    lit.emission[:] = 0.0  # an emission buffer with nothing in view
    dark.push(lit)
    assert dark.sample(2, 8).emitter is None


def test_edge_targets_take_the_other_renders_raw_samples_at_edges_only():
    """At an albedo edge the target is the other render's new samples; elsewhere its running mean."""
    h, w = 16, 16
    ring = RingBuffer(1, h, w, edge_targets=True)
    assert ring.nbytes == RingBuffer.bytes_for(1, h, w, edge_targets=True) == 22 * h * w * 4
    f = const_frame(1.0, h, w)  # running means: a = 1.0, b = 1.5
    f.albedo = np.full((h, w, 3), 0.2, np.float32)
    f.albedo[:, 8:] = 0.8  # a jump between columns 7 and 8: the edge band is columns 6-9
    f.raw_a, f.raw_b = np.full((h, w, 3), 10.0, np.float32), np.full((h, w, 3), 20.0, np.float32)
    f.frames_a, f.frames_b = (np.full((h, w, 1), 12.0, np.float32) for _ in range(2))
    f.frames_b[8:] = 3.0  # a short history: close to the new samples anyway, and far less noisy, so kept
    ring.push(f)
    for _ in range(20):
        b = ring.sample(1, 16)
        other = 1.5 if float(b.input[0, 0, 0, 0]) == 1.0 else 1.0  # the other render's mean...
        raw = 20.0 if other == 1.5 else 10.0  # ...and its raw samples
        assert b.target[0, 0, 3].tolist() == [other] * 6 + [raw] * 4 + [other] * 6
        short = b.target[0, 0, 12].tolist()
        assert short == ([other] * 16 if other == 1.5 else [other] * 6 + [raw] * 4 + [other] * 6)


def test_edge_targets_without_raw_samples_are_the_renders_themselves():
    ring = RingBuffer(1, 8, 8, edge_targets=True)
    f = const_frame(1.0, 8, 8)
    f.albedo[:, 4:] = 0.9
    ring.push(f)
    b = ring.sample(4, 8)
    torch.testing.assert_close(b.input + b.target, torch.full_like(b.input, 2.5))


def test_edge_targets_need_two_renders_and_no_clean_one():
    with pytest.raises(ValueError, match="two renders"):
        RingBuffer(1, 8, 8, renders=1, edge_targets=True)
    with pytest.raises(ValueError, match="two renders"):
        RingBuffer(1, 8, 8, with_target=True, edge_targets=True)


def noisy_corner_frame(h=64, w=64, side=16):
    """Two renders that agree everywhere but in the bottom-left side x side block, which is bright and noisy."""
    rng = np.random.default_rng(0)
    a = np.full((h, w, 3), 0.5, np.float32)
    b = a.copy()
    a[h - side:, :side] = 4 + rng.random((side, side, 3), dtype=np.float32)
    b[h - side:, :side] = 4 + rng.random((side, side, 3), dtype=np.float32)
    return SimpleNamespace(color_a=a, color_b=b, albedo=np.zeros_like(a), normal=np.zeros_like(a))


def share_of_crops_on_the_noise(ring, draws=40, batch=8):
    batches = [ring.sample(batch, 16) for _ in range(draws)]
    return sum(int((b.input.amax(dim=(1, 2, 3)) > 1).sum()) for b in batches) / (draws * batch)


def test_focused_crops_are_drawn_where_the_two_renders_differ():
    uniform, half, focused = (RingBuffer(2, 64, 64, seed=3, focus=f) for f in (0.0, 0.5, 1.0))
    for ring in (uniform, half, focused):
        ring.push(noisy_corner_frame())
    # A uniform 16^2 crop touches the 16^2 block from 16 of the 49 corners along each axis: 11%.
    assert share_of_crops_on_the_noise(uniform) < 0.25
    assert share_of_crops_on_the_noise(focused) == 1.0
    assert 0.4 < share_of_crops_on_the_noise(half) < 0.75


def test_focus_falls_back_to_uniform_crops_where_the_renders_agree():
    ring = RingBuffer(1, 64, 64, seed=0, focus=1.0)
    ramp = np.repeat(np.linspace(0, 1, 64, dtype=np.float32)[None, :, None], 64, 0).repeat(3, 2)
    ring.push(SimpleNamespace(color_a=ramp, color_b=ramp.copy(), albedo=ramp, normal=ramp))
    corners = {float(ring.sample(1, 16).input[0, 0, 0, 0]) for _ in range(40)}
    assert len(corners) > 10  # no noise anywhere to draw by: crops still spread over the frame


def test_focus_is_a_share_and_needs_two_renders():
    with pytest.raises(ValueError, match="crop focus"):
        RingBuffer(2, 8, 8, focus=1.5)
    single = RingBuffer(2, 16, 16, renders=1, focus=1.0)
    single.push(SimpleNamespace(color_a=np.ones((16, 16, 3), np.float32), albedo=np.zeros((16, 16, 3), np.float32),
                                normal=np.zeros((16, 16, 3), np.float32)))
    assert single.focus == 0.0 and single.sample(2, 8).input.shape == (2, 3, 8, 8)


def test_crops_carry_the_diffuse_mask_of_their_frame_and_zeros_when_a_frame_had_no_shape_ids():
    import math

    ring = RingBuffer(2, 16, 16)
    f = const_frame(1.0)
    f.surface = np.ones((16, 16, 1), np.float32)
    f.surface[:, 8:] = 2.0  # shape 2 is glossy
    f.lobes = (math.inf, math.inf, 0.3)
    ring.push(f)
    for _ in range(5):
        batch = ring.sample(3, 16)
        assert batch.diffuse.shape == (3, 1, 16, 16)
        assert torch.all(batch.diffuse[..., :8] == 1) and torch.all(batch.diffuse[..., 8:] == 0)
    ring.push(const_frame(2.0))  # from a file: nothing is known of its materials
    seen = {"mixed": False, "file only": False}
    for _ in range(40):
        batch = ring.sample(2, 8)
        if set(batch.frames) == {1}:
            assert batch.diffuse is None  # no crop has a diffuse pixel: the plain filtering alone
            seen["file only"] = True
        elif 1 in batch.frames:
            for i, slot in enumerate(batch.frames):
                if slot == 1:
                    assert torch.all(batch.diffuse[i] == 0)
            seen["mixed"] = True
    assert all(seen.values())
