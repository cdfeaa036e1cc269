"""The metals' display blend: the denoised colour pulled back towards the renders' mean where that is better."""

import numpy as np
import pytest
import torch

from online_denoise.blend import InputBlend, blend_towards_input
from online_denoise.denoiser import Denoiser
from online_denoise.features import FeatureSpec
from online_denoise.model import ModelConfig

H, W = 32, 48


def reflection() -> torch.Tensor:
    """A metal's reflection: a sharp bright band (a softbox) across a darker gradient, 1 x 3 x H x W."""
    x = torch.linspace(0, 1, W).expand(H, W)
    image = 0.2 + 0.3 * x
    image = torch.where((x > 0.4) & (x < 0.55), torch.full_like(image, 4.0), image)
    return image.expand(1, 3, H, W).clone()


def noisy(truth: torch.Tensor, sigma: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (truth * (1 + sigma * torch.randn(truth.shape, generator=g))).clamp_min(0)


def tonemapped_error(x: torch.Tensor, truth: torch.Tensor) -> float:
    t = lambda v: (v / (1 + v)) ** (1 / 2.2)
    return float(((t(x) - t(truth)) ** 2).mean())


def blurred(truth: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.avg_pool2d(torch.nn.functional.pad(truth, (3, 3, 3, 3), mode="replicate"), 7, 1)


def test_a_blurred_reflection_is_pulled_back_towards_a_clean_input():
    truth = reflection()
    a, b = noisy(truth, 0.05, 1), noisy(truth, 0.05, 2)  # a long, followed history: little noise
    ours = blurred(truth)  # the kernels softened the band's edges
    mask = torch.ones(1, 1, H, W, dtype=torch.bool)
    out = blend_towards_input(ours, a, b, mask)
    assert tonemapped_error(out, truth) < 0.3 * tonemapped_error(ours, truth)
    # Away from the edges ours was right already, and stays within the input's noise of it.
    flat = (slice(None), slice(None), slice(None), slice(0, 12))
    assert float((out[flat] - ours[flat]).abs().max()) < 0.05


def test_a_good_denoised_colour_is_not_traded_for_a_noisy_input():
    truth = reflection()
    a, b = noisy(truth, 0.6, 1), noisy(truth, 0.6, 2)  # a restarted history: as noisy as one 2-spp render
    mask = torch.ones(1, 1, H, W, dtype=torch.bool)
    out = blend_towards_input(truth, a, b, mask)
    mean = (a + b) / 2
    assert tonemapped_error(out, truth) < 0.2 * tonemapped_error(mean, truth)


def test_only_masked_pixels_change():
    truth = reflection()
    a, b, ours = noisy(truth, 0.05, 1), noisy(truth, 0.05, 2), blurred(truth)
    mask = torch.zeros(1, 1, H, W, dtype=torch.bool)
    mask[..., :, W // 2:] = True
    out = blend_towards_input(ours, a, b, mask)
    torch.testing.assert_close(out[..., :W // 2], ours[..., :W // 2], rtol=0, atol=0)
    assert not torch.allclose(out[..., W // 2:], ours[..., W // 2:])


@pytest.mark.parametrize("bad", [dict(window=4), dict(window=1), dict(gamma=0.0), dict(gamma=float("inf")),
                                 dict(min_history=0)])
def test_blend_config_refuses_nonsense(bad):
    with pytest.raises(ValueError, match="blend"):
        InputBlend(**bad)


def test_the_denoiser_blends_only_the_displayed_colour_of_metal_pixels(frame_factory):
    torch.manual_seed(0)
    f = frame_factory(32, 32)
    f.surface = np.ones((32, 32, 1), np.float32)
    f.surface[:, 16:] = 2.0  # shape 2, on the right, is a metal
    f.mirrors = (False, False, True)
    f.frames_a = np.full((32, 32, 1), 4.0, np.float32)  # temporal reuse's histories
    f.frames_b = np.full((32, 32, 1), 3.0, np.float32)
    d = Denoiser(ModelConfig(width=8, depth=3, output="kpn"), FeatureSpec())
    plain = d.denoise_pair(f, "mean", each="a")
    blended = d.denoise_pair(f, "mean", each="a", blend=InputBlend())
    torch.testing.assert_close(blended.denoised[..., :16], plain.denoised[..., :16], rtol=0, atol=0)
    assert not torch.allclose(blended.denoised[..., 16:], plain.denoised[..., 16:])
    torch.testing.assert_close(blended.denoised_a, plain.denoised_a)  # the error estimate's input is untouched
    both = d.denoise_pair(f, "both", blend=InputBlend())
    assert not torch.allclose(both.denoised[..., 16:], d.denoise_pair(f, "both").denoised[..., 16:])
    # Where a history has just restarted the input is one frame's noise, and nothing mixes; nor without reuse.
    f.frames_b[:, 24:] = 1.0
    partly, unblended = (d.denoise_pair(f, "mean", blend=blend).denoised for blend in (InputBlend(), None))
    torch.testing.assert_close(partly[..., 24:], unblended[..., 24:], rtol=0, atol=0)
    assert not torch.allclose(partly[..., 16:24], unblended[..., 16:24])
    f.frames_a = f.frames_b = None
    torch.testing.assert_close(d.denoise_pair(f, "mean", blend=InputBlend()).denoised,
                               d.denoise_pair(f, "mean").denoised, rtol=0, atol=0)
    f.frames_a, f.frames_b = np.full((32, 32, 1), 4.0, np.float32), np.full((32, 32, 1), 4.0, np.float32)
    f.mirrors = (False, False, False)  # no metal: nothing to blend
    torch.testing.assert_close(d.denoise_pair(f, "mean", blend=InputBlend()).denoised, plain.denoised)
