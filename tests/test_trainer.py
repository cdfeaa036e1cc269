import math
import statistics
import threading
import time

import numpy as np
import pytest
import torch

from online_denoise.features import FeatureSpec
from online_denoise.model import ModelConfig, UNet
from online_denoise.ring import RingBuffer
from online_denoise.loss import hdr_loss
from online_denoise.trainer import SPIKE_WARMUP, TrainConfig, Trainer, TrainerError

SPEC = FeatureSpec()


def make_trainer(frames, output="kpn", **train):
    torch.manual_seed(0)
    h, w = frames[0].color_a.shape[:2]
    ring = RingBuffer(len(frames), h, w, seed=0)
    for f in frames:
        ring.push(f)
    model = UNet(ModelConfig(width=8, depth=2, output=output))
    cfg = TrainConfig(**{"lr": 1e-3, "batch": 2, "crop": 32, **train})
    return Trainer(model, SPEC, ring, cfg)


def checker_pair(frame_factory):
    """A sharp 4-pixel checkerboard (0.1 / 2.0) with independent noise on a and b.

    An untrained kpn head blurs it and the direct head outputs noise, so both
    start far above the noise floor and must learn the edges to get down.
    """
    f = frame_factory(32, 32, seed=3)
    yy, xx = np.mgrid[:32, :32]
    clean = np.where(((yy // 4) + (xx // 4)) % 2 == 0, 0.1, 2.0).astype(np.float32)[..., None].repeat(3, -1)
    rng = np.random.default_rng(1)
    f.color_a = (clean * rng.gamma(4.0, 0.25, clean.shape)).astype(np.float32)
    f.color_b = (clean * rng.gamma(4.0, 0.25, clean.shape)).astype(np.float32)
    f.albedo = (clean / 2.0).clip(0, 1)
    return f


@pytest.mark.parametrize("output", ["kpn", "direct"])
def test_loss_falls_on_a_fixed_pair(frame_factory, output):
    tr = make_trainer([checker_pair(frame_factory)], output=output)
    for _ in range(120):
        assert tr.step()
    first, last = np.mean(list(tr.losses)[:10]), np.mean(list(tr.losses)[-10:])
    assert last < 0.6 * first, (first, last)
    assert tr.steps == 120 and tr.snapshot().version == 120


def test_a_snapshot_is_a_copy_made_only_when_the_weights_moved(frame_factory):
    tr = make_trainer([frame_factory()])
    tr.step()
    tr.step()
    snap = tr.snapshot()
    assert snap.version == 2 and tr.snapshot() is snap  # no step since: the same copy, not a new one
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(snap.state_dict[k], v)
    tr.step()
    assert any(not torch.equal(snap.state_dict[k], v) for k, v in tr.model.state_dict().items()), \
        "the snapshot must not follow the live weights"
    assert tr.snapshot().version == 3 and tr.snapshot() is not snap


def test_with_ema_the_snapshot_is_the_moving_average_of_the_weights(frame_factory):
    tr = make_trainer([checker_pair(frame_factory)], ema=0.5)
    start = {k: v.clone() for k, v in tr.model.state_dict().items()}
    expected = {k: v.clone() for k, v in start.items()}
    for step in range(4):
        tr.step()
        decay = min(0.5, (1 + step) / (10 + step))  # ramped up over the first steps
        for k, v in tr.model.state_dict().items():
            expected[k] = decay * expected[k] + (1 - decay) * v
    snap = tr.snapshot()
    moved = [k for k in start if not torch.equal(start[k], tr.model.state_dict()[k])]
    assert moved
    for k in moved:
        torch.testing.assert_close(snap.state_dict[k], expected[k])
        assert not torch.equal(snap.state_dict[k], tr.model.state_dict()[k]), "the snapshot lags the live weights"


def test_nan_and_inf_pixels_do_not_poison_the_weights(frame_factory):
    f = frame_factory(32, 32)
    f.color_a[::3, ::5] = np.nan
    f.color_b[1::4, ::2] = np.inf
    f.albedo[5, 5] = np.nan
    f.normal[7, 7] = -np.inf
    tr = make_trainer([f])
    for _ in range(10):
        tr.step()
    assert tr.skipped_nonfinite == 0
    assert all(torch.isfinite(p).all() for p in tr.model.parameters())
    assert math.isfinite(tr.last_loss)


def test_nonfinite_loss_skips_the_step_and_is_counted(frame_factory):
    tr = make_trainer([frame_factory()])
    tr.step()
    before = {k: v.clone() for k, v in tr.model.state_dict().items()}
    tr.loss_fn = lambda pred, target: (pred * float("nan")).mean()
    tr.step()
    assert tr.skipped_nonfinite == 1 and tr.steps == 1
    for k, v in tr.model.state_dict().items():
        torch.testing.assert_close(v, before[k])


def _grad_norm(tr) -> float:
    return float(torch.nn.utils.get_total_norm([p.grad for p in tr.model.parameters() if p.grad is not None]))


@pytest.mark.parametrize("ratio", [4.0, None])
def test_a_gradient_spike_is_scaled_down_to_a_multiple_of_the_recent_median(frame_factory, ratio):
    # A target pixel 100x its neighbours (a sample that hit a light) makes such a spike under the HDR loss.
    tr = make_trainer([frame_factory()], spike_ratio=ratio)
    norms = []
    for _ in range(SPIKE_WARMUP + 4):
        tr.step()
        norms.append(_grad_norm(tr))  # step() leaves the step's gradients in place
    tr.loss_fn = lambda pred, target: 1000.0 * hdr_loss(pred, target)
    tr.step()
    if ratio is None:
        assert tr.spikes_tamed == 0 and _grad_norm(tr) > 100 * statistics.median(norms)
    else:
        assert tr.spikes_tamed == 1
        assert _grad_norm(tr) == pytest.approx(ratio * statistics.median(norms), rel=1e-3)
    assert tr.steps == SPIKE_WARMUP + 5  # tamed, not skipped


def test_spike_ratio_below_one_is_refused():
    with pytest.raises(ValueError, match="spike ratio"):
        TrainConfig(spike_ratio=0.5)


def test_the_learning_rate_glides_from_lr_towards_lr_end(frame_factory):
    tr = make_trainer([frame_factory()], lr=2e-3, lr_end=5e-4, lr_decay_steps=10)
    used = []
    for _ in range(30):
        tr.step()
        used.append(tr.optimizer.param_groups[0]["lr"])
    assert used[0] == pytest.approx(2e-3)
    assert used[10] == pytest.approx(5e-4 + 1.5e-3 / math.e)  # 1 - 1/e of the way after lr_decay_steps
    assert all(a > b > 5e-4 for a, b in zip(used, used[1:]))
    fixed = make_trainer([frame_factory()], lr=2e-3)
    for _ in range(3):
        fixed.step()
    assert fixed.optimizer.param_groups[0]["lr"] == 2e-3


@pytest.mark.parametrize("bad", [{"lr_end": 0.0}, {"lr_end": math.inf}, {"lr_decay_steps": 0}])
def test_a_learning_rate_schedule_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="lr_end|lr_decay_steps"):
        TrainConfig(**bad)


def test_thread_trains_per_frame_publishes_versions_and_stops(frame_factory):
    tr = make_trainer([frame_factory()], steps_per_frame=3).start()
    for _ in range(3):
        tr.notify_frame()
        deadline = time.time() + 30
        while tr.steps % 3 != 0 or tr.steps == 0:
            assert time.time() < deadline
            time.sleep(0.01)
    deadline = time.time() + 30
    while tr.steps < 3:
        assert time.time() < deadline
        time.sleep(0.01)
    tr.stop()
    assert not tr.alive
    assert tr.steps % 3 == 0 and tr.snapshot().version == tr.steps
    tr.stop()  # twice is fine


def test_budget_mode_takes_several_steps_per_frame(frame_factory):
    tr = make_trainer([frame_factory()], budget_ms=300.0).start()
    tr.notify_frame()
    time.sleep(1.0)
    tr.stop()
    assert tr.steps > 1


def test_an_exception_in_the_thread_reaches_the_caller(frame_factory):
    tr = make_trainer([frame_factory()])

    def boom(pred, target):
        raise RuntimeError("out of cheese")

    tr.loss_fn = boom
    tr.start()
    tr.notify_frame()
    deadline = time.time() + 30
    while tr.alive:
        assert time.time() < deadline, "trainer did not die"
        time.sleep(0.01)
    with pytest.raises(TrainerError, match="out of cheese"):
        tr.check()
    tr.stop()


def test_pause_holds_training(frame_factory):
    tr = make_trainer([frame_factory()]).start()
    tr.set_paused(True)
    tr.notify_frame()
    time.sleep(0.3)
    assert tr.steps == 0
    tr.set_paused(False)
    deadline = time.time() + 30
    while tr.steps == 0:
        assert time.time() < deadline
        time.sleep(0.01)
    tr.stop()


def test_invalid_loss_name():
    with pytest.raises(ValueError, match="hdr"):
        TrainConfig(loss="l7")


def test_inline_schedule_steps_in_the_callers_thread(frame_factory):
    tr = make_trainer([frame_factory()], schedule="inline", steps_per_frame=3).start()
    assert not tr.alive  # no thread: the loop drives it
    seen = []
    step = tr.step
    tr.step = lambda: (seen.append(threading.current_thread()), step())[1]
    tr.notify_frame()
    assert tr.steps == 3 and tr.snapshot().version == 3
    assert set(seen) == {threading.current_thread()}
    assert tr.take_busy_ms() > 0
    tr.set_paused(True)
    tr.notify_frame()
    assert tr.steps == 3
    tr.stop()


def test_inline_schedule_does_not_train_before_start(frame_factory):
    tr = make_trainer([frame_factory()], schedule="inline")
    tr.notify_frame()  # a session with training disabled never starts its trainer
    assert tr.steps == 0


def test_inline_schedule_reports_failures_like_the_thread(frame_factory):
    tr = make_trainer([frame_factory()], schedule="inline")

    def boom(pred, target):
        raise RuntimeError("out of cheese")

    tr.loss_fn = boom
    with pytest.raises(TrainerError, match="out of cheese"):
        tr.train_inline()


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="--train-schedule"):
        TrainConfig(schedule="coroutine")


def test_compiled_network_trains_and_keeps_its_state_dict(frame_factory):
    """--compile: Inductor's network gives the eager outputs, and checkpoints keep the eager key names."""
    from online_denoise.precision import Precision

    frames = [frame_factory()]
    eager = make_trainer(frames)
    compiled = make_trainer(frames)
    compiled.model = Precision(compile="train").prepare(compiled.model, "train")
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())
    x = torch.rand(2, SPEC.channels, 32, 32)
    c = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled.model(x, c), eager.model(x, c), rtol=1e-4, atol=1e-5)
    for _ in range(2):
        assert compiled.step()
    assert compiled.steps == 2 and math.isfinite(compiled.last_loss)


def test_unknown_compile_mode_is_refused():
    from online_denoise.precision import Precision

    with pytest.raises(ValueError, match="--compile"):
        Precision(compile="everything")


def test_compile_applies_only_to_the_role_asked_for():
    from online_denoise.precision import Precision

    infer_only = Precision(compile="infer")
    trained = infer_only.prepare(UNet(ModelConfig(width=8, depth=2)), "train")
    served = infer_only.prepare(UNet(ModelConfig(width=8, depth=2)), "infer")
    assert trained._compiled_call_impl is None and served._compiled_call_impl is not None


def test_the_train_command_writes_a_checkpoint_that_records_how_it_was_made(cli, tmp_path):
    out = tmp_path / "prior.pt"
    proc = cli("train", "--scene", "cornell-box", "--res", "32", "--spp", "1", "--frames-per-scene", "2",
               "--steps", "2", "--prior", "none", "--out", out)
    assert proc.returncode == 0, proc.stderr
    from online_denoise.denoiser import load_checkpoint

    checkpoint = load_checkpoint(out)
    record = checkpoint.meta["offline"]
    assert record["frames"] == 2 and record["steps"] == 2 and record["scenes"] == ["cornell-box"]
    assert record["command"].startswith("online-denoise train --scene cornell-box")
    assert checkpoint.meta["steps"] == 2 and checkpoint.model_config.output == "kpn"


def test_offline_renders_at_k_times_the_spp_are_stored_as_worth_k_frames():
    """So that the history feature learns offline the noise levels that temporal reuse makes live."""
    from types import SimpleNamespace

    from online_denoise.train import render_dataset
    from renderer.frame import Frame

    def render_pair(pose, index, spp):
        image = np.full((8, 8, 3), 0.5, np.float32)
        return Frame(image, image.copy(), image.copy(), image.copy(), pose, index, {}, spp or 2)

    renderer = SimpleNamespace(config=SimpleNamespace(spp=2), path=SimpleNamespace(duration=1.0, pose=lambda t: t),
                               scene_info=SimpleNamespace(name="fake"), render_pair=render_pair)
    ring = RingBuffer(4, 8, 8)
    render_dataset([renderer], 4, ring, spp_mix=(2, 4, 8, 32))
    assert sorted(ring.frames_a[:, 0, 0, 0].tolist()) == [1.0, 2.0, 4.0, 16.0]
    assert torch.equal(ring.frames_a, ring.frames_b)


def test_recorded_steps_are_refused_off_cuda_and_with_loss_scaling(frame_factory):
    with pytest.raises(ValueError, match="--train-graph records CUDA graphs; the trainer runs on cpu"):
        make_trainer([frame_factory()], graph=True)
    with pytest.raises(ValueError, match="--target gr2r"):
        TrainConfig(graph=True, target="gr2r")
    with pytest.raises(ValueError, match="l0 loss"):
        TrainConfig(graph=True, loss="l0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need an NVIDIA GPU")
def test_recorded_steps_train_like_eager_ones_across_batch_layouts(frame_factory):
    from online_denoise.precision import Precision

    frames = [frame_factory(64, 64, seed=i) for i in range(3)]
    frames[0].emission = np.zeros((64, 64, 3), np.float32)
    frames[0].emission[8:24, 8:24] = 50.0  # a light in view: crops with an emitter mask
    frames[1].normal[:, :40] = 0.0  # a view past the scene: crops with background
    frames[1].color_a[:, :40] = frames[1].color_b[:, :40] = 0.0

    def trainer(graph):
        torch.manual_seed(0)
        ring = RingBuffer(3, 64, 64, device="cuda", seed=0)
        for f in frames:
            ring.push(f)
        cfg = TrainConfig(lr=1e-3, batch=1, crop=32, graph=graph, spike_ratio=4.0)
        model = UNet(ModelConfig(width=8, depth=2, output="kpn"))
        return Trainer(model, SPEC, ring, cfg, "cuda", Precision("fp32", True))

    eager, graphed = trainer(False), trainer(True)
    start = [p.detach().clone() for p in graphed.model.parameters()]
    for _ in range(16):
        assert eager.step() and graphed.step()
    assert len(graphed.graphs) >= 3, "emitter, background and plain crops each take their own graph"
    np.testing.assert_allclose(list(graphed.losses), list(eager.losses), rtol=1e-2)
    for a, b, s in zip(eager.model.parameters(), graphed.model.parameters(), start):
        assert not torch.equal(b, s), "the replayed gradients must reach the optimizer"
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-3)


def test_a_waiting_recording_goes_before_the_next_frame_and_never_overlaps_one():
    from online_denoise.step_graph import GpuTurns

    turns = GpuTurns()
    inside, overlaps, frames_done = [0], [0], [0]
    recorded_after = []
    started = threading.Event()

    def hold(seconds):  # busy, as a thread launching GPU work is: it keeps the GIL
        inside[0] += 1
        overlaps[0] = max(overlaps[0], inside[0])
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
        inside[0] -= 1

    def loop():  # frames back to back, as a GPU render loop runs them
        for i in range(300):
            with turns.frame():
                hold(0.002)
            frames_done[0] += 1
            if i == 10:
                started.set()

    def record():
        started.wait()
        before = frames_done[0]
        with turns.recording():
            recorded_after.append(frames_done[0] - before)
            hold(0.02)

    threads = [threading.Thread(target=loop), threading.Thread(target=record)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert recorded_after and recorded_after[0] <= 5, f"the recording waited behind {recorded_after} frames"
    assert overlaps[0] == 1 and frames_done[0] == 300
    with turns.frame(), turns.recording(), turns.frame():  # the inline schedule records inside a frame
        pass
