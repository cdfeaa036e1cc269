"""The firefly clamp, the feature spec that carries it, the network input and the masks."""

import math
import pytest
import torch
import torch.nn.functional as F

from online_denoise.arrays import box3, dilate3, erode3
from online_denoise.color import get_transfer
from online_denoise.color import luminance as hwc_luminance
from online_denoise.features import FIREFLY_RATIO, FeatureSpec, build_input, suppress_fireflies


def luminance(color):
    return hwc_luminance(color.permute(0, 2, 3, 1)).unsqueeze(1)


def flat(h=12, w=12, value=0.5):
    return torch.full((1, 3, h, w), value)


def test_a_lone_spike_is_scaled_to_ratio_times_its_neighbours_keeping_its_hue():
    c = flat()
    c[0, :, 5, 5] = torch.tensor([40.0, 20.0, 10.0])
    out = suppress_fireflies(c, 4.0)
    torch.testing.assert_close(luminance(out)[0, 0, 5, 5], torch.tensor(4.0 * 0.5 + 1e-4))
    ratio = out[0, :, 5, 5] / c[0, :, 5, 5]
    torch.testing.assert_close(ratio, ratio[:1].expand(3))  # one scale for all three channels
    mask = torch.ones(12, 12, dtype=torch.bool)
    mask[5, 5] = False
    assert torch.equal(out[0][:, mask], c[0][:, mask])  # nothing else moves


def test_two_fireflies_side_by_side_do_not_shelter_each_other():
    c = flat()
    c[0, :, 5, 5] = 30.0
    c[0, :, 5, 6] = 60.0
    out = luminance(suppress_fireflies(c, 4.0))[0, 0]
    assert out[5, 5] < 2.1 and out[5, 6] < 2.1


def test_lines_edges_and_smooth_gradients_are_left_alone():
    c = flat(16, 16, 0.1)
    c[0, :, 8, :] = 20.0  # a one-pixel-wide highlight: each pixel has a bright neighbour on each side
    c[0, :, :, 12:] = 5.0  # a step edge
    ramp = torch.linspace(0.01, 10.0, 16).view(1, 1, 1, 16).expand(1, 3, 16, 16)
    for image in (c, ramp.contiguous()):
        assert torch.equal(suppress_fireflies(image, 4.0), image)


def test_exempt_pixels_keep_their_colour_and_the_clamp_is_exposure_invariant():
    c = flat()
    c[0, :, 3, 3] = 50.0  # a far bulb, one pixel
    c[0, :, 8, 8] = 50.0  # a firefly
    keep = torch.zeros(1, 1, 12, 12)
    keep[0, 0, 3, 3] = 1.0
    out = suppress_fireflies(c, 4.0, keep)
    assert torch.equal(out[0, :, 3, 3], c[0, :, 3, 3]) and out[0, 0, 8, 8] < 2.1
    torch.testing.assert_close(suppress_fireflies(c * 8.0, 4.0) / 8.0, suppress_fireflies(c, 4.0), rtol=1e-4,
                               atol=1e-4)


def test_black_and_negative_surroundings_never_flip_or_zero_a_pixel():
    c = torch.zeros(1, 3, 8, 8)
    c[0, :, 4, 4] = 3.0
    c[0, :, 0, 0] = -1.0  # Mitsuba can return tiny negatives; the bound is floored at 0
    out = suppress_fireflies(c, 4.0)
    assert (out[0, :, 4, 4] > 0).all() and out[0, :, 4, 4].max() < 1e-3
    assert torch.isfinite(out).all()


def test_the_spec_carries_the_ratio_and_old_checkpoints_had_none():
    spec = FeatureSpec()
    assert spec.firefly == FIREFLY_RATIO and "fireflies over 4x" in spec.describe()
    assert FeatureSpec.from_dict(spec.to_dict()) == spec
    old = {"features": ["color", "albedo", "normal"], "transfer": "paper", "exposure": "none"}
    assert FeatureSpec.from_dict(old).firefly == 0.0  # trained, and so used, without the clamp
    assert FeatureSpec(firefly=0).describe() == "color+albedo+normal (paper transfer, exposure none)"
    for bad in (-1.0, 0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="firefly ratio"):
            FeatureSpec(firefly=bad)


def test_demodulation_is_saved_with_the_spec_and_checked():
    spec = FeatureSpec(demodulate=0.05)
    assert FeatureSpec.from_dict(spec.to_dict()) == spec and "albedo (floor 0.05)" in spec.describe()
    old = {k: v for k, v in FeatureSpec().to_dict().items() if k != "demodulate"}
    assert FeatureSpec.from_dict(old).demodulate == 0.0  # checkpoints from before it ran without it
    with pytest.raises(ValueError, match="demodulation floor"):
        FeatureSpec(demodulate=1.5)
    with pytest.raises(ValueError, match="leave out"):
        FeatureSpec(features=("color", "normal"), demodulate=0.05)


def test_edge_mask_marks_a_four_pixel_band_around_albedo_and_normal_jumps():
    from online_denoise.features import edge_mask

    albedo = torch.full((1, 3, 12, 12), 0.5)
    normal = torch.zeros(1, 3, 12, 12)
    normal[:, 2] = 1.0
    albedo[..., :, 6:] = 0.7  # a step between columns 5 and 6
    normal[..., 9:, :] = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)  # a crease between rows 8 and 9
    m = edge_mask(albedo, normal)[0, 0]
    assert m.shape == (12, 12)
    assert m[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0]
    assert m[:, 0].tolist() == [0] * 7 + [1] * 4 + [0]
    albedo[..., :, 6:] = 0.53  # a change under the threshold: no edge
    assert edge_mask(albedo, normal)[0, 0, 0].sum() == 0


def test_dilate3_is_a_3x3_max_pool_of_a_mask():
    torch.manual_seed(0)
    for shape in ((1, 1, 256, 256), (8, 1, 96, 96), (2, 3, 5, 7), (1, 1, 1, 1)):
        mask = (torch.rand(shape) > 0.95).float() * torch.rand(shape)
        assert torch.equal(dilate3(mask), F.max_pool2d(mask, 3, stride=1, padding=1))


def test_erode3_and_box3_are_the_3x3_minimum_and_mean():
    torch.manual_seed(0)
    for shape in ((1, 2, 64, 48), (2, 3, 5, 7), (1, 1, 1, 1)):
        x = torch.randn(shape)
        assert torch.equal(erode3(x), -F.max_pool2d(-x, 3, stride=1, padding=1))
        expected = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
        torch.testing.assert_close(box3(x), expected, rtol=1e-5, atol=1e-6)


def test_the_specular_guide_enters_through_the_colour_transfer_and_is_zero_when_absent():
    spec = FeatureSpec(("color", "albedo", "normal", "specular"))
    assert spec.channels == 12
    color = torch.rand(2, 3, 8, 8)
    albedo, normal = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8) * 2 - 1
    guide = torch.rand(2, 3, 8, 8) * 50  # a sky and a sun are far above 1
    guide[0, :, 0, 0] = float("nan")
    x = build_input(spec, color, albedo, normal, specular=guide)
    transfer = get_transfer(spec.transfer)
    expected = transfer.forward(torch.nan_to_num(guide, nan=0.0))
    torch.testing.assert_close(x[:, 9:12], expected)
    assert torch.isfinite(x).all() and x[:, 9:12].max() < 1  # bounded like the colour input
    torch.testing.assert_close(x[:, :9], build_input(FeatureSpec(), color, albedo, normal))
    # An image from a file has no guide: what a diffuse surface has.
    assert build_input(spec, color, albedo, normal)[:, 9:12].abs().max() == 0


def test_added_channels_are_where_the_new_features_sit_and_dropping_or_reordering_is_refused():
    from online_denoise.features import added_channels

    base = FeatureSpec(("color", "albedo", "normal"))
    assert added_channels(base, base) == []
    assert added_channels(base, FeatureSpec(("color", "albedo", "normal", "specular"))) == [9, 10, 11]
    assert added_channels(base, FeatureSpec(("color", "history", "albedo", "normal"))) == [3]
    assert added_channels(base, FeatureSpec(("color", "albedo"))) is None
    assert added_channels(base, FeatureSpec(("color", "normal", "albedo"))) is None
    assert added_channels(base, FeatureSpec(("color", "albedo", "normal"), transfer="log")) is None


def test_the_diffuse_mask_reads_each_pixels_shape_from_the_lobe_table():
    from online_denoise.features import diffuse_mask

    lobes = (math.inf, math.inf, 0.2, 0.0)  # ids 1: diffuse, 2: glossy, 3: smooth
    surface = torch.tensor([[1.0, 2.0, 3.0, 0.0], [1.5, 4.0, 7.0, 1.02]]).view(1, 1, 2, 4)
    mask = diffuse_mask(surface, lobes)
    # Only whole shape ids of a diffuse shape: not straddling pixels, misses, or ids the table lacks.
    assert mask.tolist() == [[[[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]]]]
    assert diffuse_mask(surface, None) is None
    # Metals and plastics only (entry 0 is a miss, whatever its value): no pixel to demodulate, no mask at all.
    assert diffuse_mask(surface, (math.inf, 0.12, 0.3, 0.02)) is None
