"""The viewer in a real GLFW window on Xvfb, driven by real X input events (xdotool)."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, run_cli
from online_denoise.viewer.display import VIEW_MODES

pytestmark = pytest.mark.gl


@pytest.fixture(scope="module")
def xvfb():
    if not shutil.which("Xvfb"):
        pytest.skip("Xvfb is not installed (Debian: apt-get install xvfb)")
    for n in range(90, 140):
        if not os.path.exists(f"/tmp/.X11-unix/X{n}") and not os.path.exists(f"/tmp/.X{n}-lock"):
            break
    display = f":{n}"
    proc = subprocess.Popen(["Xvfb", display, "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while not os.path.exists(f"/tmp/.X11-unix/X{n}"):
        assert proc.poll() is None and time.time() < deadline, "Xvfb did not start"
        time.sleep(0.05)
    yield display
    proc.terminate()
    proc.wait(10)


def test_fly_opens_a_window_and_writes_a_screenshot(xvfb, tmp_path):
    shot = tmp_path / "shot.png"
    proc = run_cli("fly", "--scene", "cornell-box", "--frames", "30", "--screenshot", shot, "--out", tmp_path / "run",
                   display=xvfb)
    assert proc.returncode == 0, proc.stderr
    assert "running headless" not in proc.stderr
    img = np.asarray(Image.open(shot).convert("RGB")).astype(float)
    assert img.mean() > 20, "screenshot is black"
    assert img.std() > 10, "screenshot is uniform"
    meta = json.loads(shot.with_suffix(".json").read_text())
    assert meta["frame"]["frame"] >= 29 and meta["view"] == "denoised"
    assert meta["hud"][0].startswith("display") and "denoised" in meta["hud"][0]
    # The rendered scene fills the letterboxed image area: the Cornell box's red and green walls.
    x0, y0, w, h = (int(v) for v in meta["image_rect"])
    scene = img[y0:y0 + h, x0:x0 + w]
    r, g = scene[..., 0], scene[..., 1]
    assert ((r > 1.5 * g) & (r > g + 20)).mean() > 0.05, "no red wall"
    assert ((g > 1.3 * r) & (g > r + 15)).mean() > 0.05, "no green wall"
    # The HUD: a dark translucent panel in the top-left corner with light text on it.
    panel = img[12:60, 12:230]
    assert (panel.max(axis=-1) > 200).mean() > 0.02, "no HUD text"
    assert (panel.max(axis=-1) < 70).mean() > 0.3, "no HUD panel"
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["summary"]["hud_ms_mean"] > 0 and (tmp_path / "run" / "model.pt").is_file()
    # The window redraws for a new frame or input, else only at the idle rate (4 Hz), while it polls at 60.
    loop = run["summary"]["loop"]
    assert loop["redraws"] <= loop["changes"] + 4 * loop["seconds"] + 2 and loop["polls"] > 2 * loop["redraws"]


def test_no_display_falls_back_to_headless(tmp_path):
    proc = run_cli("fly", "--frames", "3", "--res", "32", "--spp", "1", "--reference-spp", "0", "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("no display found") == 1
    assert (tmp_path / "strip.png").is_file()


class Driver:
    """A running viewer and the X events sent to it."""

    def __init__(self, display, out: Path):
        self.env = {**os.environ, "DISPLAY": display}
        self.out = out
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "online_denoise.cli", "fly", "--frames", "100000", "--res", "64", "--spp", "1",
             "--out", str(out)], cwd=ROOT, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # Our own viewer's window: a previous test's may still be closing.
        # Our own viewer's window (a previous test's may still be closing), once it is mapped:
        # focusing a window that is not viewable yet fails.
        self.window = self.xdo("search", "--sync", "--onlyvisible", "--pid", str(self.proc.pid),
                               "--name", "online_denoise").split()[0]
        self.xdo("windowfocus", "--sync", self.window)
        self.wait_frames(3)

    def xdo(self, *args) -> str:
        return subprocess.run(["xdotool", *args], env=self.env, capture_output=True, text=True, timeout=60,
                              check=True).stdout

    def records(self) -> list[dict]:
        """The complete lines of metrics.jsonl: the viewer may be halfway through writing the last one."""
        path = self.out / "metrics.jsonl"
        if not path.is_file():
            return []
        complete = path.read_text().rpartition("\n")[0]
        return [json.loads(l) for l in complete.splitlines() if l.strip()]

    def wait_frames(self, n: int, timeout: float = 120) -> list[dict]:
        start = len(self.records())
        deadline = time.time() + timeout
        while len(self.records()) < start + n:
            assert self.proc.poll() is None, self.proc.communicate()
            assert time.time() < deadline, "the viewer stopped rendering"
            time.sleep(0.05)
        return self.records()

    def pose(self) -> dict:
        return self.wait_frames(2)[-1]["pose"]

    def settled_pose(self, timeout: float = 60) -> dict:
        """The pose once X events already sent have all been applied: the same over 3 new frames."""
        deadline = time.time() + timeout
        while True:
            poses = [r["pose"] for r in self.wait_frames(3)[-3:]]
            if poses[0] == poses[1] == poses[2]:
                return poses[-1]
            assert time.time() < deadline, "the pose never settled"

    def screenshot(self) -> tuple[np.ndarray, dict]:
        shots = self.out / "screenshots"
        before = len(list(shots.glob("*.json"))) if shots.is_dir() else 0
        self.xdo("key", "F12")
        deadline = time.time() + 30
        while not shots.is_dir() or len(list(shots.glob("*.json"))) <= before:
            assert time.time() < deadline, "F12 wrote no screenshot"
            time.sleep(0.05)
        meta_path = sorted(shots.glob("*.json"))[-1]
        time.sleep(0.1)
        return np.asarray(Image.open(meta_path.with_suffix(".png")).convert("RGB")), json.loads(meta_path.read_text())

    def quit(self) -> tuple[int, str]:
        self.xdo("key", "Escape")
        _, stderr = self.proc.communicate(timeout=120)
        return self.proc.returncode, stderr


@pytest.fixture
def viewer(xvfb, tmp_path):
    if not shutil.which("xdotool"):
        pytest.skip("xdotool is not installed (Debian: apt-get install xdotool)")
    d = Driver(xvfb, tmp_path / "run")
    yield d
    if d.proc.poll() is None:
        d.proc.kill()
        d.proc.communicate()


def test_keys_and_mouse_move_the_camera(viewer):
    viewer.xdo("mousemove", "--window", viewer.window, "480", "360")
    viewer.xdo("key", "p")  # stop following the path
    held = viewer.settled_pose()
    time.sleep(0.5)
    assert viewer.pose() == held, "the camera moved while the path was paused"

    viewer.xdo("keydown", "w")
    time.sleep(0.8)
    viewer.xdo("keyup", "w")
    moved = viewer.settled_pose()
    step = np.subtract(moved["position"], held["position"])
    assert np.linalg.norm(step) > 0.05, "W did not move the camera"
    from renderer.camera import matrix_from_quat

    forward = matrix_from_quat(np.array(held["orientation"]))[:, 2]
    assert np.dot(step, forward) / np.linalg.norm(step) > 0.95, "W did not move forward"
    assert moved["orientation"] == held["orientation"]

    viewer.xdo("mousedown", "1")
    for dx in range(0, 200, 20):
        viewer.xdo("mousemove", "--window", viewer.window, str(480 + dx), "360")
        time.sleep(0.02)
    viewer.xdo("mouseup", "1")
    turned = viewer.settled_pose()
    assert turned["position"] == moved["position"] and turned["orientation"] != moved["orientation"]
    # and the frames keep coming at the new pose
    later = viewer.wait_frames(3)[-3:]
    assert all(r["pose"] == turned for r in later)
    code, stderr = viewer.quit()
    assert code == 0, stderr
    assert (viewer.out / "model.pt").is_file()


def test_every_view_mode_is_drawn_and_the_divider_moves(viewer):
    images = {}
    image, meta = viewer.screenshot()
    images[meta["view"]] = image
    for _ in range(len(VIEW_MODES) - 1):
        viewer.xdo("key", "Tab")
        image, meta = viewer.screenshot()
        images[meta["view"]] = image
    assert list(images) == list(VIEW_MODES)
    x0, y0, w, h = (int(v) for v in meta["image_rect"])
    crops = {k: v[y0 + h // 4:y0 + 3 * h // 4, x0:x0 + w].astype(float) for k, v in images.items()}
    for a in VIEW_MODES:
        for b in VIEW_MODES:
            if a < b and a != "split" and b != "split":
                assert np.abs(crops[a] - crops[b]).mean() > 2, f"{a} and {b} look the same"

    def divider_column(img):
        # The divider is a yellow line over the whole image height; noisy pixels can be yellow too.
        # Only the lower part counts: the translucent HUD panel dims the line where it covers it.
        area = img[y0 + 2 * h // 5:y0 + h, x0:x0 + w].astype(int)
        yellow = (area[..., 0] > 200) & (area[..., 1] > 160) & (area[..., 2] < 120)
        counts = yellow.sum(axis=0)
        full = 0.9 * len(area)
        if counts.max() <= full:
            Image.fromarray(img).save(viewer.out / "no_divider.png")
        assert counts.max() > full, f"no divider line in the split view (see {viewer.out / 'no_divider.png'})"
        return x0 + int(np.flatnonzero(counts > full).mean())

    assert meta["view"] == "split"
    before = divider_column(images["split"])
    assert abs(before - (x0 + meta["divider"] * w)) < 3
    y = y0 + h // 2
    viewer.xdo("mousemove", "--window", viewer.window, str(before), str(y))
    viewer.xdo("mousedown", "1")
    for x in range(before, before + 150, 15):
        viewer.xdo("mousemove", "--window", viewer.window, str(x), str(y))
        time.sleep(0.02)
    viewer.xdo("mouseup", "1")
    # Every xdotool call is its own X client, and the server need not keep order across clients:
    # give the last motion events time to arrive before the F12 of the screenshot.
    time.sleep(0.5)
    image, meta = viewer.screenshot()
    after = divider_column(image)
    assert after > before + 100, (before, after)
    assert meta["divider"] > 0.5
    code, _ = viewer.quit()
    assert code == 0
