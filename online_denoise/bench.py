"""The benchmark: where the milliseconds go, and how good the images are, as the denoiser learns.

It runs the live loop of ``fly`` (``headless.live_frames``, the same code
path) and measures

* time per frame and per stage (render, train, infer, and upload when a
  window is open), warm-up frames apart from the steady state;
* quality over time on every K-th frame, against high-spp references, for the
  noisy input, our live denoiser at that moment, and OIDN on the very same
  noisy frames, with PSNR, relMSE, SSIM and HDR-FLIP;
* temporal stability on a static-camera segment.

"Noisy" is the average of the pair, and OIDN denoises that same average with
the frame's albedo and normal: every method sees the same samples. With
temporal reuse on, our network sees each render's reprojected running mean
instead; the report then adds that input ("reused") and OIDN run on it
("oidn_reused"), so OIDN is judged both as a per-frame denoiser and on the
input ours had.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .arrays import pair_average, to_hwc_numpy, to_numpy
from .files import atomic_write_json, atomic_write_text
from .headless import live_frames
from .memory import drift_mb_per_10min, peak_rss_mb, rss_mb
from .metrics import RELMSE_EPS, all_metrics, temporal_change
from .oidn import OIDN_QUALITY, oidn_denoise
from .reference import ReferenceCache, ReferenceKey, reference_key, render_references
from .session import Session

METHODS = ("noisy", "ours", "oidn")
REUSE_METHODS = ("reused", "oidn_reused")  # only in runs with temporal reuse
METRICS = ("psnr", "relmse", "ssim", "flip")
STAGES = ("render", "reuse", "train", "infer", "upload", "frame")
# Frames judged in a --seconds run's final window, besides its last one. One frame is a poor judge of
# "quality after S seconds": on cornell-box at 2 frames/s, six frames judged two apart (290-300) near the
# 120-s mark put ours 39.0-41.9 dB and its gap to OIDN at -0.5 to +1.4 dB.
FINAL_WINDOW_FRAMES = 6
REPORT_FORMAT = "online_denoise.bench/1"


@dataclass
class BenchOptions:
    out: Path
    frames: int = 300  # upper bound on the live loop's frames
    seconds: float | None = None  # stop the live loop after this much wall-clock time
    every: int = 30  # judge every K-th frame
    warmup: int = 5  # first frames (kernel compiles, empty ring) reported apart
    reference_spp: int = 1024
    cache_dir: Path | None = None
    static_frames: int = 12  # static-camera segment for temporal stability; 0: skip
    path_fps: float = 15.0
    window: bool = False  # upload (and draw) every frame in a window, to time the display upload
    label: str = ""  # shown in tables and comparisons
    config: dict = field(default_factory=dict)
    oidn: bool = True  # also judge OIDN on the same frames; False: ours against the references alone
    final_window: float = 10.0  # with ``seconds``: also judge about FINAL_WINDOW_FRAMES frames of its last this many


@dataclass
class Judged:
    """A frame kept for judging after the run."""
    frame: int
    seconds: float
    steps: int
    noisy: np.ndarray
    ours: np.ndarray
    albedo: np.ndarray
    normal: np.ndarray
    frame_obj: object  # the Frame our network denoised, to time our inference on it after the run
    reused: np.ndarray | None = None  # the pair's mean after temporal reuse, when it is on
    oidn: np.ndarray | None = None  # OIDN's result, set when judged, for the crop grid


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": float("nan"), "p50": float("nan"), "p95": float("nan")}
    return {"mean": statistics.fmean(values), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95))}


def window_stride(frames: int, elapsed: float, window: float, count: int = FINAL_WINDOW_FRAMES) -> int:
    """Frames between judged frames, so that about ``count`` fall in ``window`` seconds at the rate so far."""
    rate = frames / elapsed if elapsed > 0 else 0.0
    return max(1, round(rate * window / count))


def _judged_frames(frames: int, every: int) -> list[int]:
    marks = list(range(0, frames, every))
    if marks[-1] != frames - 1:
        marks.append(frames - 1)
    return marks


class _WindowUpload:
    """Uploads each frame to the viewer's textures and draws it, timing the upload."""

    def __init__(self):
        from .viewer.display import Display, ViewState
        from .viewer.window import Window

        self.window = Window("online_denoise bench", (640, 640))
        self.display = Display(self.window.ctx)
        self.view = ViewState()

    def __call__(self, result) -> float:
        frame = result.frame
        ms = self.display.upload({"denoised": to_hwc_numpy(result.denoised), "noisy": to_numpy(frame.color_a),
                                  "albedo": to_numpy(frame.albedo), "normal": to_numpy(frame.normal)})
        self.window.poll()
        self.display.draw(self.view, self.window.framebuffer_size)
        self.window.swap()
        return ms

    def close(self) -> None:
        self.display.release()
        self.window.close()


def _judged(i: int, elapsed: float, result) -> Judged:
    frame = result.frame
    reused = pair_average(frame) if frame is not result.rendered else None
    return Judged(i, elapsed, result.steps, pair_average(result.rendered), to_hwc_numpy(result.denoised),
                  to_numpy(frame.albedo), to_numpy(frame.normal), frame, reused)


def run_bench(session: Session, options: BenchOptions) -> dict:
    renderer = session.renderer
    out = options.out
    cache = ReferenceCache(options.cache_dir)
    marks = set(_judged_frames(options.frames, options.every))
    static_pose = renderer.path.pose(0.0)

    upload = _WindowUpload() if options.window else None
    records: list[dict] = []
    judged: list[Judged] = []
    window_from = options.seconds - options.final_window if options.seconds and options.final_window > 0 else None
    window_first, stride = None, 1
    start = time.perf_counter()
    try:
        for i, result in live_frames(session, options.frames, options.path_fps, options.seconds):
            ms = dict(result.timings)
            if upload is not None:
                ms["upload"] = upload(result)
            elapsed = time.perf_counter() - start
            records.append({"frame": i, "seconds": elapsed, "steps": result.steps, "loss": result.loss,
                            "rss_mb": rss_mb(), "history": result.history, "ms": ms})
            if window_from is not None and elapsed >= window_from and window_first is None:
                window_first, stride = i, window_stride(i + 1, elapsed, options.final_window)
            if i in marks or (window_first is not None and (i - window_first) % stride == 0):
                judged.append(_judged(i, elapsed, result))
            last = (i, elapsed, result)
        loop_seconds = time.perf_counter() - start
        loop_peak_rss = peak_rss_mb()  # before references and OIDN add their own
        # A --seconds run ends at a frame nobody could mark in advance: judge where it stopped too,
        # so that "quality after S seconds" is measured at S and not at the last mark before it.
        if records and (not judged or judged[-1].frame != last[0]):
            judged.append(_judged(*last))
        static = []
        for _ in range(options.static_frames if options.static_frames > 1 else 0):
            result = session.step(static_pose)
            static.append((pair_average(result.rendered), to_hwc_numpy(result.denoised),
                           to_numpy(result.frame.albedo), to_numpy(result.frame.normal)))
    finally:
        if upload is not None:
            upload.close()

    # References only for the judged frames the loop reached (a --seconds run stops early);
    # they are rendered after the loop so they cost it nothing, and cached for the next run.
    poses = [j.frame_obj.pose for j in judged]
    refs = dict(zip([j.frame for j in judged], render_references(renderer, poses, options.reference_spp, cache)))
    static_refs = []
    if static:
        # A second reference with other seeds gives the flicker floor of the references themselves.
        key = reference_key(renderer, static_pose, options.reference_spp)
        twin = ReferenceKey(key.scene_digest, key.width, key.height, {**key.pose, "twin": 1}, key.spp)
        static_refs = [cache.render(renderer, static_pose, key), cache.render(renderer, static_pose, twin)]
    reference_hits = cache.hits

    # Judge after the run, so that OIDN and the metrics cost the live loop nothing. Both denoisers
    # are also timed here, alone on the machine, so their costs compare on equal terms.
    reusing = session.reuse is not None
    methods = [m for m in METHODS + (REUSE_METHODS if reusing else ()) if options.oidn or "oidn" not in m]
    quality: dict[str, list[dict]] = {m: [] for m in methods}
    oidn_ms, ours_ms = [], []
    for j in judged:
        images = {"noisy": j.noisy, "ours": j.ours}
        if reusing:
            images["reused"] = j.reused
        if options.oidn:
            t0 = time.perf_counter()
            images["oidn"] = j.oidn = oidn_denoise(j.noisy, j.albedo, j.normal)  # kept for the crop grid
            oidn_ms.append((time.perf_counter() - t0) * 1000)
            if reusing:
                images["oidn_reused"] = oidn_denoise(j.reused, j.albedo, j.normal)
        t0 = time.perf_counter()
        session.denoiser.denoise_pair(j.frame_obj, session.config.pair, blend=session.config.blend)
        ours_ms.append((time.perf_counter() - t0) * 1000)
        for method in methods:
            quality[method].append({"frame": j.frame, "seconds": j.seconds, "steps": j.steps,
                                    **all_metrics(images[method], refs[j.frame])})

    temporal = {}
    if static:
        temporal = {
            "frames": len(static),
            "noisy": temporal_change([s[0] for s in static]),
            "ours": temporal_change([s[1] for s in static]),
            **({"oidn": temporal_change([oidn_denoise(s[0], s[2], s[3]) for s in static])} if options.oidn else {}),
            "reference": temporal_change(static_refs),
        }

    report = _report(options, records, quality, temporal, oidn_ms, ours_ms, loop_seconds, cache,
                     reference_hits, renderer, session)
    report["final_window"] = _final_window(quality, window_from, options.final_window)
    report["memory"] = _memory(records, options.warmup, loop_peak_rss)
    _write_outputs(out, report, records, quality, judged, refs)
    return report


def _report(options, records, quality, temporal, oidn_ms, ours_ms, loop_seconds, cache, reference_hits,
            renderer, session) -> dict:
    steady = [r for r in records if r["frame"] >= options.warmup]
    warm = [r for r in records if r["frame"] < options.warmup]
    stages = [s for s in STAGES if records and s in records[0]["ms"]]
    timing = {"steady": {s: _stats([r["ms"][s] for r in steady]) for s in stages},
              "warmup": {s: _stats([r["ms"][s] for r in warm]) for s in stages}}
    frame_mean = timing["steady"]["frame"]["mean"] if steady else float("nan")
    for s in stages:
        timing["steady"][s]["share"] = timing["steady"][s]["mean"] / frame_mean if frame_mean else float("nan")
    steps_per_s = float("nan")
    if len(steady) > 1:
        span = steady[-1]["seconds"] - steady[0]["seconds"]
        steps_per_s = (steady[-1]["steps"] - steady[0]["steps"]) / span if span > 0 else float("nan")
    h, w = renderer.shape
    oidn_mean = (statistics.fmean(oidn_ms) if oidn_ms else float("nan")) if options.oidn else None
    return {
        "format": REPORT_FORMAT,
        "label": options.label or renderer.scene_info.name,
        "scene": renderer.scene_info.name,
        "resolution": [w, h],
        "config": options.config,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": _version("torch"), "mitsuba": _version("mitsuba"), "variant": renderer.variant,
                    "device": str(session.device)},
        "frames": len(records),
        "warmup_frames": len(warm),
        "loop_seconds": loop_seconds,
        "fps": 1000.0 / frame_mean if frame_mean else float("nan"),
        "fps_overall": len(records) / loop_seconds if loop_seconds > 0 else float("nan"),
        "steps": session.trainer.steps,
        "steps_per_second": steps_per_s,
        "skipped_nonfinite": session.trainer.skipped_nonfinite,
        "spikes_tamed": session.trainer.spikes_tamed,
        "timing": timing,
        "reference": {"spp": options.reference_spp, "cache_hits": reference_hits, "cache_misses": cache.misses},
        "relmse_eps": RELMSE_EPS,
        "quality": quality,
        "final": {m: rows[-1] if rows else None for m, rows in quality.items()},
        "history": statistics.fmean(r["history"] for r in steady) if steady else float("nan"),
        # The frame from which the live renders took the early Russian roulette (the frame budget); None: never.
        "early_roulette_from": session.early_roulette_from,
        "budget_batch_from": session.budget_batch_from,
        "budget_aux_from": session.budget_aux_from,
        # Every change the frame budget made: [first frame it applies to, "shed" | "restored", step].
        "budget_events": [list(e) for e in session.budget_events],
        # None: the run was judged without OIDN (--no-oidn).
        "oidn": {"quality": OIDN_QUALITY, "ms_mean": oidn_mean} if options.oidn else None,
        # Both timed alone after the run: OIDN on the pair's average, ours as the loop displays a frame
        # (pair "both": each render denoised; "mean": their average, once).
        "inference_alone_ms": {"oidn": oidn_mean,
                               "ours": statistics.fmean(ours_ms) if ours_ms else float("nan"),
                               "megapixels": h * w / 1e6, "pair": session.config.pair},
        "temporal": temporal,
    }


def _final_window(quality: dict[str, list[dict]], window_from: float | None, seconds: float) -> dict | None:
    """Each method's metrics averaged over the judged frames of the run's last ``seconds`` (PSNR in dB)."""
    if window_from is None or not quality:
        return None
    rows = {m: [q for q in qs if q["seconds"] >= window_from] for m, qs in quality.items()}
    frames = [q["frame"] for q in next(iter(rows.values()))]
    if not frames:
        return None
    return {"seconds": seconds, "frames": frames,
            "methods": {m: {k: statistics.fmean(q[k] for q in qs) for k in METRICS} for m, qs in rows.items()}}


def _memory(records: list[dict], warmup: int, peak: float) -> dict:
    steady = [r for r in records if r["frame"] >= warmup] or records
    drift = drift_mb_per_10min([r["seconds"] for r in steady], [r["rss_mb"] for r in steady])
    return {
        "rss_mb_first_steady": steady[0]["rss_mb"] if steady else float("nan"),
        "rss_mb_last": steady[-1]["rss_mb"] if steady else float("nan"),
        "rss_mb_max": max((r["rss_mb"] for r in steady), default=float("nan")),
        "peak_rss_mb": peak,  # the process's high-water mark through the live loop
        "drift_mb_per_10min": None if drift != drift else drift,  # None: the run was too short to tell
    }


def _schedule_note(config: dict) -> str:
    if config.get("train", {}).get("schedule") == "inline":
        return "Training runs inline: the stages add up to the frame."
    return "Training runs in its own thread, overlapping rendering, so shares can add up past 100%."


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except Exception:
        return "?"


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_outputs(out: Path, report, records, quality, judged, refs) -> None:
    from .plots import crop_grid, memory_plot, quality_plot, stage_plot

    atomic_write_json(out / "report.json", report)
    stages = [s for s in STAGES if records and s in records[0]["ms"]]
    flat = [{**{k: v for k, v in r.items() if k != "ms"}, **{f"{s}_ms": r["ms"][s] for s in stages}} for r in records]
    atomic_write_text(out / "frames.csv", _csv(flat, ["frame", "seconds", "steps", "loss", "rss_mb", "history",
                                                      *[f"{s}_ms" for s in stages]]))
    rows = [{"method": m, **q} for m, qs in quality.items() for q in qs]
    atomic_write_text(out / "quality.csv", _csv(rows, ["frame", "seconds", "steps", "method", *METRICS]))
    stage_plot(out / "stages.png", report)
    memory_plot(out / "memory.png", report, records)
    quality_plot(out / "quality_frames.png", report, x="frame")
    quality_plot(out / "quality_seconds.png", report, x="seconds")
    if judged:
        crop_grid(out / "crops.png", judged, refs)


# -- printing and comparing -------------------------------------------------------

def _f(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and v != v) else format(v, fmt)


def _quality_row(method: str, q: dict) -> str:
    return (f"{method:<11} {_f(q['psnr'], '8.2f')} {_f(q['relmse'], '9.4f')} {_f(q['ssim'], '7.4f')} "
            f"{_f(q['flip'], '7.4f')}")


def table(report: dict) -> str:
    lines = []
    cfg = report.get("config", {})
    w, h = report["resolution"]
    lines.append(f"{report['label']}: {w}x{h}, preset {cfg.get('preset', '?')}, {report['machine']['variant']} + "
                 f"torch {report['machine']['device']}, {report['frames']} frames ({report['warmup_frames']} warm-up) "
                 f"in {report['loop_seconds']:.1f} s")
    lines.append(f"{'stage':<8} {'mean ms':>9} {'p50':>8} {'p95':>8} {'share':>7}")
    for stage, s in report["timing"]["steady"].items():
        share = "" if stage == "frame" else f"{100 * s['share']:.0f}%"
        lines.append(f"{stage:<8} {_f(s['mean'], '9.1f')} {_f(s['p50'], '8.1f')} {_f(s['p95'], '8.1f')} {share:>7}")
    warm = report["timing"]["warmup"].get("frame", {})
    lines.append(f"{_f(report['fps'], '.2f')} frames/s steady ({_f(report['fps_overall'], '.2f')} overall), "
                 f"{_f(report['steps_per_second'], '.2f')} training steps/s, warm-up frames "
                 f"{_f(warm.get('mean'), '.0f')} ms mean. {_schedule_note(cfg)}")
    final = report["final"]
    if final.get("ours"):
        f0 = final["ours"]
        lines.append(f"quality at frame {f0['frame']} (t = {f0['seconds']:.0f} s, {f0['steps']} steps), "
                     f"vs {report['reference']['spp']}-spp references; relMSE eps {report['relmse_eps']}:")
        lines.append(f"{'method':<11} {'PSNR dB':>8} {'relMSE':>9} {'SSIM':>7} {'FLIP':>7} {'flicker':>8}")
        temporal = report.get("temporal", {})
        for m, q in final.items():
            lines.append(f"{_quality_row(m, q)} {_f(temporal.get(m), '8.4f')}")
        if temporal:
            lines.append(f"{'reference':<11} {'':>8} {'':>9} {'':>7} {'':>7} {_f(temporal.get('reference'), '8.4f')}"
                         f"   (flicker: mean |frame-to-frame change| over {temporal['frames']} still frames)")
    window = report.get("final_window")
    if window:
        frames = window["frames"]
        lines.append(f"mean over the last {window['seconds']:g} s ({len(frames)} frames judged, "
                     f"{frames[0]}-{frames[-1]}):")
        lines.extend(_quality_row(m, q) for m, q in window["methods"].items())
    if report.get("spikes_tamed"):
        lines.append(f"training: {report['spikes_tamed']} of {report['steps']} steps had a gradient spike scaled "
                     f"down (config: spike_ratio {report['config']['train'].get('spike_ratio')})")
    if report.get("history", 1.0) > 1.0:
        lines.append(f"temporal reuse: each pixel's running mean spanned {report['history']:.1f} frames on average")
    if report.get("early_roulette_from") is not None:
        lines.append(f"over the frame budget after warm-up: live renders played Russian roulette early from frame "
                     f"{report['early_roulette_from']} (config: rr_depth {report['config'].get('rr_depth')})")
    if report.get("budget_batch_from") is not None:
        lines.append(f"over the frame budget after warm-up: training took {report['config'].get('budget_batch')} "
                     f"crops a step from frame {report['budget_batch_from']}")
    if report.get("budget_aux_from") is not None:
        lines.append(f"over the frame budget after warm-up: the albedo/normal pass took "
                     f"{report['config'].get('budget_aux_spp')} spp from frame {report['budget_aux_from']}")
    restored = [f"{step} from frame {frame}" for frame, what, step in report.get("budget_events", [])
                if what == "restored"]
    if restored:
        lines.append(f"well under the frame budget again: took back {', '.join(restored)}")
    mem = report.get("memory")
    if mem:
        lines.append(f"memory: RSS {_f(mem['rss_mb_first_steady'], '.0f')} MiB after warm-up, "
                     f"{_f(mem['rss_mb_last'], '.0f')} MiB at the end, loop peak {_f(mem['peak_rss_mb'], '.0f')} MiB; "
                     f"drift over the later half {_f(mem['drift_mb_per_10min'], '+.1f')} MiB per 10 min"
                     f"{'' if mem['drift_mb_per_10min'] is not None else ' (needs a run of 10 min or more)'}")
    alone = report.get("inference_alone_ms", {})
    mp = alone.get("megapixels") or float("nan")
    what = {"both": "both renders", "mean": "the renders' mean"}.get(alone.get("pair"), "?")
    oidn = (f"OIDN {report['oidn']['quality']} {_f(alone.get('oidn'), '.0f')} ms "
            f"({_f(alone.get('oidn', float('nan')) / mp, '.0f')} ms/MP)" if report.get("oidn") else "OIDN not judged")
    lines.append(f"inference alone, per frame (per megapixel): ours, {what} {_f(alone.get('ours'), '.0f')} ms "
                 f"({_f(alone.get('ours', float('nan')) / mp, '.0f')} ms/MP); {oidn}")
    return "\n".join(lines)


def load_report(path: str | Path) -> dict:
    from .errors import UserError

    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise UserError(f"{path}: cannot read the report ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not a bench report (malformed JSON at line {e.lineno})") from None
    if not isinstance(data, dict) or data.get("format") != REPORT_FORMAT:
        raise UserError(f"{path}: not a bench report (expected format {REPORT_FORMAT})")
    return data


def compare(a: dict, b: dict) -> str:
    """Side by side: B against A, with differences (positive: B is higher)."""
    rows = [("frames/s", a["fps"], b["fps"], ".2f"), ("steps/s", a["steps_per_second"], b["steps_per_second"], ".2f")]
    for who in ("ours", "oidn"):
        va, vb = a.get("inference_alone_ms", {}).get(who), b.get("inference_alone_ms", {}).get(who)
        if va is not None and vb is not None:
            rows.append((f"{who} infer ms", va, vb, ".1f"))
    for stage in STAGES:
        if stage in a["timing"]["steady"] and stage in b["timing"]["steady"]:
            rows.append((f"{stage} ms", a["timing"]["steady"][stage]["mean"], b["timing"]["steady"][stage]["mean"],
                         ".1f"))
    for m in METHODS + REUSE_METHODS:
        qa, qb = a["final"].get(m), b["final"].get(m)
        if qa and qb:
            for metric, fmt in (("psnr", ".2f"), ("relmse", ".4f"), ("ssim", ".4f"), ("flip", ".4f")):
                rows.append((f"{m} {metric}", qa[metric], qb[metric], fmt))
    wa, wb = (a.get("final_window") or {}).get("methods", {}), (b.get("final_window") or {}).get("methods", {})
    for m in ("ours", "oidn"):
        if m in wa and m in wb:
            for metric, fmt in (("psnr", ".2f"), ("flip", ".4f")):
                rows.append((f"{m} {metric} end", wa[m][metric], wb[m][metric], fmt))
    for m in ("noisy", "ours", "oidn"):
        if m in a.get("temporal", {}) and m in b.get("temporal", {}):
            rows.append((f"{m} flicker", a["temporal"][m], b["temporal"][m], ".4f"))
    la, lb = a.get("label", "A"), b.get("label", "B")
    lines = [f"{'':<14} {la[:12]:>12} {lb[:12]:>12} {'B - A':>10}"]
    for name, va, vb, fmt in rows:
        lines.append(f"{name:<14} {_f(va, '12' + fmt)} {_f(vb, '12' + fmt)} {_f(vb - va, '+10' + fmt)}")
    return "\n".join(lines)


def comparison_outputs(out: Path, reports: list[dict]) -> str:
    """Several runs (targets x scenes) side by side: a table, comparison.json/.csv and a plot per scene."""
    from .plots import comparison_plot

    rows = []
    for r in reports:
        ours, noisy = r["final"]["ours"], r["final"]["noisy"]
        oidn = r["final"].get("oidn") or {"psnr": None, "flip": None}  # None: judged without OIDN
        steady = r["timing"]["steady"]
        rows.append({
            "scene": r["scene"], "target": r["config"]["train"]["target"], "seconds": ours["seconds"],
            "frames": r["frames"], "fps": r["fps"], "steps_per_s": r["steps_per_second"],
            "render_ms": steady["render"]["mean"], "train_ms": steady["train"]["mean"],
            "psnr": ours["psnr"], "relmse": ours["relmse"], "flip": ours["flip"],
            "oidn_psnr": oidn["psnr"], "oidn_flip": oidn["flip"], "noisy_psnr": noisy["psnr"],
        })
    atomic_write_json(out / "comparison.json", {"format": "online_denoise.comparison/1", "rows": rows,
                                                "reports": [r["label"] for r in reports]})
    atomic_write_text(out / "comparison.csv", _csv(rows, list(rows[0])))
    for scene in sorted({r["scene"] for r in reports}):
        comparison_plot(out / f"comparison_{scene}.png", [r for r in reports if r["scene"] == scene])
    head = (f"{'scene':<15} {'target':<10} {'at s':>5} {'fps':>5} {'steps/s':>7} {'render':>7} "
            f"{'PSNR':>6} {'relMSE':>7} {'FLIP':>6} | {'OIDN PSNR':>9} {'FLIP':>6} | {'noisy':>6}")
    lines = [head]
    for w in rows:
        lines.append(f"{w['scene']:<15} {w['target']:<10} {w['seconds']:5.0f} {w['fps']:5.2f} {w['steps_per_s']:7.2f} "
                     f"{w['render_ms']:7.0f} {w['psnr']:6.2f} {w['relmse']:7.4f} {w['flip']:6.4f} | "
                     f"{_f(w['oidn_psnr'], '9.2f'):>9} {_f(w['oidn_flip'], '6.4f'):>6} | {w['noisy_psnr']:6.2f}")
    lines.append(f"wrote {out}/comparison.json, comparison.csv, comparison_<scene>.png and a report folder per run")
    return "\n".join(lines)
