import numpy as np
import pytest

from online_denoise.reference import PASS_SPP, ReferenceCache, reference_key, render_references


def test_second_run_hits_the_cache(tiny_renderer, tmp_path):
    r = tiny_renderer
    poses = [r.path.pose(0.0), r.path.pose(2.0)]
    cache = ReferenceCache(tmp_path)
    first = render_references(r, poses, 128, cache)
    assert (cache.hits, cache.misses) == (0, 2)
    again = ReferenceCache(tmp_path)
    second = render_references(r, poses, 128, again)
    assert (again.hits, again.misses) == (2, 0)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_key_changes_with_pose_spp_resolution_and_scene(tiny_renderer, tmp_path):
    r = tiny_renderer
    k = reference_key(r, r.path.pose(0.0), 128)
    assert reference_key(r, r.path.pose(0.0), 128).digest == k.digest
    assert reference_key(r, r.path.pose(1.0), 128).digest != k.digest
    assert reference_key(r, r.path.pose(0.0), 256).digest != k.digest
    from dataclasses import replace

    assert replace(k, width=64).digest != k.digest
    assert replace(k, scene_digest="other").digest != k.digest


def test_an_interrupted_run_resumes_where_it_stopped(tiny_renderer, tmp_path, monkeypatch):
    r = tiny_renderer
    pose = r.path.pose(0.5)
    spp = 4 * PASS_SPP
    key = reference_key(r, pose, spp)
    whole = ReferenceCache(tmp_path / "whole").render(r, pose, key)

    cache = ReferenceCache(tmp_path / "cut")
    calls = []
    real = type(r).render_pass

    def flaky(self, pose, n, seed):
        calls.append(seed)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the third pass
        return real(self, pose, n, seed)

    monkeypatch.setattr(type(r), "render_pass", flaky)
    with pytest.raises(KeyboardInterrupt):
        cache.render(r, pose, key)
    assert cache.get(key) is None
    resumed_seeds = []

    def counting(self, pose, n, seed):
        resumed_seeds.append(seed)
        return real(self, pose, n, seed)

    monkeypatch.setattr(type(r), "render_pass", counting)
    again = ReferenceCache(tmp_path / "cut").render(r, pose, key)
    assert resumed_seeds == [calls[2], calls[2] + 1]  # passes 3 and 4 only, with their own seeds
    np.testing.assert_allclose(again, whole, rtol=1e-6)  # the same passes, so the same image
    assert not list((tmp_path / "cut").glob("*.partial.npz"))


def test_reference_seeds_are_outside_every_session_block(tiny_renderer):
    from renderer.render import REFERENCE_SEED_BASE, SEEDS_PER_SESSION, SESSION_BLOCKS

    k = reference_key(tiny_renderer, tiny_renderer.initial_pose, 1024)
    seed = k.first_seed(REFERENCE_SEED_BASE, SEEDS_PER_SESSION)
    assert seed >= SESSION_BLOCKS * SEEDS_PER_SESSION and seed + 16 < 2 ** 32
