import numpy as np
import pytest
import torch

from online_denoise import color


@pytest.mark.parametrize("name", ["paper", "log", "linear"])
def test_transfer_round_trip(name):
    t = color.get_transfer(name)
    x = np.array([0.0, 1e-4, 0.01, 0.18, 1.0, 10.0, 500.0], np.float64)
    np.testing.assert_allclose(t.inverse(t.forward(x)), x, rtol=1e-5, atol=1e-7)


def test_paper_tonemap_matches_the_formula():
    v = np.array([0.0, 0.5, 1.0, 3.0])
    np.testing.assert_allclose(color.PaperTonemap().forward(v), (v / (1 + v)) ** (1 / 2.2))


def test_transfers_agree_between_numpy_and_torch():
    x = np.linspace(0, 20, 50)
    for t in color.TRANSFERS.values():
        np.testing.assert_allclose(t.forward(torch.from_numpy(x)).numpy(), t.forward(x), rtol=1e-6)


def test_unknown_transfer_names_the_choices():
    with pytest.raises(ValueError, match="paper"):
        color.get_transfer("pq")


def test_srgb_round_trip_and_known_points():
    y = np.linspace(0, 1, 101)
    np.testing.assert_allclose(color.srgb_encode(color.srgb_decode(y)), y, atol=1e-9)
    assert color.srgb_encode(np.array(0.0)) == 0.0
    assert color.srgb_encode(np.array(1.0)) == pytest.approx(1.0)
    assert color.srgb_encode(np.array(0.18)) == pytest.approx(0.4614, abs=1e-3)  # middle grey ~ 118/255


def test_tonemap_applies_exposure_in_stops_and_handles_nonfinite():
    x = np.array([[[0.25, 0.25, 0.25], [np.nan, np.inf, -np.inf]]], np.float32)
    out = color.tonemap(x, exposure=1.0)
    np.testing.assert_allclose(out[0, 0], color.srgb_encode(np.array(0.5)), rtol=1e-6)
    np.testing.assert_allclose(out[0, 1], [0.0, 1.0, 0.0], atol=1e-6)


def test_autoexposure_brings_log_average_to_middle_grey():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.5, 2.0, (16, 16, 3)).astype(np.float32)
    scale = color.autoexposure(img)
    lum = color.luminance(img * scale)
    assert np.exp(np.mean(np.log(lum))) == pytest.approx(color.AUTOEXPOSURE_KEY, rel=1e-4)
    assert color.autoexposure(np.zeros((4, 4, 3))) == 1.0
