"""Flying the camera: keys and mouse to poses, path playback, path recording.

Works on pose objects through their own methods (``moved``, ``turned``,
``to_json``), so it needs neither GL nor the renderer's modules.
"""

from __future__ import annotations

import threading
import time

LOOK_DEG_PER_PIXEL = 0.15
MIN_SPEED, MAX_SPEED = 0.05, 50.0  # scene units per second
RECORD_INTERVAL_S = 0.5  # one keyframe per half second of flight


class CameraController:
    """Owns the pose the renderer should draw next; thread-safe for one writer and one reader.

    ``playing``: the pose follows the scene's path in real time. Any manual
    move takes over from the path at the current pose.
    """

    def __init__(self, path, start_time: float = 0.0, speed: float | None = None):
        self.path = path
        self.path_time = start_time
        self.playing = True
        self._pose = path.pose(start_time)
        self._lock = threading.Lock()
        self.moves = 0  # manual moves so far (tests and the HUD read it)
        if speed is None:
            lo_hi = getattr(path, "bounds", None)
            extent = float(max(lo_hi[1] - lo_hi[0])) if lo_hi is not None else 4.0
            speed = max(MIN_SPEED, extent / 8)  # cross the scene in about 8 s
        self.speed = speed
        self._recording: list[dict] | None = None
        self._record_start = 0.0
        self._last_record = 0.0

    @property
    def pose(self):
        with self._lock:
            return self._pose

    def _set(self, pose) -> None:
        with self._lock:
            self._pose = pose

    def toggle_play(self) -> None:
        self.playing = not self.playing

    def update(self, dt: float, move: tuple[float, float, float], look: tuple[float, float]) -> None:
        """Advance one display frame: move is (right, up, forward) in [-1, 1], look is pixels dragged."""
        if any(move) or any(look):
            self.playing = False
            pose = self.pose
            if any(look):
                pose = pose.turned(-look[0] * LOOK_DEG_PER_PIXEL, -look[1] * LOOK_DEG_PER_PIXEL)
            if any(move):
                pose = pose.moved(tuple(m * self.speed * dt for m in move))
            self._set(pose)
            self.moves += 1
        elif self.playing:
            self.path_time += dt
            self._set(self.path.pose(self.path_time))
        if self._recording is not None:
            now = time.monotonic()
            if now - self._last_record >= RECORD_INTERVAL_S:
                self._record(now)

    def scroll(self, steps: float) -> None:
        self.speed = min(MAX_SPEED, max(MIN_SPEED, self.speed * 1.2 ** steps))

    # -- recording -------------------------------------------------------------

    @property
    def recording(self) -> bool:
        return self._recording is not None

    def start_recording(self) -> None:
        self._recording = []
        self._record_start = time.monotonic()
        self._record(self._record_start)

    def _record(self, now: float) -> None:
        self._last_record = now
        self._recording.append({"time": round(now - self._record_start, 3), **self.pose.to_json()})

    def stop_recording(self) -> dict | None:
        """The recorded flight as path JSON, or None if it has fewer than two keyframes."""
        frames, self._recording = self._recording, None
        if not frames:
            return None
        self._last_record = 0.0
        frames.append({"time": round(time.monotonic() - self._record_start, 3), **self.pose.to_json()})
        if frames[-1]["time"] <= frames[-2]["time"]:
            frames.pop()
        return {"loop": False, "keyframes": frames} if len(frames) >= 2 else None
