import os

import numpy as np
import pytest
import torch

from online_denoise.arrays import to_hwc_numpy
from online_denoise.denoiser import CheckpointError, Denoiser, load_checkpoint, save_checkpoint, select_device
from online_denoise.errors import UserError
from online_denoise.features import FeatureSpec
from online_denoise.model import ModelConfig, UNet

CFG = ModelConfig(width=8, depth=3, output="kpn")
SPEC = FeatureSpec()


def test_denoise_pair_averages_both_renders(frame_factory):
    f = frame_factory(40, 24)  # not a multiple of the alignment: padded and cropped back
    d = Denoiser(CFG, SPEC)
    r = d.denoise_pair(f)
    assert r.denoised.shape == (1, 3, 40, 24)
    torch.testing.assert_close(r.denoised, (r.denoised_a + r.denoised_b) / 2)
    torch.testing.assert_close(r.denoised_a, d.denoise(f.color_a, f.albedo, f.normal))
    assert (r.denoised >= 0).all()


def test_pair_mean_denoises_the_average_of_the_renders_once(frame_factory):
    f = frame_factory(40, 24)
    d = Denoiser(CFG, SPEC)
    r = d.denoise_pair(f, "mean")
    mean = (f.color_a + f.color_b) / 2
    torch.testing.assert_close(r.denoised, d.denoise(mean, f.albedo, f.normal))
    assert r.denoised_a is None and r.denoised_b is None  # no independent pair to estimate the error from
    e = d.denoise_pair(f, "mean", each="ab")
    torch.testing.assert_close(e.denoised, r.denoised)  # the display does not change on estimate frames
    torch.testing.assert_close(e.denoised_a, d.denoise(f.color_a, f.albedo, f.normal))
    torch.testing.assert_close(e.denoised_b, d.denoise(f.color_b, f.albedo, f.normal))
    one = d.denoise_pair(f, "mean", each="b")  # one render on its own is enough for an estimate
    torch.testing.assert_close(one.denoised, r.denoised)
    assert one.denoised_a is None
    torch.testing.assert_close(one.denoised_b, e.denoised_b)
    with pytest.raises(ValueError, match="each"):
        d.denoise_pair(f, "mean", each=True)
    assert not torch.allclose(r.denoised, d.denoise_pair(f, "both").denoised)
    with pytest.raises(ValueError, match="pair mode"):
        d.denoise_pair(f, "median")


def test_the_history_feature_tells_the_network_each_pixels_noise_level(frame_factory, monkeypatch):
    """Each render's span of frames reaches its own input; the renders' mean is worth the frames of both."""
    import online_denoise.denoiser as denoiser_module

    seen = []
    build = denoiser_module.build_input
    monkeypatch.setattr(denoiser_module, "build_input", lambda *a: seen.append(build(*a)) or seen[-1])
    spec = FeatureSpec(("color", "albedo", "normal", "history"))
    d = Denoiser(ModelConfig(in_channels=spec.channels, width=8, depth=3, output="kpn"), spec)
    f = frame_factory(16, 16)
    f.frames_a = np.full((16, 16, 1), 4.0, np.float32)
    f.frames_b = np.full((16, 16, 1), 4.0, np.float32)
    f.frames_b[:8] = 1.0  # the top half of b just restarted
    d.denoise_pair(f, "both")
    level = seen[-1][:, 9]
    torch.testing.assert_close(level[0], torch.full((16, 16), 0.5))
    torch.testing.assert_close(level[1, :8], torch.ones(8, 16))
    d.denoise_pair(f, "mean")
    mean_level = seen[-1][0, 9]
    # var((a + b) / 2) = (1/4 + 1/4) / 4 of one frame below, (1/4 + 1) / 4 above
    torch.testing.assert_close(mean_level[8:], torch.full((8, 16), 0.125 ** 0.5))
    torch.testing.assert_close(mean_level[:8], torch.full((8, 16), 0.3125 ** 0.5))
    f.frames_a = f.frames_b = None
    d.denoise_pair(f, "both")
    assert torch.equal(seen[-1][:, 9], torch.ones(2, 16, 16))  # plain renders: one frame each


def test_a_frames_emission_keeps_its_lights_out_of_the_surfaces_beside_them(frame_factory):
    torch.manual_seed(0)
    f = frame_factory(40, 24)
    f.emission = np.zeros((40, 24, 3), np.float32)
    f.emission[16:24, 8:16] = 30.0
    f.color_a[16:24, 8:16] += 30.0
    f.color_b[16:24, 8:16] += 30.0
    d = Denoiser(CFG, SPEC)
    masked = d.denoise_pair(f, "mean").denoised
    torch.testing.assert_close(masked, d.denoise((f.color_a + f.color_b) / 2, f.albedo, f.normal, f.emission))
    plain = d.denoise((f.color_a + f.color_b) / 2, f.albedo, f.normal)
    beside = (slice(None), slice(None), slice(14, 26), slice(6, 8))  # two columns left of the light
    assert plain[beside].max() > 2.0 and masked[beside].max() < 1.5  # the surfaces are about 0.5
    f.emission[:] = 0.0  # nothing emits: the same as no emission buffer
    torch.testing.assert_close(d.denoise_pair(f, "mean").denoised,
                               d.denoise((f.color_a + f.color_b) / 2, f.albedo, f.normal))


def test_a_firefly_is_clamped_before_the_kernels_can_spread_it_but_a_small_light_is_not(frame_factory,
                                                                                      monkeypatch):
    import online_denoise.denoiser as denoiser_module

    torch.manual_seed(0)
    f = frame_factory(32, 32)
    f.color_a = np.full((32, 32, 3), 0.5, np.float32)
    f.color_b = f.color_a.copy()
    f.color_a[16, 16] = 400.0
    on = Denoiser(CFG, SPEC)
    off = Denoiser(CFG, FeatureSpec(firefly=0))
    off.model.load_state_dict(on.model.state_dict())
    around = (0, slice(None), slice(13, 20), slice(13, 20))
    assert off.denoise_pair(f, "mean").denoised[around].max() > 4.0  # a blob
    assert on.denoise_pair(f, "mean").denoised[around].max() < 2.1  # at most 4x the neighbours
    # The same pixel seen as a light, a far bulb, reaches the network as rendered.
    seen = []
    build = denoiser_module.build_input
    monkeypatch.setattr(denoiser_module, "build_input", lambda *a: seen.append(a[1]) or build(*a))
    f.emission = np.zeros((32, 32, 3), np.float32)
    f.emission[16, 16] = 399.5
    on.denoise_pair(f, "mean")
    torch.testing.assert_close(seen[-1][0, :, 16, 16], torch.full((3,), 200.25))
    f.emission[16, 16] = 0.0
    on.denoise_pair(f, "mean")
    assert seen[-1][0, :, 16, 16].max() < 2.1


def test_pixels_that_hit_nothing_are_shown_as_rendered(frame_factory):
    torch.manual_seed(0)
    f = frame_factory(40, 24)
    f.normal[:, 12:] = 0.0  # the camera sees past the scene on the right: a sky, without noise
    f.color_a[:, 12:] = f.color_b[:, 12:] = [0.2, 0.4, 0.9]
    d = Denoiser(CFG, SPEC)
    out = to_hwc_numpy(d.denoise_pair(f, "mean").denoised)
    np.testing.assert_allclose(out[:, 12:], np.broadcast_to([0.2, 0.4, 0.9], (40, 12, 3)), rtol=1e-6)
    # The surfaces' kernels do not gather the sky: a blinding one leaves them in the range of the surfaces.
    f.color_a[:, 12:] = f.color_b[:, 12:] = 50.0
    left = to_hwc_numpy(d.denoise_pair(f, "mean").denoised)[:, :12]
    mean = (f.color_a + f.color_b)[:, :12] / 2
    assert mean.min() - 1e-6 <= left.min() and left.max() <= mean.max() + 1e-6
    f.normal[:, 12:] = 0.5  # the same colours on a surface are gathered
    assert to_hwc_numpy(d.denoise_pair(f, "mean").denoised)[:, :12].max() > 2 * mean.max()


def test_pair_mode_of_a_single_render_frame_is_that_render(frame_factory):
    f = frame_factory(32, 32)
    f.color_b = None
    d = Denoiser(CFG, SPEC)
    for mode in ("both", "mean"):
        r = d.denoise_pair(f, mode)
        torch.testing.assert_close(r.denoised, d.denoise(f.color_a, f.albedo, f.normal))
        assert r.denoised_b is None


def test_nonfinite_input_gives_finite_output(frame_factory):
    f = frame_factory(32, 32)
    f.color_a[3, 3] = np.nan
    f.color_a[4, 4] = np.inf
    out = Denoiser(ModelConfig(width=8, depth=3), SPEC).denoise(f.color_a, f.albedo, f.normal)
    assert torch.isfinite(out).all()


def test_checkpoint_round_trip(tmp_path, frame_factory):
    torch.manual_seed(1)
    model = UNet(CFG)
    path = save_checkpoint(tmp_path / "m.pt", model, CFG, SPEC, {"steps": 7})
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    ckpt = load_checkpoint(path, expect=SPEC)
    assert ckpt.model_config == CFG and ckpt.spec == SPEC and ckpt.meta["steps"] == 7
    f = frame_factory()
    ref = Denoiser(CFG, SPEC)
    ref.model.load_state_dict(model.state_dict())
    torch.testing.assert_close(ckpt.denoiser().denoise(f.color_a, f.albedo, f.normal),
                               ref.denoise(f.color_a, f.albedo, f.normal))


def test_checkpoint_from_another_feature_set_is_refused(tmp_path):
    spec = FeatureSpec(("color", "albedo"))
    cfg = ModelConfig(in_channels=6, width=8, depth=3)
    path = save_checkpoint(tmp_path / "m.pt", UNet(cfg), cfg, spec)
    with pytest.raises(CheckpointError, match="trained on color\\+albedo .* this run uses color\\+albedo\\+normal"):
        load_checkpoint(path, expect=SPEC)


def test_garbage_and_truncated_checkpoints_are_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable"):
        load_checkpoint(junk)
    good = save_checkpoint(tmp_path / "good.pt", UNet(CFG), CFG, SPEC)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_checkpoint(cut)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_plain_torch_file_is_not_ours(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(UNet(CFG).state_dict(), path)
    with pytest.raises(CheckpointError, match="not an online_denoise checkpoint"):
        load_checkpoint(path)


def test_pickled_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "online_denoise.checkpoint", "x": Evil()}, path)
    with pytest.raises(CheckpointError, match="evil.pt"):
        load_checkpoint(path)


def test_save_failure_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "m.pt", UNet(CFG), CFG, SPEC, {"steps": 1})
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError):
        save_checkpoint(path, UNet(CFG), CFG, SPEC)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="--device cuda"):
            select_device("cuda")
    with pytest.raises(UserError, match="--device"):
        select_device("tpu")


def test_to_hwc_numpy_round_trip(frame_factory):
    from online_denoise.arrays import to_chw

    x = frame_factory().color_a
    np.testing.assert_array_equal(to_hwc_numpy(to_chw(x, "cpu")), x)


def test_compiled_inference_follows_every_weight_update(frame_factory):
    """The live loop loads new weights into the compiled network every frame; it must not serve stale ones."""
    from online_denoise.precision import Precision

    cfg = ModelConfig(width=8, depth=2, output="kpn")
    eager = Denoiser(cfg, FeatureSpec())
    compiled = Denoiser(cfg, FeatureSpec(), precision=Precision(compile="infer"))
    frame = frame_factory(32, 32, seed=4)
    for version, seed in enumerate((1, 2, 3)):
        torch.manual_seed(seed)
        weights = UNet(cfg).state_dict()
        eager.load_weights(weights, version)
        compiled.load_weights(weights, version)
        torch.testing.assert_close(compiled.denoise_pair(frame).denoised, eager.denoise_pair(frame).denoised,
                                   rtol=1e-4, atol=1e-5)
