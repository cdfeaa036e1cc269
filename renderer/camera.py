"""Camera poses and fly-through paths (numpy only, no Mitsuba).

A pose is a camera-to-world rotation, a position and a horizontal field of
view. The rotation's columns follow Mitsuba's ``look_at``: (left, up, forward),
so a pose built here renders exactly like the same ``look_at`` in a scene file.

A path is a list of keyframes interpolated with a time-parameterised
Catmull-Rom spline (Barry-Goldman form). Rotations go through the same
construction with slerp in place of lerp, so position, orientation and fov are
all C1-smooth through the keyframes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import RendererError


class PathError(RendererError):
    pass


def _normalize(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError("cannot normalise a zero-length vector")
    return v / n


def look_at_rotation(position, target, up=(0.0, 1.0, 0.0)) -> np.ndarray:
    forward = _normalize(np.asarray(target, float) - np.asarray(position, float))
    up = np.asarray(up, float)
    left = np.cross(up, forward)
    if np.linalg.norm(left) < 1e-9:  # looking straight along `up`: any left will do
        left = np.cross(np.array([0.0, 0.0, 1.0]) if abs(forward[2]) < 0.9 else np.array([1.0, 0.0, 0.0]), forward)
    left = _normalize(left)
    return np.stack([left, np.cross(forward, left), forward], axis=1)


# Quaternions are (w, x, y, z), unit length.

def quat_from_matrix(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, float)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * math.sqrt(trace + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * math.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * math.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q)
    return q / np.linalg.norm(q)


def matrix_from_quat(q: np.ndarray) -> np.ndarray:
    w, x, y, z = np.asarray(q, float) / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def slerp(q0: np.ndarray, q1: np.ndarray, s: float) -> np.ndarray:
    """Spherical interpolation; s outside [0, 1] extrapolates along the same arc."""
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + s * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = math.acos(min(dot, 1.0))
    return (math.sin((1 - s) * theta) * q0 + math.sin(s * theta) * q1) / math.sin(theta)


def _lerp(a, b, s):
    return a + s * (b - a)


@dataclass(frozen=True)
class Pose:
    position: np.ndarray  # (3,) world space
    rotation: np.ndarray  # (3, 3) camera-to-world, columns: left, up, forward
    fov: float  # horizontal field of view in degrees

    @classmethod
    def look_at(cls, position, target, up=(0.0, 1.0, 0.0), fov: float = 40.0) -> "Pose":
        return cls(np.asarray(position, float), look_at_rotation(position, target, up), float(fov))

    @property
    def forward(self) -> np.ndarray:
        return self.rotation[:, 2]

    @property
    def up(self) -> np.ndarray:
        return self.rotation[:, 1]

    @property
    def left(self) -> np.ndarray:
        return self.rotation[:, 0]

    def matrix(self) -> np.ndarray:
        """4x4 camera-to-world matrix, as Mitsuba's sensor ``to_world``."""
        m = np.eye(4)
        m[:3, :3] = self.rotation
        m[:3, 3] = self.position
        return m

    def moved(self, local_delta) -> "Pose":
        """Move by (right, up, forward) in camera space."""
        right, up, forward = local_delta
        delta = -right * self.left + up * self.up + forward * self.forward
        return Pose(self.position + delta, self.rotation, self.fov)

    def turned(self, yaw_deg: float, pitch_deg: float, world_up=(0.0, 1.0, 0.0)) -> "Pose":
        """Yaw about the world's up axis, then pitch about the camera's left axis.

        Pitch stops short of the poles so that the horizon never flips.
        """
        fwd = self.forward
        up = np.asarray(world_up, float)
        elevation = math.degrees(math.asin(float(np.clip(np.dot(fwd, up), -1, 1))))
        pitch_deg = float(np.clip(elevation + pitch_deg, -89.0, 89.0) - elevation)
        fwd = _rotate(fwd, up, math.radians(yaw_deg))
        axis = np.cross(up, fwd)
        if np.linalg.norm(axis) > 1e-9:
            fwd = _rotate(fwd, _normalize(axis), -math.radians(pitch_deg))
        return Pose(self.position, look_at_rotation(self.position, self.position + fwd, world_up), self.fov)

    def to_json(self) -> dict:
        return {
            "position": [round(float(v), 6) for v in self.position],
            "orientation": [round(float(v), 8) for v in quat_from_matrix(self.rotation)],
            "fov": round(self.fov, 4),
        }

    def __eq__(self, other) -> bool:
        return (isinstance(other, Pose) and np.allclose(self.position, other.position)
                and np.allclose(self.rotation, other.rotation) and math.isclose(self.fov, other.fov))

    __hash__ = None


def _rotate(v: np.ndarray, axis: np.ndarray, angle: float) -> np.ndarray:
    # Rodrigues' formula.
    axis = _normalize(axis)
    return (v * math.cos(angle) + np.cross(axis, v) * math.sin(angle)
            + axis * np.dot(axis, v) * (1 - math.cos(angle)))


@dataclass(frozen=True)
class Keyframe:
    time: float
    position: np.ndarray
    orientation: np.ndarray  # unit quaternion (w, x, y, z)
    fov: float


def _catmull_rom(times: list[float], values: list, t: float, lerp: Callable):
    """Barry-Goldman pyramid for a Catmull-Rom segment with knots at `times`.

    `times` and `values` hold four entries; t lies in [times[1], times[2]].
    Only lerp is used, so passing slerp gives the spline on the rotation sphere.
    """
    t0, t1, t2, t3 = times
    p0, p1, p2, p3 = values

    def mix(a, b, ta, tb):
        return lerp(a, b, (t - ta) / (tb - ta))

    a1, a2, a3 = mix(p0, p1, t0, t1), mix(p1, p2, t1, t2), mix(p2, p3, t2, t3)
    b1, b2 = mix(a1, a2, t0, t2), mix(a2, a3, t1, t3)
    return mix(b1, b2, t1, t2)


class CameraPath:
    """A fly-through: ``pose(t)`` for t in seconds.

    With ``loop`` the camera returns to the first keyframe at ``duration`` and
    the spline wraps around smoothly; without it, t is clamped to the ends.
    """

    def __init__(self, keyframes: list[Keyframe], loop: bool = False, duration: float | None = None,
                 source: str = "<path>", bounds: tuple[np.ndarray, np.ndarray] | None = None):
        if len(keyframes) < 2:
            raise PathError(f"{source}: a path needs at least 2 keyframes, got {len(keyframes)}")
        times = [k.time for k in keyframes]
        if any(b <= a for a, b in zip(times, times[1:])):
            raise PathError(f"{source}: keyframe times must strictly increase, got {times}")
        last = times[-1]
        if duration is None:
            duration = last + (times[1] - times[0] if loop else 0.0)
        if duration < last or (loop and duration <= last):
            raise PathError(f"{source}: duration {duration} must exceed the last keyframe time {last}")
        self.keyframes = keyframes
        self.bounds = bounds  # where the camera may go (min, max), if the author said
        self.loop = loop
        self.duration = float(duration)
        self.source = source
        # Keep consecutive quaternions in one hemisphere so slerp never takes the long way.
        quats = [keyframes[0].orientation]
        for k in keyframes[1:]:
            q = k.orientation
            quats.append(-q if np.dot(q, quats[-1]) < 0 else q)
        self._quats = quats

    def _knots(self, i: int) -> tuple[float, int]:
        """Time and keyframe index of knot i, which may lie outside the list."""
        n = len(self.keyframes)
        times = [k.time for k in self.keyframes]
        if self.loop:
            period = self.duration - times[0]
            wraps, j = divmod(i, n)
            return times[j] + wraps * period, j
        if i < 0:  # mirror the first interval so the spline starts with a sensible tangent
            return 2 * times[0] - times[1], 0
        if i >= n:
            return 2 * times[-1] - times[-2], n - 1
        return times[i], i

    def pose(self, t: float) -> Pose:
        times = [k.time for k in self.keyframes]
        if self.loop:
            t = times[0] + (t - times[0]) % (self.duration - times[0])
        else:
            t = min(max(t, times[0]), times[-1])
        # Segment i spans knot i to knot i+1; in a loop the last one wraps to the first.
        i = max(j for j in range(len(times)) if times[j] <= t)
        if not self.loop and i == len(times) - 1:
            i -= 1
        knots = [self._knots(j) for j in range(i - 1, i + 3)]
        ts = [k[0] for k in knots]
        frames = [self.keyframes[k[1]] for k in knots]
        quats = [self._quats[k[1]] for k in knots]
        for j in range(1, 4):  # the wrap can flip a hemisphere between neighbours
            if np.dot(quats[j], quats[j - 1]) < 0:
                quats[j] = -quats[j]
        position = _catmull_rom(ts, [f.position for f in frames], t, _lerp)
        fov = _catmull_rom(ts, [f.fov for f in frames], t, _lerp)
        q = _catmull_rom(ts, quats, t, slerp)
        return Pose(np.asarray(position, float), matrix_from_quat(q), float(fov))

    def to_json(self) -> dict:
        bounds = {} if self.bounds is None else {
            "bounds": {"min": [float(v) for v in self.bounds[0]], "max": [float(v) for v in self.bounds[1]]}}
        return {
            "loop": self.loop,
            "duration": self.duration,
            **bounds,
            "keyframes": [
                {"time": k.time, **Pose(k.position, matrix_from_quat(k.orientation), k.fov).to_json()}
                for k in self.keyframes
            ],
        }


def _vec3(value, what: str, source: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        v = None
    if v is None or v.shape != (3,) or not np.all(np.isfinite(v)):
        raise PathError(f"{source}: {what} must be a list of 3 finite numbers, got {value!r}")
    return v


def _keyframe_from_json(entry, index: int, default_fov: float, source: str) -> Keyframe:
    where = f"keyframe {index}"
    if not isinstance(entry, dict):
        raise PathError(f"{source}: {where} must be an object, got {type(entry).__name__}")
    if "time" not in entry or "position" not in entry:
        raise PathError(f"{source}: {where} needs 'time' and 'position'")
    try:
        time = float(entry["time"])
        fov = float(entry.get("fov", default_fov))
    except (TypeError, ValueError):
        raise PathError(f"{source}: {where}: 'time' and 'fov' must be numbers") from None
    if not (0.0 < fov < 180.0):
        raise PathError(f"{source}: {where}: fov {fov} must be in (0, 180) degrees")
    position = _vec3(entry["position"], f"{where} position", source)
    if "look_at" in entry:
        target = _vec3(entry["look_at"], f"{where} look_at", source)
        up = _vec3(entry.get("up", [0, 1, 0]), f"{where} up", source)
        try:
            rotation = look_at_rotation(position, target, up)
        except ValueError:
            raise PathError(f"{source}: {where}: look_at equals position") from None
        q = quat_from_matrix(rotation)
    elif "orientation" in entry:
        q = np.asarray(entry["orientation"], float)
        if q.shape != (4,) or not np.all(np.isfinite(q)) or np.linalg.norm(q) < 1e-6:
            raise PathError(f"{source}: {where}: orientation must be a quaternion [w, x, y, z]")
        q = q / np.linalg.norm(q)
    else:
        raise PathError(f"{source}: {where} needs 'look_at' (with optional 'up') or 'orientation'")
    return Keyframe(time, position, q, fov)


def path_from_json(data, source: str = "<path>", default_fov: float = 40.0) -> CameraPath:
    if not isinstance(data, dict) or not isinstance(data.get("keyframes"), list):
        raise PathError(f"{source}: expected an object with a 'keyframes' list")
    keyframes = [_keyframe_from_json(e, i, default_fov, source) for i, e in enumerate(data["keyframes"])]
    duration = data.get("duration")
    try:
        duration = None if duration is None else float(duration)
    except (TypeError, ValueError):
        raise PathError(f"{source}: 'duration' must be a number") from None
    bounds = None
    if "bounds" in data:
        b = data["bounds"]
        if not isinstance(b, dict) or "min" not in b or "max" not in b:
            raise PathError(f"{source}: 'bounds' must be an object with 'min' and 'max'")
        lo, hi = _vec3(b["min"], "bounds min", source), _vec3(b["max"], "bounds max", source)
        if np.any(lo >= hi):
            raise PathError(f"{source}: bounds min {lo.tolist()} must be below max {hi.tolist()} on every axis")
        bounds = (lo, hi)
    return CameraPath(keyframes, loop=bool(data.get("loop", False)), duration=duration, source=source,
                      bounds=bounds)


def load_path(path: str | Path, default_fov: float = 40.0) -> CameraPath:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise PathError(f"{path}: cannot read camera path: {e.strerror}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PathError(f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    return path_from_json(data, source=str(path), default_fov=default_fov)


def orbit_path(bbox_min, bbox_max, fov: float = 40.0, duration: float = 20.0,
               elevation_deg: float = 20.0, keyframes: int = 8) -> CameraPath:
    """A full circle around the bounding box, far enough that all of it fits the view."""
    lo, hi = np.asarray(bbox_min, float), np.asarray(bbox_max, float)
    center = 0.5 * (lo + hi)
    radius = max(0.5 * float(np.linalg.norm(hi - lo)), 1e-3)
    distance = 1.1 * radius / math.sin(math.radians(fov) / 2)
    elev = math.radians(elevation_deg)
    frames = []
    for i in range(keyframes):
        phi = 2 * math.pi * i / keyframes
        offset = distance * np.array([math.cos(elev) * math.sin(phi), math.sin(elev), math.cos(elev) * math.cos(phi)])
        pose = Pose.look_at(center + offset, center, fov=fov)
        frames.append(Keyframe(duration * i / keyframes, pose.position, quat_from_matrix(pose.rotation), fov))
    return CameraPath(frames, loop=True, duration=duration, source="<orbit>")
