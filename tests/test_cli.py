"""The command line as a user meets it: real subprocesses, real files."""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT

TINY = ["--res", "32", "--spp", "1", "--reference-spp", "16"]


def assert_clean_error(proc, *needles):
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [l for l in proc.stderr.strip().splitlines() if l.startswith("online-denoise: error:")]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_headless_run_writes_its_files(cli, tmp_path):
    out = tmp_path / "run"
    proc = cli("fly", "--headless", "--scene", "cornell-box", "--frames", "20", "--save-every", "10",
               "--out", out, *TINY)
    assert proc.returncode == 0, proc.stderr
    assert "cornell-box: 20 frames" in proc.stdout and "frames/s" in proc.stdout and "PSNR" in proc.stdout
    assert "reuse" in proc.stdout
    for name in ("metrics.jsonl", "strip.png", "model.pt", "run.json", "denoised.exr", "noisy.exr",
                 "reference.exr", "frames/denoised_0010.png", "frames/denoised_0020.exr"):
        assert (out / name).is_file(), name
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["frame"] for l in lines] == list(range(20))
    for l in lines:
        assert set(l["ms"]) == {"render", "reuse", "infer", "train", "frame"}  # the cpu preset reuses samples
        assert np.isfinite(l["estimate_mse"]) and l["weight_version"] <= l["steps"] + 1
    assert lines[0]["history"] == 1.0 and lines[-1]["history"] > 1.0
    run = json.loads((out / "run.json").read_text())
    assert run["config"]["preset"] == "cpu" and run["summary"]["frames"] == 20 and run["config"]["history"] == 16
    # 20 frames end before the budget's first window is judged: nothing shed, and the report says so.
    assert run["summary"]["budget_events"] == []
    # One step a frame: the summary's loss is the median of the steps', not the last one's (which can spike).
    assert run["summary"]["loss"] == pytest.approx(float(np.median([l["loss"] for l in lines])), abs=1e-5)
    assert "(median of the last 50)" in proc.stdout
    from PIL import Image

    strip = np.asarray(Image.open(out / "strip.png"))
    assert strip.shape == (32, 3 * 32 + 2 * 2, 3) and strip.std() > 5
    from online_denoise.denoiser import load_checkpoint

    ckpt = load_checkpoint(out / "model.pt")
    assert ckpt.meta["frames"] == 20


def test_warm_start_from_a_checkpoint(cli, tmp_path):
    first = cli("fly", "--headless", "--frames", "5", "--out", tmp_path / "a", "--save-every", "0", *TINY)
    assert first.returncode == 0, first.stderr
    second = cli("fly", "--headless", "--frames", "5", "--out", tmp_path / "b", "--save-every", "0",
                 "--checkpoint", tmp_path / "a" / "model.pt", *TINY)
    assert second.returncode == 0, second.stderr
    from online_denoise.denoiser import load_checkpoint

    steps_a = load_checkpoint(tmp_path / "a" / "model.pt").meta["steps"]
    assert json.loads((tmp_path / "b" / "run.json").read_text())["config"]["checkpoint"].endswith("model.pt")
    assert steps_a >= 0


def test_scenes_lists_the_library(cli):
    proc = cli("scenes")
    assert proc.returncode == 0
    assert "cornell-box" in proc.stdout


def test_unknown_scene(cli, tmp_path):
    assert_clean_error(cli("fly", "--headless", "--scene", "atlantis", "--out", tmp_path), "--scene atlantis",
                       "cornell-box")


def test_malformed_xml(cli, tmp_path):
    xml = tmp_path / "broken.xml"
    xml.write_text('<scene version="3.0.0">\n  <shape type="sphere">\n')
    assert_clean_error(cli("fly", "--headless", "--scene", xml, "--out", tmp_path / "o", *TINY),
                       "broken.xml", "malformed XML")


def test_missing_path_json(cli, tmp_path):
    assert_clean_error(cli("fly", "--headless", "--path", tmp_path / "nope.json", "--out", tmp_path / "o", *TINY),
                       "nope.json", "cannot read camera path")


def test_malformed_path_json(cli, tmp_path):
    bad = tmp_path / "path.json"
    bad.write_text('{"keyframes": [{"time": 0, "position": [0, 0')
    assert_clean_error(cli("fly", "--headless", "--path", bad, "--out", tmp_path / "o", *TINY),
                       "path.json", "malformed JSON")


def test_malformed_path_json_next_to_a_scene(cli, tmp_path):
    import shutil

    scene = tmp_path / "myscene"
    shutil.copytree(ROOT / "scenes" / "cornell-box", scene)
    (scene / "path.json").write_text('{"keyframes": "soon"}')
    assert_clean_error(cli("fly", "--headless", "--scene", scene, "--out", tmp_path / "o", *TINY),
                       "path.json", "'keyframes' list")


def test_unwritable_out(cli, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("I am a file, not a folder")
    assert_clean_error(cli("fly", "--headless", "--out", blocker / "sub", *TINY), "--out", "cannot write there")
    assert blocker.read_text() == "I am a file, not a folder"


def test_checkpoint_from_another_feature_set(cli, tmp_path):
    from online_denoise.denoiser import save_checkpoint
    from online_denoise.features import FeatureSpec
    from online_denoise.model import ModelConfig, UNet

    cfg = ModelConfig(in_channels=3, width=8)
    path = save_checkpoint(tmp_path / "color_only.pt", UNet(cfg), cfg, FeatureSpec(("color",)))
    assert_clean_error(cli("fly", "--headless", "--checkpoint", path, "--out", tmp_path / "o", *TINY),
                       "color_only.pt", "trained on color (paper", "color+albedo+normal")


@pytest.mark.parametrize("flags, needle", [
    (["--res", "12x"], "--res 12x"),
    (["--preset", "turbo"], "--preset turbo"),
    (["--spp", "0"], "--spp 0"),
    (["--features", "albedo,color"], "--features albedo,color"),
    (["--loss", "l9"], "--loss l9"),
    (["--variant", "spectral_magic"], "--variant spectral_magic"),
    (["--frames", "0"], "--frames 0"),
    (["--scales", "9"], "--scales"),
    (["--kernel-size", "4"], "--kernel-size"),
])
def test_bad_flags(cli, tmp_path, flags, needle):
    assert_clean_error(cli("fly", "--headless", "--out", tmp_path / "o", *TINY, *flags), needle)


def test_ctrl_c_stops_cleanly_and_saves_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "online_denoise.cli", "fly", "--headless", "--frames", "100000",
                             "--out", str(out), "--save-every", "0", *TINY], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A shell's background job inherits SIGINT ignored, and Python then keeps
                            # ignoring it; give the child a user's terminal default, whoever runs the tests.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while not (out / "metrics.jsonl").is_file() or len((out / "metrics.jsonl").read_text().splitlines()) < 10:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert "interrupted after" in stdout
    assert (out / "model.pt").is_file() and (out / "strip.png").is_file()
    from online_denoise.denoiser import load_checkpoint

    assert load_checkpoint(out / "model.pt").meta["frames"] >= 10
