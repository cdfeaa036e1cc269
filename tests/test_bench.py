"""The benchmark on a tiny scene, through the CLI."""

import json
import math

import pytest

from test_cli import assert_clean_error

TINY = ["--res", "32", "--frames", "12", "--every", "4", "--reference-spp", "64", "--static-frames", "4",
        "--warmup", "2"]
FILES = ("report.json", "frames.csv", "quality.csv", "stages.png", "memory.png", "quality_frames.png",
         "quality_seconds.png", "crops.png")


def finite_numbers(obj):
    if isinstance(obj, dict):
        return all(finite_numbers(v) for v in obj.values())
    if isinstance(obj, list):
        return all(finite_numbers(v) for v in obj)
    return not isinstance(obj, float) or math.isfinite(obj)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from conftest import run_cli

    base = tmp_path_factory.mktemp("bench")
    cache = base / "cache"
    out = {}
    for name, spp in (("spp1", 1), ("spp8", 8), ("again", 1)):
        proc = run_cli("bench", *TINY, "--spp", spp, "--cache-dir", cache, "--out", base / name, "--label", name)
        assert proc.returncode == 0, proc.stderr
        out[name] = (base / name, proc.stdout)
    return out


def test_every_report_file_is_written_with_finite_numbers(runs):
    folder, stdout = runs["spp1"]
    for name in FILES:
        assert (folder / name).stat().st_size > 0, name
    report = json.loads((folder / "report.json").read_text())
    assert report["frames"] == 12 and report["warmup_frames"] == 2
    assert finite_numbers({k: v for k, v in report.items() if k not in ("config",)})
    for stage in ("render", "reuse", "train", "infer", "frame"):
        assert set(report["timing"]["steady"][stage]) == {"mean", "p50", "p95", "share"}
    assert [q["frame"] for q in report["quality"]["ours"]] == [0, 4, 8, 11]
    # The cpu preset reuses samples over time: its input and OIDN on that input are judged too.
    for method in ("noisy", "ours", "oidn", "reused", "oidn_reused"):
        assert set(report["final"][method]) >= {"psnr", "relmse", "ssim", "flip"}
    assert 1.0 < report["history"] <= 16
    assert set(report["temporal"]) == {"frames", "noisy", "ours", "oidn", "reference"}
    assert "frames/s steady" in stdout and "PSNR dB" in stdout and "oidn" in stdout and "memory: RSS" in stdout
    mem = report["memory"]
    # A live loop with torch and Mitsuba loaded holds well over 100 MiB; the peak bounds every sample.
    assert 100 < mem["rss_mb_first_steady"] <= mem["rss_mb_max"] <= mem["peak_rss_mb"] * 1.02
    assert "rss_mb" in (folder / "frames.csv").read_text().splitlines()[0]
    rows = (folder / "quality.csv").read_text().splitlines()
    assert rows[0] == "frame,seconds,steps,method,psnr,relmse,ssim,flip" and len(rows) == 1 + 5 * 4


def test_psnr_is_higher_for_a_less_noisy_input(runs):
    low = json.loads((runs["spp1"][0] / "report.json").read_text())["final"]["noisy"]
    high = json.loads((runs["spp8"][0] / "report.json").read_text())["final"]["noisy"]
    assert high["psnr"] > low["psnr"] + 3
    assert high["relmse"] < low["relmse"] and high["flip"] < low["flip"]
    # Temporal reuse averages each render over the frames that saw the same surface.
    final = json.loads((runs["spp1"][0] / "report.json").read_text())["final"]
    assert final["reused"]["psnr"] > final["noisy"]["psnr"] + 1


def test_the_reference_cache_hits_on_the_second_run(runs):
    first = json.loads((runs["spp1"][0] / "report.json").read_text())["reference"]
    again = json.loads((runs["again"][0] / "report.json").read_text())["reference"]
    # 4 judged frames and the still segment's second reference (its first is frame 0's)
    assert first["cache_misses"] == 5 and first["cache_hits"] == 1
    assert again["cache_misses"] == 0 and again["cache_hits"] == 6


def test_compare_prints_the_differences(runs, cli):
    a, b = runs["spp1"][0] / "report.json", runs["spp8"][0] / "report.json"
    proc = cli("bench", "--compare", a, b)
    assert proc.returncode == 0, proc.stderr
    assert "spp1" in proc.stdout and "spp8" in proc.stdout and "B - A" in proc.stdout
    line = next(l for l in proc.stdout.splitlines() if l.startswith("noisy psnr"))
    assert float(line.split()[-1]) > 0


def test_no_oidn_judges_against_the_references_alone_and_still_compares(runs, cli, tmp_path):
    out = tmp_path / "o"
    proc = cli("bench", *TINY, "--spp", 1, "--no-oidn", "--cache-dir", tmp_path / "c", "--out", out)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["oidn"] is None and report["inference_alone_ms"]["oidn"] is None
    assert set(report["final"]) == {"noisy", "ours", "reused"} and "oidn" not in report["temporal"]
    assert "OIDN not judged" in proc.stdout and "frames/s steady" in proc.stdout
    for name in FILES:
        assert (out / name).stat().st_size > 0, name
    assert len((out / "quality.csv").read_text().splitlines()) == 1 + 3 * 4
    both = cli("bench", "--compare", runs["spp1"][0] / "report.json", out / "report.json")
    assert both.returncode == 0, both.stderr
    assert "ours psnr" in both.stdout and "oidn psnr" not in both.stdout


def test_bench_without_pyoidn_stops_before_the_loop_and_names_the_way_out(tmp_path, monkeypatch, capsys):
    import sys

    from online_denoise.cli import main

    monkeypatch.setitem(sys.modules, "pyoidn", None)  # import pyoidn now raises ImportError
    assert main(["bench", "--res", "32", "--frames", "3", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "pyoidn" in err and "--no-oidn" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists(), "nothing is written before the check"


def test_compare_refuses_files_that_are_not_reports(cli, tmp_path):
    bad = tmp_path / "notes.json"
    bad.write_text('{"hello": 1}')
    assert_clean_error(cli("bench", "--compare", bad, bad), "notes.json", "not a bench report")
    assert_clean_error(cli("bench", "--compare", tmp_path / "missing.json", bad), "missing.json")


def test_seconds_stops_the_loop(cli, tmp_path):
    proc = cli("bench", "--res", "32", "--spp", "1", "--frames", "100000", "--every", "50000", "--seconds", "8",
               "--final-window", "4", "--history", "1", "--reference-spp", "16", "--static-frames", "0", "--cache-dir", tmp_path / "c", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert 1 <= report["frames"] < 100000 and report["loop_seconds"] < 20
    assert report["config"]["seconds"] == 8
    # judged at frame 0 and where the budget stopped the loop
    assert report["final"]["ours"]["frame"] == report["frames"] - 1 > 0
    assert report["final"]["ours"]["seconds"] <= report["loop_seconds"]
    assert "reused" not in report["final"] and "reuse" not in report["timing"]["steady"]  # --history 1: no reuse
    # the final window: several frames of the last 4 s (the first frame, which compiles the kernels on a
    # fresh machine, can take seconds), the last frame among them, averaged per method
    window = report["final_window"]
    assert window["seconds"] == 4 and window["frames"][-1] == report["frames"] - 1 and len(window["frames"]) >= 2
    rows = {(q["frame"], q["method"]): q for q in _quality_rows(tmp_path / "o")}
    assert all(rows[f, "ours"]["seconds"] >= 4.0 for f in window["frames"])
    mean = sum(rows[f, "ours"]["psnr"] for f in window["frames"]) / len(window["frames"])
    assert abs(window["methods"]["ours"]["psnr"] - mean) < 1e-9
    assert "mean over the last 4 s" in proc.stdout


def _quality_rows(out):
    import csv

    return [{**r, "frame": int(r["frame"]), **{k: float(r[k]) for k in ("seconds", "psnr")}}
            for r in csv.DictReader(open(out / "quality.csv"))]


def test_final_window_stride_spreads_its_frames_over_the_window():
    from online_denoise.bench import window_stride

    assert window_stride(frames=240, elapsed=120.0, window=10.0, count=6) == 3  # 20 frames in 10 s, 6 judged
    assert window_stride(frames=10, elapsed=120.0, window=10.0) == 1  # fewer frames than judgements: every one
    assert window_stride(frames=1, elapsed=0.0, window=10.0) == 1


def test_crop_grid_rows_are_first_middle_of_the_run_and_last():
    from online_denoise.plots import crop_rows

    frames = [0, 100, 200, 280, 284, 288, 292]  # a --seconds run: its final window's frames at the end
    assert [frames[k] for k in crop_rows(frames)] == [0, 100, 292]
    assert crop_rows([0, 5]) == [0, 1] and crop_rows([7]) == [0]


def test_final_window_flag_refuses_negative_seconds(cli, tmp_path):
    assert_clean_error(cli("bench", "--seconds", "5", "--final-window", "-1", "--out", tmp_path / "o"),
                       "--final-window", "seconds")


def test_reference_command_renders_then_reuses(cli, tmp_path):
    args = ["reference", "--res", "32", "--spp", "64", "--frames", "10", "--every", "5", "--cache-dir", tmp_path]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    assert "3 references at 64 spp" in first.stdout and "0 cached, 3 rendered" in first.stdout
    second = cli(*args)
    assert "3 cached, 0 rendered" in second.stdout


def test_targets_and_scenes_are_compared_side_by_side(cli, tmp_path):
    proc = cli("bench", "--res", "32", "--frames", "8", "--every", "4", "--reference-spp", "16", "--static-frames", "0",
               "--target", "n2n,gr2r", "--scene", "cornell-box", "--cache-dir", tmp_path / "c", "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "o" / "comparison.json").read_text())["rows"]
    assert [(r["scene"], r["target"]) for r in rows] == [("cornell-box", "n2n"), ("cornell-box", "gr2r")]
    for r in rows:
        assert finite_numbers({k: v for k, v in r.items() if k not in ("scene", "target")})
    assert (tmp_path / "o" / "comparison_cornell-box.png").stat().st_size > 0
    for t in ("n2n", "gr2r"):
        assert (tmp_path / "o" / "cornell-box" / t / "report.json").is_file()
    gr2r = json.loads((tmp_path / "o" / "cornell-box" / "gr2r" / "report.json").read_text())
    assert gr2r["config"]["renders"] == 1 and gr2r["config"]["spp"] == 2 * json.loads(
        (tmp_path / "o" / "cornell-box" / "n2n" / "report.json").read_text())["config"]["spp"]
