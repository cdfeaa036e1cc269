import time

import numpy as np
import pytest
import torch

from online_denoise.arrays import to_chw
from online_denoise.denoiser import Denoiser, load_checkpoint, save_checkpoint
from online_denoise.features import FeatureSpec, edge_mask, emitter_mask
from online_denoise.metrics import error_estimate
from online_denoise.model import ModelConfig, UNet
from online_denoise.session import Session, SessionConfig
from online_denoise.temporal import TemporalConfig
from online_denoise.trainer import TrainConfig, TrainerError

MODEL = ModelConfig(width=8, depth=3, output="kpn")


def config(**train):
    return SessionConfig(MODEL, FeatureSpec(), TrainConfig(**{"crop": 32, "batch": 2, **train}), "cpu", 4)


def test_step_records_stages_and_trains(tiny_renderer):
    s = Session(tiny_renderer, config())
    try:
        results = []
        for i in range(15):
            results.append(s.step(tiny_renderer.path.pose(i * 0.1)))
            time.sleep(0.02)  # give the trainer a moment, as a real frame would
        r = results[-1]
        assert set(r.timings) == {"render", "infer", "train", "frame"}
        assert all(v >= 0 for v in r.timings.values())
        assert r.denoised.shape == (1, 3, 32, 32)
        assert r.steps > 0 and r.result.version <= r.steps
        assert s.ring.pushed == 15
    finally:
        s.close()


def test_focused_crops_train_on_the_live_renders(tiny_renderer):
    s = Session(tiny_renderer, config(crop_focus=1.0, schedule="inline"))
    try:
        for i in range(4):
            r = s.step(tiny_renderer.path.pose(i * 0.1))
        assert s.ring.focus == 1.0 and r.steps == 4
        # Every pushed frame carries its map of noise to draw crops by: the renders of a pair differ.
        assert all(noise is not None and noise[0][-1] > 0 for noise in s.ring._noise)
    finally:
        s.close()


def test_pair_mean_still_estimates_the_error_every_few_frames(tiny_renderer):
    s = Session(tiny_renderer, SessionConfig(MODEL, FeatureSpec(), TrainConfig(crop=32, batch=2), "cpu", 4,
                                             train_enabled=False, pair="mean", estimate_every=3))
    try:
        results = [s.step(tiny_renderer.path.pose(i * 0.1)) for i in range(7)]
    finally:
        s.close()
    # One render on its own is enough for the estimate; a and b take turns.
    sides = ["".join(side for side, x in zip("ab", (r.result.denoised_a, r.result.denoised_b)) if x is not None)
             for r in results]
    assert sides == ["a", "", "", "b", "", "", "a"]
    # Frames in between carry the latest estimate, labelled with the frame it was made on.
    assert [r.record()["estimate_frame"] for r in results] == [0, 0, 0, 3, 3, 3, 6]
    assert all(np.isfinite(r.record()["estimate_mse"]) for r in results)
    for r in results[:2]:  # what is displayed is the mean's result, on estimate frames too
        expected = s.denoiser.denoise((r.frame.color_a + r.frame.color_b) / 2, r.frame.albedo, r.frame.normal,
                                      r.frame.emission)
        torch.testing.assert_close(r.denoised, expected)


def test_temporal_reuse_feeds_the_denoiser_and_the_ring_but_keeps_the_render(tiny_renderer):
    cfg = SessionConfig(MODEL, FeatureSpec(), TrainConfig(crop=32, batch=2), "cpu", 4, train_enabled=False,
                        pair="mean", temporal=TemporalConfig(history=8))
    s = Session(tiny_renderer, cfg)
    try:
        pose = tiny_renderer.initial_pose
        results = [s.step(pose) for _ in range(9)]
    finally:
        s.close()
    first, last = results[0], results[-1]
    assert "reuse" in last.timings and last.timings["reuse"] >= 0
    np.testing.assert_array_equal(np.asarray(first.frame.color_a), first.rendered.color_a)  # nothing to reuse yet
    assert first.history == 1.0 and 4.0 < last.history <= 8.0 and last.record()["history"] == round(last.history, 3)
    # A still camera: most pixels now hold the mean of several renders, which is what was denoised and stored.
    reused, raw = np.asarray(last.frame.color_a), last.rendered.color_a
    assert not np.allclose(reused, raw)
    expected = s.denoiser.denoise((last.frame.color_a + last.frame.color_b) / 2, last.frame.albedo, last.frame.normal,
                                  last.frame.emission)
    torch.testing.assert_close(last.denoised, expected)
    slot = (s.ring.pushed - 1) % s.ring.capacity
    torch.testing.assert_close(s.ring.color_a[slot], torch.as_tensor(reused).permute(2, 0, 1))
    # The training target of render a: its running mean, but its own new samples at the aux buffers' edges
    # where that mean spans 8 frames or more.
    edges = edge_mask(to_chw(last.frame.albedo, "cpu"), to_chw(last.frame.normal, "cpu"))[0]
    assert 0 < float(edges.mean()) < 1
    long = to_chw(last.frame.frames_a, "cpu")[0] >= 8
    assert bool(long.any())
    expected_target = torch.where((edges > 0.5) & long, torch.as_tensor(raw).permute(2, 0, 1),
                                  torch.as_tensor(reused).permute(2, 0, 1))
    torch.testing.assert_close(s.ring.target_a[slot], expected_target)


def test_session_config_refuses_unknown_pair_modes():
    with pytest.raises(ValueError, match="pair mode"):
        SessionConfig(MODEL, FeatureSpec(), TrainConfig(), pair="median")
    with pytest.raises(ValueError, match="estimate_every"):
        SessionConfig(MODEL, FeatureSpec(), TrainConfig(), estimate_every=0)


def test_a_frame_is_denoised_by_weights_that_never_saw_it(tiny_renderer):
    s = Session(tiny_renderer, config(steps_per_frame=2))
    try:
        for i in range(6):
            pushed_before = s.ring.pushed
            r = s.step(tiny_renderer.initial_pose)
            assert r.frame.index == pushed_before  # pushed after denoising
    finally:
        s.close()


def test_warm_start_uses_the_checkpoint_weights(tiny_renderer, tmp_path):
    torch.manual_seed(5)
    model = UNet(MODEL)
    path = save_checkpoint(tmp_path / "m.pt", model, MODEL, FeatureSpec())
    s = Session(tiny_renderer, config(), load_checkpoint(path))
    try:
        for k, v in model.state_dict().items():
            torch.testing.assert_close(s.denoiser.model.state_dict()[k], v)
    finally:
        s.close()


def test_close_saves_a_loadable_checkpoint_once(tiny_renderer, tmp_path):
    s = Session(tiny_renderer, config())
    s.step(tiny_renderer.initial_pose)
    path = s.close(tmp_path / "final.pt", meta={"scene": "cornell-box"})
    assert s.close(tmp_path / "again.pt") is None
    ckpt = load_checkpoint(path, expect=FeatureSpec())
    assert ckpt.meta["frames"] == 1 and ckpt.meta["scene"] == "cornell-box"
    assert not (tmp_path / "again.pt").exists()


def test_trainer_failure_reaches_the_loop(tiny_renderer):
    s = Session(tiny_renderer, config())
    try:
        def boom(pred, target):
            raise ValueError("trainer exploded")

        s.trainer.loss_fn = boom
        with pytest.raises(TrainerError, match="trainer exploded"):
            deadline = time.time() + 60
            while time.time() < deadline:
                s.step(tiny_renderer.initial_pose)
                time.sleep(0.01)
    finally:
        s.close()


def test_error_estimate_matches_the_true_error():
    """The reference-free estimate against the MSE to a 4096-spp reference.

    Measured at 64^2, 4 spp: single-frame estimates fall within 15% of the true
    MSE, typically 5%; the test allows 25% per frame and 10% on average.
    """
    from renderer import Renderer, RenderConfig

    r = Renderer(RenderConfig(width=64, height=64, spp=4))
    torch.manual_seed(0)
    d = Denoiser(MODEL, FeatureSpec())
    rel = []
    for t in (0.0, 5.0, 10.0):
        pose = r.path.pose(t)
        ref = to_chw(r.render_color(pose, 4096), "cpu")
        for _ in range(4):
            f = r.render_pair(pose)
            out = d.denoise_pair(f)
            est = error_estimate(out.denoised_a, out.denoised_b, to_chw(f.color_a, "cpu"), to_chw(f.color_b, "cpu"))
            true = 0.5 * (((out.denoised_a - ref) ** 2).mean() + ((out.denoised_b - ref) ** 2).mean()).item()
            rel.append(est["mse"] / true - 1)
            noisy_true = 0.5 * (((to_chw(f.color_a, "cpu") - ref) ** 2).mean()
                                + ((to_chw(f.color_b, "cpu") - ref) ** 2).mean()).item()
            assert est["noisy_mse"] == pytest.approx(noisy_true, rel=0.35)
    rel = np.abs(rel)
    assert rel.max() < 0.25 and rel.mean() < 0.10, rel


def test_error_estimate_is_exact_in_expectation_on_synthetic_noise():
    torch.manual_seed(0)
    clean = torch.rand(1, 3, 256, 256)
    a = clean + 0.2 * torch.randn_like(clean)
    b = clean + 0.2 * torch.randn_like(clean)
    fa, fb = clean + 0.05 * torch.randn_like(clean), clean + 0.05 * torch.randn_like(clean)
    est = error_estimate(fa, fb, a, b)
    assert est["mse"] == pytest.approx(0.05 ** 2, rel=0.1)
    assert est["noisy_mse"] == pytest.approx(0.2 ** 2, rel=0.02)
    for one in (error_estimate(fa, None, a, b), error_estimate(None, fb, a, b)):  # either side alone
        assert one["mse"] == pytest.approx(0.05 ** 2, rel=0.15)
        assert one["noisy_mse"] == est["noisy_mse"]
    assert error_estimate(fa, None, a, b)["mse"] == est["mse_a"] and error_estimate(fa, None, a, b)["mse_b"] is None
    with pytest.raises(ValueError, match="at least one"):
        error_estimate(None, None, a, b)


def test_the_zero_copy_dlpack_path_end_to_end():
    """Frames as drjit tensors, handed to torch through DLPack: what cuda_ad_rgb does, run on LLVM."""
    from renderer import Renderer, RenderConfig

    r = Renderer(RenderConfig(width=32, height=32, spp=1, arrays="dlpack"))
    f = r.render_pair(r.initial_pose)
    assert type(f.color_a).__module__.startswith("drjit")
    s = Session(r, SessionConfig(MODEL, FeatureSpec(exposure="auto"), TrainConfig(crop=32, batch=2), "cpu", 4))
    try:
        for i in range(4):
            res = s.step(r.initial_pose)
            assert type(res.frame.color_b).__module__.startswith("drjit")
            slot = i % s.ring.capacity
            torch.testing.assert_close(s.ring.color_b[slot], to_chw(res.frame.color_b, "cpu")[0])
        assert np.isfinite(res.estimate["mse"]) and res.denoised.shape == (1, 3, 32, 32)
    finally:
        s.close()


def test_inline_schedule_trains_every_frame_before_step_returns(tiny_renderer):
    s = Session(tiny_renderer, config(schedule="inline", steps_per_frame=2))
    try:
        for i in range(4):
            r = s.step(tiny_renderer.path.pose(i * 0.1))
            # Frame i was denoised by the weights from before it was pushed, then trained on.
            assert r.steps == 2 * (i + 1) and r.result.version == 2 * i
            assert r.timings["train"] > 0
        s.set_training(False)
        assert s.step(tiny_renderer.initial_pose).steps == 8
    finally:
        s.close()


@pytest.mark.parametrize("budget_ms, switched", [(1e-3, True), (1e6, False)])
@pytest.mark.parametrize("aux_step", [True, False])
def test_a_loop_over_its_frame_budget_after_warm_up_sheds_work_in_steps(budget_ms, switched, aux_step):
    from renderer import Renderer, RenderConfig

    from online_denoise.budget import BUDGET_FRAMES

    renderer = Renderer(RenderConfig(scene="cornell-box", width=16, height=16, spp=1, rr_depth=2,
                                     early_roulette=False, aux_spp=4))
    s = Session(renderer, SessionConfig(MODEL, FeatureSpec(), TrainConfig(crop=16, batch=3), "cpu", 4,
                                        train_enabled=False, pair="mean", frame_budget_ms=budget_ms,
                                        budget_batch=2, budget_aux_spp=2 if aux_step else None))
    window = len(BUDGET_FRAMES)
    first = BUDGET_FRAMES[-1] + 1  # the frame after the first window
    try:
        results = [s.step(renderer.path.pose(i * 0.02)) for i in range(first + window + 2)]
    finally:
        s.close()
    # First the albedo/normal pass takes fewer samples; a budget this far below the frame time needs more
    # than that saves, so in the same window the renders roulette early and training takes fewer crops a
    # step. Each decided once, and kept.
    assert s.budget_aux_from == (first if switched and aux_step else None)
    assert renderer.aux_spp == (2 if switched and aux_step else 4)
    flags = [r.record()["early_roulette"] for r in results]
    assert flags == [False] * first + [switched] * (len(results) - first)
    assert s.early_roulette_from == (first if switched else None)
    assert s.trainer.config.batch == (2 if switched else 3)
    assert s.budget_batch_from == (first if switched else None)


def test_a_loop_that_goes_over_its_budget_later_sheds_then_and_takes_the_work_back_when_lighter():
    from renderer import Renderer, RenderConfig

    from online_denoise.budget import BUDGET_FRAMES

    renderer = Renderer(RenderConfig(scene="cornell-box", width=16, height=16, spp=1, rr_depth=2,
                                     early_roulette=False, aux_spp=4))
    s = Session(renderer, SessionConfig(MODEL, FeatureSpec(), TrainConfig(crop=16, batch=3), "cpu", 4,
                                        train_enabled=False, pair="mean", frame_budget_ms=1e6,
                                        budget_batch=2, budget_aux_spp=2))
    window = len(BUDGET_FRAMES)
    later = BUDGET_FRAMES[-1] + 1 + 2 * window  # two windows under budget, then the path gets "heavier"
    try:
        for i in range(later):
            s.step(renderer.path.pose(i * 0.02))
        assert renderer.aux_spp == 4 and not renderer.early_roulette  # under budget: nothing shed
        s.budget.budget_ms = 1e-3
        for i in range(later, later + 2 * window):
            s.step(renderer.path.pose(i * 0.02))
        assert s.budget_aux_from == s.early_roulette_from == s.budget_batch_from == later + window
        assert renderer.aux_spp == 2 and renderer.early_roulette and s.trainer.config.batch == 2
        # ...and once the frames run well under budget again, the work comes back, the last step shed
        # first, one step a window.
        s.budget.budget_ms = 1e6
        lighter = later + 2 * window
        for i in range(lighter, lighter + 2 * window):
            s.step(renderer.path.pose(i * 0.02))
    finally:
        s.close()
    assert renderer.aux_spp == 4 and not renderer.early_roulette and s.trainer.config.batch == 3
    assert s.budget_events == [(later + window, "shed", "aux"), (later + window, "shed", "roulette and crops"),
                               (lighter + window, "restored", "roulette and crops"),
                               (lighter + 2 * window, "restored", "aux")]


def test_no_early_roulette_where_the_scene_sets_its_own(tmp_path):
    from renderer import Renderer, RenderConfig

    xml = tmp_path / "own.xml"
    xml.write_text('<scene version="3.0.0"><integrator type="path"><integer name="rr_depth" value="9"/>'
                   '</integrator><sensor type="perspective"/><shape type="sphere"/></scene>')
    renderer = Renderer(RenderConfig(scene=str(xml), width=8, height=8, spp=1, rr_depth=2))
    assert not renderer.early_roulette and not renderer.set_early_roulette(True)
    with pytest.raises(ValueError, match="frame_budget_ms"):
        SessionConfig(MODEL, FeatureSpec(), TrainConfig(), frame_budget_ms=0)
    with pytest.raises(ValueError, match="budget_batch"):
        SessionConfig(MODEL, FeatureSpec(), TrainConfig(), budget_batch=0)
    with pytest.raises(ValueError, match="budget_aux_spp"):
        SessionConfig(MODEL, FeatureSpec(), TrainConfig(), budget_aux_spp=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need an NVIDIA GPU")
def test_the_trainer_thread_records_its_steps_while_the_loop_runs():
    """The loop's GPU syncs must not meet a recording in progress (a device-wide sync ended one)."""
    from renderer import RenderConfig, Renderer

    from online_denoise.precision import Precision

    renderer = Renderer(RenderConfig(scene="cornell-box", width=64, height=64, spp=1))
    cfg = SessionConfig(MODEL, FeatureSpec(), TrainConfig(crop=32, batch=2, steps_per_frame=2, graph=True), "cuda",
                        4, precision=Precision("bf16", True))
    s = Session(renderer, cfg)
    try:
        results = [s.step(renderer.path.pose(i * 0.1)) for i in range(40)]
    finally:
        s.close()
    assert results[-1].steps > 0 and len(s.trainer.graphs) >= 1
    assert all(torch.isfinite(r.denoised).all() for r in results)


def test_restarted_pixels_get_more_samples_in_both_renders(tiny_renderer):
    cfg = SessionConfig(MODEL, FeatureSpec(), TrainConfig(crop=32, batch=2), "cpu", 4, train_enabled=False,
                        pair="mean", temporal=TemporalConfig(history=8, topup_spp=6))
    s = Session(tiny_renderer, cfg)
    try:
        path = tiny_renderer.path
        first = s.step(path.pose(0.0))
        moved = s.step(path.pose(0.4))
    finally:
        s.close()
    # The first frame restarts every surface pixel: each then holds its 1 spp and 6 more, 7 frames' worth.
    # The light is shown as rendered, so it gets none.
    light = emitter_mask(to_chw(first.rendered.emission, "cpu"))[0, 0].numpy() > 0
    assert light.any()
    hit = np.any(first.rendered.position != 0, -1) & ~light
    frames_a = np.asarray(first.frame.frames_a)[..., 0]
    np.testing.assert_allclose(frames_a[hit], 7.0)
    assert (frames_a[~hit] == 1).all() and (frames_a[light] == 1).all()
    assert not np.allclose(np.asarray(first.frame.color_a)[hit], first.rendered.color_a[hit])
    np.testing.assert_array_equal(np.asarray(first.frame.color_a)[~hit], first.rendered.color_a[~hit])
    # After a camera move only the pixels whose history restarted are topped up, in a and in b.
    assert 0 < sum(s.topped_up) < 2 * hit.sum()
    assert "render" in moved.timings and moved.timings["reuse"] >= 0
