import json
import math

import numpy as np
import pytest

from renderer.camera import (CameraPath, Keyframe, PathError, Pose, load_path, look_at_rotation, matrix_from_quat,
                             orbit_path, path_from_json, quat_from_matrix, slerp)


def test_look_at_matches_mitsuba(tiny_renderer):
    import mitsuba as mi

    origin, target, up = [1.0, 2.0, 3.0], [0.0, 0.5, -1.0], [0.0, 1.0, 0.0]
    ours = Pose.look_at(origin, target, up, fov=30).matrix()
    theirs = np.array(mi.ScalarTransform4f().look_at(origin=origin, target=target, up=up).matrix, float)
    np.testing.assert_allclose(ours, theirs.reshape(4, 4), atol=1e-6)


def test_quaternion_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.standard_normal(4)
        q /= np.linalg.norm(q)
        m = matrix_from_quat(q)
        np.testing.assert_allclose(m @ m.T, np.eye(3), atol=1e-12)
        q2 = quat_from_matrix(m)
        assert min(np.linalg.norm(q - q2), np.linalg.norm(q + q2)) < 1e-9


def test_slerp_endpoints_and_midpoint():
    a = quat_from_matrix(np.eye(3))
    b = quat_from_matrix(look_at_rotation([0, 0, 0], [1, 0, 0]))
    np.testing.assert_allclose(slerp(a, b, 0.0), a, atol=1e-12)
    mid = matrix_from_quat(slerp(a, b, 0.5))
    # halfway between looking along +z and +x is looking along (1, 0, 1) / sqrt(2)
    np.testing.assert_allclose(mid[:, 2], np.array([1, 0, 1]) / math.sqrt(2), atol=1e-9)


KEYS = {
    "keyframes": [
        {"time": 0, "position": [0, 0, 5], "look_at": [0, 0, 0], "fov": 40},
        {"time": 2, "position": [3, 1, 4], "look_at": [0, 0, 0], "fov": 50},
        {"time": 5, "position": [4, 2, 0], "look_at": [0, 1, 0], "fov": 40},
        {"time": 6, "position": [2, 0, -3], "orientation": [1, 0, 0, 0], "fov": 35},
    ]
}


@pytest.mark.parametrize("loop", [False, True])
def test_path_passes_through_keyframes(loop):
    path = path_from_json({**KEYS, "loop": loop})
    for k in path.keyframes:
        p = path.pose(k.time)
        np.testing.assert_allclose(p.position, k.position, atol=1e-9)
        np.testing.assert_allclose(p.rotation, matrix_from_quat(k.orientation), atol=1e-9)
        assert p.fov == pytest.approx(k.fov)


@pytest.mark.parametrize("loop", [False, True])
def test_path_is_smooth_through_keyframes(loop):
    path = path_from_json({**KEYS, "loop": loop})
    h = 1e-4
    knots = [k.time for k in path.keyframes[1:-1]] + ([path.duration] if loop else [])
    for t in knots:
        # C1: the derivative just before a knot equals the derivative just after it.
        before = (path.pose(t - h).position - path.pose(t - 2 * h).position) / h
        after = (path.pose(t + 2 * h).position - path.pose(t + h).position) / h
        np.testing.assert_allclose(before, after, atol=1e-2 * (1 + np.abs(before).max()))
        rb = (path.pose(t - h).rotation - path.pose(t - 2 * h).rotation) / h
        ra = (path.pose(t + 2 * h).rotation - path.pose(t + h).rotation) / h
        np.testing.assert_allclose(rb, ra, atol=2e-2 * (1 + np.abs(rb).max()))


def test_loop_wraps_and_open_path_clamps():
    looped = path_from_json({**KEYS, "loop": True, "duration": 8})
    assert looped.pose(8.0) == looped.pose(0.0)
    assert looped.pose(9.5) == looped.pose(1.5)
    open_path = path_from_json(KEYS)
    assert open_path.pose(100) == open_path.pose(6)
    assert open_path.pose(-3) == open_path.pose(0)


def test_rotations_stay_orthonormal_along_the_path():
    path = path_from_json({**KEYS, "loop": True})
    for t in np.linspace(0, path.duration, 97):
        r = path.pose(t).rotation
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-9)


def test_json_round_trip(tmp_path):
    path = path_from_json({**KEYS, "loop": True})
    file = tmp_path / "p.json"
    file.write_text(json.dumps(path.to_json()))
    again = load_path(file)
    for t in np.linspace(0, path.duration, 13):
        assert again.pose(t) == path.pose(t)


@pytest.mark.parametrize("text, message", [
    ("{not json", "malformed JSON at line 1"),
    ('{"frames": []}', "'keyframes' list"),
    ('{"keyframes": [{"time": 0, "position": [0, 0, 1], "look_at": [0, 0, 0]}]}', "at least 2 keyframes"),
    ('{"keyframes": [{"time": 0, "position": [0, 0], "look_at": [0, 0, 0]}, {"time": 1, "position": [0, 0, 1], "look_at": [0, 0, 0]}]}', "position must be a list of 3"),
    ('{"keyframes": [{"time": 1, "position": [0, 0, 2], "look_at": [0, 0, 0]}, {"time": 1, "position": [0, 0, 1], "look_at": [0, 0, 0]}]}', "strictly increase"),
    ('{"keyframes": [{"time": 0, "position": [0, 0, 2]}, {"time": 1, "position": [0, 0, 1]}]}', "needs 'look_at'"),
    ('{"keyframes": [{"time": 0, "position": [0, 0, 2], "look_at": [0, 0, 2]}, {"time": 1, "position": [0, 0, 1], "look_at": [0, 0, 0]}]}', "look_at equals position"),
    ('{"keyframes": [{"time": 0, "position": [0, 0, 2], "look_at": [0, 0, 0], "fov": 190}, {"time": 1, "position": [0, 0, 1], "look_at": [0, 0, 0]}]}', "fov 190"),
])
def test_malformed_paths_name_the_file_and_the_problem(tmp_path, text, message):
    file = tmp_path / "bad.json"
    file.write_text(text)
    with pytest.raises(PathError) as e:
        load_path(file)
    assert str(file) in str(e.value) and message in str(e.value)


def test_missing_path_file(tmp_path):
    with pytest.raises(PathError, match="cannot read camera path"):
        load_path(tmp_path / "nope.json")


def test_orbit_sees_the_whole_box():
    lo, hi = np.array([-1.0, 0.0, -2.0]), np.array([3.0, 1.0, 2.0])
    path = orbit_path(lo, hi, fov=40)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    for t in np.linspace(0, path.duration, 17):
        pose = path.pose(t)
        assert np.any(pose.position < lo) or np.any(pose.position > hi), "camera inside the box"
        for c in corners:
            d = c - pose.position
            angle = math.degrees(math.acos(np.dot(d, pose.forward) / np.linalg.norm(d)))
            assert angle < 20.0 + 1e-6, "corner outside the view cone"


def test_pose_moves_and_turns_in_camera_space():
    p = Pose.look_at([0, 0, 5], [0, 0, 0])
    moved = p.moved((0.0, 0.0, 1.0))
    np.testing.assert_allclose(moved.position, [0, 0, 4], atol=1e-12)
    turned = p.turned(90.0, 0.0)
    np.testing.assert_allclose(turned.forward, [-1, 0, 0], atol=1e-9)
    up = p.turned(0.0, 200.0)  # clamped short of the pole
    assert up.forward[1] < 1.0 and up.forward[1] > 0.99
    assert isinstance(CameraPath([Keyframe(0, np.zeros(3), np.array([1.0, 0, 0, 0]), 40),
                                  Keyframe(1, np.ones(3), np.array([1.0, 0, 0, 0]), 40)]).pose(0.5), Pose)
