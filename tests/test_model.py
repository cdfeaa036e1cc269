import pytest
import torch
import torch.nn.functional as F

from online_denoise.arrays import pad_to
from online_denoise.config import PRESETS
from online_denoise.features import background_mask, emitter_mask
from online_denoise.model import ModelConfig, UNet, apply_kernels, count_parameters


def test_paper_architecture_channels():
    m = UNet(PRESETS["paper"].model)
    assert m.alignment == 32
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    # Table 2: ENC_CONV0..6 (7 convs of 48), DEC_CONV5A..2B (8 convs of 96), DEC_CONV1A 64, 1B 32, 1C 3.
    assert [c.out_channels for c in convs] == [48] * 7 + [96] * 8 + [64, 32, 3]
    assert convs[0].in_channels == 9
    # CONCAT5: 48 + 48, CONCAT4..2: 96 + 48, CONCAT1: 96 + n
    assert [c.in_channels for c in convs[7:15:2]] == [96, 144, 144, 144]
    assert convs[15].in_channels == 96 + 9
    assert all(c.kernel_size == (3, 3) for c in convs)


def test_he_initialisation():
    torch.manual_seed(0)
    m = UNet(ModelConfig(width=48))
    w = m.enc[2].weight  # 48 -> 48, fan_in 432
    expected_std = (2.0 / (1 + 0.1 ** 2) / (48 * 9)) ** 0.5
    assert w.std().item() == pytest.approx(expected_std, rel=0.05)
    assert torch.all(m.enc[2].bias == 0)


@pytest.mark.parametrize("output", ["direct", "kpn"])
@pytest.mark.parametrize("depth", [2, 5])
def test_forward_shapes(output, depth):
    m = UNet(ModelConfig(width=8, depth=depth, output=output))
    x = torch.rand(2, 9, 64, 64)
    assert m(x, torch.rand(2, 3, 64, 64)).shape == (2, 3, 64, 64)


def test_width_and_head_scale():
    small = ModelConfig(width=16)
    assert small.decoder_channels == 32 and small.head_channels == (21, 11)
    assert count_parameters(UNet(small)) < count_parameters(UNet(ModelConfig(width=48))) / 5


def test_pad_to_alignment_and_back():
    x = torch.rand(1, 3, 37, 50)
    padded, size = pad_to(x, 32)
    assert padded.shape[-2:] == (64, 64) and size == (37, 50)
    torch.testing.assert_close(padded[..., :37, :50], x)
    torch.testing.assert_close(padded[..., 63, :50], x[..., 36, :])  # replicated edge


def test_kpn_is_a_convex_combination():
    color = torch.rand(1, 3, 16, 16) * 5
    logits = torch.randn(1, 25, 16, 16) * 3
    out = apply_kernels(color, logits, 5)
    assert out.min() >= 0 and out.max() <= color.max() + 1e-5
    flat = torch.full((1, 3, 16, 16), 0.7)
    torch.testing.assert_close(apply_kernels(flat, logits, 5), flat)  # weights sum to one, borders too


def test_kpn_with_one_hot_kernel_is_identity():
    color = torch.rand(1, 3, 8, 8)
    logits = torch.full((1, 9, 8, 8), -1e4)
    logits[:, 4] = 0  # centre tap of a 3x3 kernel
    torch.testing.assert_close(apply_kernels(color, logits, 3), color)


def _unfolded_kernels(color: torch.Tensor, logits: torch.Tensor, k: int) -> torch.Tensor:
    """The same filter by unfolding each neighbourhood, differentiated by autograd alone."""
    n, c, h, w = color.shape
    r = k // 2
    patches = F.unfold(F.pad(color, (r, r, r, r), mode="replicate"), k).view(n, c, k * k, h, w)
    return (patches * logits.softmax(dim=1).unsqueeze(1)).sum(dim=2)


def test_kernel_filter_gradients_match_autograd_on_an_unfolded_filter():
    torch.manual_seed(3)
    color = (torch.rand(2, 4, 9, 11, dtype=torch.float64) * 3).requires_grad_()
    logits = torch.randn(2, 9, 9, 11, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 4, 9, 11, dtype=torch.float64)
    grads = []
    for f in (apply_kernels, _unfolded_kernels):
        out = f(color, logits, 3)
        grads.append((out, *torch.autograd.grad((out * upstream).sum(), (color, logits))))
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference)
    assert torch.autograd.gradcheck(lambda c, l: apply_kernels(c, l, 3), (color[:1, :2, :5, :6], logits[:1, :, :5, :6]))



def test_kernel_filter_gradients_hold_for_channels_last_and_strided_tensors():
    # In training the logits come from a channels_last convolution and the colour and upstream
    # gradient can be views; the weight gradient reads the padded colour through a strided window.
    torch.manual_seed(4)
    color = torch.rand(2, 7, 12, 10, dtype=torch.float64)[:, 1:]  # 6 channels, not contiguous
    logits = torch.randn(2, 25, 12, 10, dtype=torch.float64).to(memory_format=torch.channels_last)
    logits.requires_grad_()
    upstream = torch.randn(2, 12, 10, 6, dtype=torch.float64).permute(0, 3, 1, 2)  # 2 x 6 x 12 x 10, strided
    grads = []
    for f in (apply_kernels, _unfolded_kernels):
        out = f(color, logits, 5)
        grads.append((out, *torch.autograd.grad((out * upstream).sum(), (logits,))))
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference)

def _small_kpn(scales: int) -> UNet:
    torch.manual_seed(0)
    return UNet(ModelConfig(width=8, depth=3, output="kpn", scales=scales))


def _plain_and_masked(m: UNet, color: torch.Tensor, **masks) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels applied to ``color`` as they are, and with the masks keeping pixels out of them."""
    x = torch.rand(color.shape[0], 9, *color.shape[-2:])
    with torch.no_grad():
        return m(x, color), m(x, color, **masks)


def _light_in_a_flat_ceiling(n=2, size=32):
    color = torch.full((n, 3, size, size), 0.5)
    emitter = torch.zeros(n, 1, size, size)
    emitter[..., 12:20, 12:20] = 1
    return color + 40 * emitter, emitter


@pytest.mark.parametrize("scales", [1, 3])
def test_kernels_never_gather_light_into_the_surfaces_around_it(scales):
    m = _small_kpn(scales)
    color, emitter = _light_in_a_flat_ceiling()
    plain, masked = _plain_and_masked(m, color, emitter=emitter)
    surface = emitter[0, 0] == 0
    beside = torch.zeros(32, 32, dtype=torch.bool)
    beside[10:22, 10:22] = True
    beside &= surface  # the two pixels around the light
    # A normalised convolution of the flat surface is the surface itself, right beside the light too...
    torch.testing.assert_close(masked[:, :, surface], torch.full_like(masked[:, :, surface], 0.5))
    # ...where the plain kernels light up a halo.
    assert plain[:, :, beside].max() > 1.0
    # The light itself keeps the plain filtering.
    torch.testing.assert_close(masked[:, :, ~surface], plain[:, :, ~surface])


def test_a_bright_pixel_beside_a_light_is_gathered_by_no_surface():
    """A colour sample hit the light where the aux pass's samples missed it: that pixel must not spread."""
    m = _small_kpn(2)
    color, emitter = _light_in_a_flat_ceiling(1)
    color[..., 20, 15] = 4.0  # just below the light, outside the mask
    x = torch.rand(1, 9, 32, 32)
    with torch.no_grad():
        masked = m(x, color, emitter)
    surface = emitter[0, 0] == 0
    # Every surface pixel, the bright one included, is the flat ceiling filtered over the other surfaces.
    torch.testing.assert_close(masked[0, :, surface], torch.full_like(masked[0, :, surface], 0.5))


def test_an_empty_emitter_mask_changes_nothing():
    m = _small_kpn(2)
    x, color = torch.rand(1, 9, 32, 32), torch.rand(1, 3, 32, 32) * 3
    with torch.no_grad():
        torch.testing.assert_close(m(x, color, torch.zeros(1, 1, 32, 32)), m(x, color), rtol=1e-5, atol=1e-6)


def test_gradients_flow_through_the_masked_filter():
    m = _small_kpn(2)
    color, emitter = _light_in_a_flat_ceiling(1)
    m(torch.rand(1, 9, 32, 32), color + torch.rand_like(color), emitter).mean().backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert m.out.weight.grad.abs().sum() > 0


def _wall_at_the_edge_of_the_scene(size=32):
    """A flat wall on the left half; on the right the camera sees past the scene, into black."""
    color = torch.zeros(1, 3, size, size)
    color[..., : size // 2] = 0.3
    background = torch.zeros(1, 1, size, size)
    background[..., size // 2:] = 1
    return color, background


@pytest.mark.parametrize("scales", [1, 3])
def test_the_background_keeps_its_colour_and_stays_out_of_the_surfaces_kernels(scales):
    m = _small_kpn(scales)
    color, background = _wall_at_the_edge_of_the_scene()
    plain, masked = _plain_and_masked(m, color, background=background)
    wall, black = background[0, 0] == 0, background[0, 0] == 1
    # The plain kernels darken the wall along the edge and smear it into the black...
    assert plain[0, :, wall].min() < 0.29 and plain[0, :, black].max() > 0.01
    # ...the masked ones filter the wall over the wall only, and leave the background as it was.
    torch.testing.assert_close(masked[0, :, wall], torch.full_like(masked[0, :, wall], 0.3))
    assert bool((masked[0, :, black] == 0).all())


def test_lights_and_background_together():
    m = _small_kpn(2)
    color, emitter = _light_in_a_flat_ceiling(1)
    background = torch.zeros_like(emitter)
    background[..., :, 28:] = 1
    color = torch.where(background > 0, torch.full_like(color, 0.9), color)  # a sky beside the ceiling
    plain, masked = _plain_and_masked(m, color, emitter=emitter, background=background)
    ceiling = (emitter[0, 0] == 0) & (background[0, 0] == 0)
    torch.testing.assert_close(masked[0, :, ceiling], torch.full_like(masked[0, :, ceiling], 0.5))
    torch.testing.assert_close(masked[0, :, background[0, 0] == 1], color[0, :, background[0, 0] == 1])
    light = emitter[0, 0] == 1
    torch.testing.assert_close(masked[0, :, light], plain[0, :, light])  # lights keep the plain filtering


def test_gradients_flow_through_the_background_filter():
    m = _small_kpn(2)
    color, background = _wall_at_the_edge_of_the_scene()
    m(torch.rand(1, 9, 32, 32), color + torch.rand_like(color), background=background).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    assert m.out.weight.grad.abs().sum() > 0


def test_background_mask_marks_pixels_that_hit_nothing():
    normal = torch.zeros(1, 3, 1, 4)
    normal[0, :, 0, 0] = torch.tensor([0.0, 0.0, 1.0])  # a surface
    normal[0, :, 0, 1] = torch.tensor([0.0, 0.0, 0.25])  # a quarter of a surface at a silhouette
    normal[0, :, 0, 3] = float("nan")
    assert background_mask(normal)[0, 0, 0].tolist() == [0, 0, 1, 0]


def test_a_caller_can_say_whether_background_is_in_view():
    """What a recorded CUDA graph relies on: the answer given equals the one run_network would find."""
    from online_denoise.denoiser import run_network
    from online_denoise.features import FeatureSpec

    torch.manual_seed(0)
    model = UNet(ModelConfig(width=8, depth=2, output="kpn")).eval()
    color, albedo = torch.rand(1, 3, 16, 16) * 2, torch.full((1, 3, 16, 16), 0.5)
    normal = torch.zeros(1, 3, 16, 16)
    normal[:, 2, :, :9] = 1.0  # the right part sees past the scene
    with torch.no_grad():
        found = run_network(model, FeatureSpec(), color, albedo, normal)
        told = run_network(model, FeatureSpec(), color, albedo, normal, has_background=True)
        plain = run_network(model, FeatureSpec(), color, albedo, normal, has_background=False)
    torch.testing.assert_close(told, found, rtol=0, atol=0)
    torch.testing.assert_close(found[..., 9:], color[..., 9:])  # the background keeps its own colour
    assert not torch.allclose(plain, found), "told there is none, the plain filter runs over the background"


def test_emitter_mask_marks_bright_emission_and_ignores_nan():
    emission = torch.zeros(1, 3, 2, 3)
    emission[0, 2, 0, 0] = 1.5  # blue only still counts
    emission[0, :, 1, 2] = 18.0  # a light
    emission[0, :, 1, 1] = 9.0  # half a pixel of it
    emission[0, :, 1, 0] = 0.9  # a sky in the range of the surfaces it lights
    emission[0, 0, 0, 1] = float("nan")
    mask = emitter_mask(emission)
    assert mask.shape == (1, 1, 2, 3)
    assert mask[0, 0].tolist() == [[1, 0, 0], [0, 1, 1]]


def test_invalid_configs():
    with pytest.raises(ValueError):
        ModelConfig(output="magic")
    with pytest.raises(ValueError):
        ModelConfig(kernel_size=4)
    assert ModelConfig.from_dict(ModelConfig(width=12, head=(8, 4)).to_dict()) == ModelConfig(width=12, head=(8, 4))


def test_demodulated_kernels_keep_texture_that_plain_kernels_blur():
    """Colour = albedo x constant light: over the albedo the kernels see a flat image, so texture survives."""
    from online_denoise.denoiser import run_network
    from online_denoise.features import FeatureSpec

    torch.manual_seed(0)
    model = UNet(ModelConfig(width=8, depth=2, output="kpn", scales=2)).eval()
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    checker = ((yy // 2 + xx // 2) % 2).float() * 0.7 + 0.1  # 2-pixel texture, albedo 0.1 / 0.8
    albedo = checker.expand(1, 3, 32, 32).clone()
    color = albedo * 1.7
    normal = torch.zeros(1, 3, 32, 32)
    normal[:, 2] = 1.0
    with torch.no_grad():
        plain = run_network(model, FeatureSpec(firefly=0), color, albedo, normal)
        kept = run_network(model, FeatureSpec(firefly=0, demodulate=0.05), color, albedo, normal)
    torch.testing.assert_close(kept, color, rtol=1e-4, atol=1e-5)
    assert (plain - color).abs().mean() > 0.1, "an untrained kernel blurs the texture away"


def test_demodulation_leaves_lights_alone():
    """A light's albedo is 0: divided by the floor and multiplied back by its rim's albedo it once came out
    50x too bright wherever it was gathered. Lights are filtered undemodulated."""
    from online_denoise.denoiser import run_network
    from online_denoise.features import FeatureSpec

    torch.manual_seed(0)
    model = UNet(ModelConfig(width=8, depth=2, output="kpn", scales=2)).eval()
    albedo = torch.full((1, 3, 32, 32), 0.6)
    color = albedo * 0.5
    color[..., 11:21, 11:21] = 15.0  # the light's rim: pixels half on the light, half on the ceiling
    albedo[..., 11:21, 11:21] = 0.3
    albedo[..., 12:20, 12:20] = 0.0  # the light's black albedo
    color[..., 12:20, 12:20] = 30.0
    emitter = torch.zeros(1, 1, 32, 32)
    emitter[..., 11:21, 11:21] = 1.0  # bright enough to count as the light
    normal = torch.zeros(1, 3, 32, 32)
    normal[:, 2] = 1.0
    with torch.no_grad():
        plain = run_network(model, FeatureSpec(firefly=0), color, albedo, normal, emitter=emitter)
        demod = run_network(model, FeatureSpec(firefly=0, demodulate=0.05), color, albedo, normal, emitter=emitter)
    assert demod.max() <= 30.0 * 1.01 and plain.max() <= 30.0 * 1.01
    light = emitter.bool().expand_as(color)
    torch.testing.assert_close(demod[light], plain[light], rtol=0.05, atol=0.5)


def test_a_widened_input_computes_what_the_narrow_net_did_whatever_the_new_channels_hold():
    from online_denoise.model import widen_inputs

    torch.manual_seed(3)
    config = ModelConfig(in_channels=9, width=8, depth=3, output="kpn", kernel_size=3, scales=2)
    narrow = UNet(config).eval()
    # Channels 3-5 and 12 are new: the old 9 keep their order around them.
    wide_config = ModelConfig(in_channels=13, width=8, depth=3, output="kpn", kernel_size=3, scales=2)
    wide = UNet(wide_config).eval()
    wide.load_state_dict(widen_inputs(narrow.state_dict(), config, [3, 4, 5, 12], 13))
    x, color = torch.rand(2, 9, 32, 32), torch.rand(2, 3, 32, 32)
    extra = torch.rand(2, 4, 32, 32) * 10
    x_wide = torch.cat([x[:, :3], extra[:, :3], x[:, 3:], extra[:, 3:]], dim=1)
    with torch.no_grad():  # equal but for the order of the sums over input channels
        torch.testing.assert_close(wide(x_wide, color), narrow(x, color), rtol=0, atol=1e-6)
    # Training may then use the new inputs: they reach the output once their weights move.
    wide.enc_conv0.weight.data[:, 3].fill_(0.5)
    with torch.no_grad():
        assert (wide(x_wide, color) - narrow(x, color)).abs().max() > 1e-3
    with pytest.raises(ValueError, match="do not make 12"):
        widen_inputs(narrow.state_dict(), config, [3, 4], 12)


def test_inference_under_bf16_autocast_matches_training_mode_exactly():
    # Inference reads the kernel logits through a copy to NCHW, training does not: the layout may change
    # the softmax's order of summation, nothing more.
    torch.manual_seed(3)
    m = _small_kpn(scales=3).to(memory_format=torch.channels_last)
    x = torch.rand(2, 9, 32, 32).contiguous(memory_format=torch.channels_last)
    color = torch.rand(2, 3, 32, 32) * 4
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = m(x, color)
        with torch.no_grad():
            inferred = m(x, color)
    torch.testing.assert_close(inferred, trained.detach(), rtol=1e-6, atol=1e-6)


def test_a_demod_mix_net_gated_off_is_the_plain_kernel_filter():
    """The widened prior with its mix gated off everywhere computes what the prior did, lights included."""
    from online_denoise.denoiser import Checkpoint
    from online_denoise.features import FeatureSpec

    torch.manual_seed(5)
    config = ModelConfig(width=8, depth=3, output="kpn", kernel_size=3, scales=2)
    plain = UNet(config).eval()
    widened = Checkpoint(config, FeatureSpec(), plain.state_dict(), {}).with_demod_mix()
    assert widened.model_config.demod_mix and widened.model_config.out_channels == config.out_channels + 1
    mixed = UNet(widened.model_config).eval()
    mixed.load_state_dict(widened.state_dict)
    x, color = torch.rand(2, 9, 32, 32), torch.rand(2, 3, 32, 32) * 3
    albedo = torch.rand(2, 3, 32, 32).clamp_min(0.05)
    emitter = torch.zeros(2, 1, 32, 32)
    emitter[..., 4:8, 4:8] = 1.0
    off = torch.zeros(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(mixed(x, color, emitter, albedo=albedo, mix_gate=off), plain(x, color, emitter),
                                   rtol=1e-5, atol=1e-6)
        # With no gate nothing is known to be diffuse: the plain filtering, not the logit's untrained 5%.
        torch.testing.assert_close(mixed(x, color, emitter, albedo=albedo), plain(x, color, emitter),
                                   rtol=1e-5, atol=1e-6)
        # Gated on, its mix starts small but not at zero: the demodulated branch is in play from the first step.
        on = torch.ones(2, 1, 32, 32)
        assert (mixed(x, color, emitter, albedo=albedo, mix_gate=on) - plain(x, color, emitter)).abs().max() > 1e-4


def test_the_demodulated_branch_keeps_texture_on_diffuse_pixels_only():
    """Colour = albedo x constant light. With the mix forced to 1, gated-on pixels keep their texture
    (the kernels see flat irradiance); gated-off pixels get the plain filter, which blurs it."""
    torch.manual_seed(0)
    m = UNet(ModelConfig(width=8, depth=2, output="kpn", scales=2, demod_mix=True)).eval()
    m.out.weight.data[-1].zero_()
    m.out.bias.data[-1] = 30.0  # sigmoid(30) = 1: the demodulated result wherever the gate allows
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    albedo = (((yy // 2 + xx // 2) % 2).float() * 0.7 + 0.1).expand(1, 3, 32, 32).clone()
    color = albedo * 1.7
    gate = torch.zeros(1, 1, 32, 32)
    gate[..., :, :16] = 1.0  # the left half is diffuse
    x = torch.rand(1, 9, 32, 32)
    with torch.no_grad():
        y = m(x, color, albedo=albedo, mix_gate=gate)
    torch.testing.assert_close(y[..., :16], color[..., :16], rtol=1e-4, atol=1e-5)
    assert (y[..., 18:] - color[..., 18:]).abs().mean() > 0.1


def test_the_emitter_filter_takes_any_number_of_channels():
    """Six channels filtered at once (colour and colour / albedo) are the two halves filtered alone."""
    from online_denoise.model import filter_around_emitters

    torch.manual_seed(1)
    logits = torch.randn(1, 9, 16, 16)

    def kernels(images):
        return apply_kernels(images, logits, 3)

    color = torch.rand(1, 6, 16, 16) * 2
    emitter = torch.zeros(1, 1, 16, 16)
    emitter[..., 5:9, 5:9] = 1.0
    color[:, :, 5:9, 5:9] += 20.0
    background = torch.zeros(1, 1, 16, 16)
    background[..., :, :2] = 1.0
    both = filter_around_emitters(kernels, color, emitter, background)
    halves = torch.cat([filter_around_emitters(kernels, c, emitter, background) for c in color.split(3, dim=1)], 1)
    torch.testing.assert_close(both, halves)


def test_demod_mix_needs_the_kernel_head():
    with pytest.raises(ValueError, match="demod_mix needs the kpn output"):
        ModelConfig(output="direct", scales=1, demod_mix=True)
